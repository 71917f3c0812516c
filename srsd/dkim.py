"""DKIM (RFC 6376, 8463) and ARC (RFC 8617): keys, signing, sealing, verification.

Blocking, no sockets, no reactor: :mod:`srsd.mailauth` runs these on a thread pool.
Canonicalization and header construction are dkimpy's; two things are srsd's own:

* **The RSA step goes to OpenSSL.** dkimpy computes RSASSA-PKCS1-v1_5 in pure
  Python (~6.6 ms per 2048-bit signature, 13.5 ms per ARC set). Importing this
  module replaces the one function dkimpy calls for it, ``dkim.RSASSA_PKCS1_v1_5_sign``
  (imported into the ``dkim`` namespace from ``dkim.crypto``), by
  :func:`openssl_rsa_sign`, which signs the same digest with ``cryptography``.
  PKCS#1 v1.5 is deterministic, so the signatures are byte-identical (tested
  against the pure-Python function); only the time differs. The substitution is
  process-wide, which is harmless for that reason; :func:`pure_python_rsa` turns
  it off for a block (tests, benchmarks).
* **DNS goes through srsd's resolver** (:func:`txt_lookup`): its nameservers, cache
  and timeouts, with a per-message deadline, and a temporary failure told apart
  from a missing key (dkimpy's own lookup turns both into "no key").

See ``docs/dkim.md``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
import dkim.crypto
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from srsd.dns import DNSTemporaryError, Resolver

__all__ = [
    "ALGORITHMS",
    "DKIMKeyError",
    "SigningKey",
    "load_signing_key",
    "generate_key",
    "dns_record_name",
    "zone_file_txt",
    "openssl_rsa_sign",
    "pure_python_rsa",
    "DKIMTemporaryError",
    "txt_lookup",
    "SignatureResult",
    "ARCResult",
    "verify_signatures",
    "verify_arc",
    "sign_message",
    "seal_message",
    "message_bytes",
    "authserv_id_of",
    "forged_results",
    "authentication_results",
    "HeaderField",
]

#: config spelling -> (key type, dkimpy a= value)
ALGORITHMS = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}

MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must not accept less
GOOD_RSA_BITS = 2048  # RFC 8301: signers SHOULD use at least this

HeaderField = tuple[str, str]
"""(name, value) as on the wire: the value is everything after the colon (leading
space and folding kept), as in :class:`srsd.message.Message`."""


# -- keys --------------------------------------------------------------------------------


class DKIMKeyError(ValueError):
    """A private key that cannot be used; the message names the file."""


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key, ready for dkimpy and for OpenSSL.

    ``dkimpy_key`` is what dkimpy's sign functions take: a PKCS#1 PEM for RSA, the
    base64 32-byte seed for ed25519. ``warnings`` are things worth logging (an RSA
    key below 2048 bits).
    """

    path: str
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    private: Any = field(repr=False)  # cryptography private key object
    dkimpy_key: bytes = field(repr=False)
    bits: int
    warnings: tuple[str, ...] = ()

    @property
    def key_type(self) -> str:
        return ALGORITHMS[self.algorithm]

    def public_key_base64(self) -> str:
        """p= of the DNS record: SubjectPublicKeyInfo DER (RSA), raw 32 bytes (ed25519)."""
        public = self.private.public_key()
        if self.key_type == "rsa":
            der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        else:
            der = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(der).decode("ascii")

    def txt_record(self) -> str:
        """The DKIM key record text: ``v=DKIM1; k=rsa; p=...`` (RFC 6376 3.6.1)."""
        return f"v=DKIM1; k={self.key_type}; p={self.public_key_base64()}"


def _from_pem(path: str, data: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DKIMKeyError(f"{path}: the key is encrypted; srsd needs an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DKIMKeyError(f"{path}: not a usable PEM private key ({exc})") from None


def load_signing_key(path: str, algorithm: str = "rsa-sha256") -> SigningKey:
    """Read the private key at *path* for *algorithm* (``rsa-sha256`` or ``ed25519-sha256``).

    Accepts PEM (PKCS#1 ``RSA PRIVATE KEY`` or PKCS#8 ``PRIVATE KEY``, as
    ``srsd dkim-keygen``, ``openssl genpkey`` and ``opendkim-genkey`` write them) and,
    for ed25519, dkimpy's ``dknewkey`` format (the base64 32-byte seed on one line).

    :raises DKIMKeyError: unreadable, not a key, encrypted, a key of the other type,
        or an RSA key below 1024 bits; the message names the file.
    """
    if algorithm not in ALGORITHMS:
        raise DKIMKeyError(f"{path}: unknown algorithm {algorithm!r} (rsa-sha256 or ed25519-sha256)")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DKIMKeyError(f"{path}: cannot read: {exc.strerror}") from None
    loaded = _loaded_keys.get((path, algorithm))
    if loaded is not None and loaded[0] == data:
        return loaded[1]
    if b"-----BEGIN" in data:
        private = _from_pem(path, data)
    else:
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            seed = b""
        if len(seed) != 32:
            raise DKIMKeyError(f"{path}: not a PEM private key (no -----BEGIN line)")
        private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    wanted = ALGORITHMS[algorithm]
    if isinstance(private, rsa.RSAPrivateKey):
        found = "rsa"
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        found = "ed25519"
    else:
        raise DKIMKeyError(f"{path}: a {type(private).__name__}; DKIM keys are RSA or ed25519")
    if found != wanted:
        raise DKIMKeyError(f"{path}: an {found} key, but the algorithm is {algorithm}")
    warnings: list[str] = []
    if found == "rsa":
        bits = private.key_size
        if bits < MIN_RSA_BITS:
            raise DKIMKeyError(f"{path}: a {bits}-bit RSA key; verifiers reject keys below {MIN_RSA_BITS} bits")
        if bits < GOOD_RSA_BITS:
            warnings.append(f"{path}: a {bits}-bit RSA key; use {GOOD_RSA_BITS} bits or more (RFC 8301)")
        dkimpy_key = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        _remember_rsa_key(private)
    else:
        bits = 256
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        dkimpy_key = base64.b64encode(raw)
    key = SigningKey(path, algorithm, private, dkimpy_key, bits, tuple(warnings))
    _loaded_keys[(path, algorithm)] = (data, key)
    return key


#: (path, algorithm) -> (the file's bytes, the key loaded from them). The same bytes
#: give the same key: a reload (SIGHUP) loads the key twice (validation, then the
#: milter's settings) and cryptography's RSA key checks take ~0.13 s each, holding the
#: GIL, so every endpoint stalled for them (tests/faults/rotation.py).
_loaded_keys: dict[tuple[str, str], tuple[bytes, SigningKey]] = {}


def generate_key(path: str, algorithm: str = "rsa-sha256", bits: int = 2048) -> SigningKey:
    """Create a new private key at *path* (PEM, PKCS#8, mode 0600; never overwrites).

    :raises DKIMKeyError: the file exists or cannot be written, bad *bits*.
    """
    if algorithm not in ALGORITHMS:
        raise DKIMKeyError(f"{path}: unknown algorithm {algorithm!r}")
    if ALGORITHMS[algorithm] == "rsa":
        if not MIN_RSA_BITS <= bits <= 8192:
            raise DKIMKeyError(f"{path}: RSA keys must have {MIN_RSA_BITS}..8192 bits")
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DKIMKeyError(f"{path}: exists; not overwriting a key (remove it first)") from None
    except OSError as exc:
        raise DKIMKeyError(f"{path}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)  # whatever the umask
    return load_signing_key(path, algorithm)


def dns_record_name(selector: str, domain: str) -> str:
    """``<selector>._domainkey.<domain>`` (no trailing dot)."""
    return f"{selector}._domainkey.{domain.rstrip('.')}"


def zone_file_txt(text: str) -> str:
    """TXT record data for a zone file: ``"..." "..."``, each string at most 255 bytes
    (RFC 1035 character-strings; resolvers join them, RFC 6376 3.6.2.2)."""
    pieces = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in pieces)


# -- RSA through OpenSSL ---------------------------------------------------------------------

_PURE_RSA_SIGN = dkim.crypto.RSASSA_PKCS1_v1_5_sign
_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
_rsa_keys: dict[tuple[int, int], rsa.RSAPrivateKey] = {}
_rsa_keys_lock = threading.Lock()
_MAX_CACHED_KEYS = 32


def _remember_rsa_key(private: rsa.RSAPrivateKey) -> None:
    numbers = private.private_numbers()
    with _rsa_keys_lock:
        if len(_rsa_keys) >= _MAX_CACHED_KEYS:
            _rsa_keys.clear()
        _rsa_keys[(numbers.public_numbers.n, numbers.d)] = private


def _openssl_key(pk: dict[str, int]) -> rsa.RSAPrivateKey:
    """The cryptography key for dkimpy's parsed key dict (cached by modulus and d)."""
    cache_key = (pk["modulus"], pk["privateExponent"])
    private = _rsa_keys.get(cache_key)
    if private is None:
        numbers = rsa.RSAPrivateNumbers(
            p=pk["prime1"],
            q=pk["prime2"],
            d=pk["privateExponent"],
            dmp1=pk["exponent1"],
            dmq1=pk["exponent2"],
            iqmp=pk["coefficient"],
            public_numbers=rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]),
        )
        private = numbers.private_key()
        _remember_rsa_key(private)
    return private


def openssl_rsa_sign(hash: Any, private_key: dict[str, int]) -> bytes:
    """Drop-in for ``dkim.crypto.RSASSA_PKCS1_v1_5_sign(hash, private_key)``.

    *hash* is the hashlib-like object dkimpy fed the canonicalized headers (it has
    ``name`` and ``digest()``); *private_key* dkimpy's dict from
    ``parse_pem_private_key``. Same output, byte for byte (RFC 8017 8.2.1 is
    deterministic), computed by OpenSSL. A digest other than SHA-1/SHA-256 goes
    to dkimpy's own code.
    """
    algorithm = _HASHES.get(hash.name.lower())
    if algorithm is None:
        return _PURE_RSA_SIGN(hash, private_key)
    key = _openssl_key(private_key)
    if key.key_size < 512:  # dkimpy raises DigestTooLargeError for tiny moduli; keep that
        return _PURE_RSA_SIGN(hash, private_key)
    return key.sign(hash.digest(), padding.PKCS1v15(), Prehashed(algorithm()))


def _install_openssl_rsa() -> None:
    dkim.RSASSA_PKCS1_v1_5_sign = openssl_rsa_sign


_install_openssl_rsa()


@contextlib.contextmanager
def pure_python_rsa() -> Iterator[None]:
    """Within the block dkimpy signs with its own pure-Python RSA (tests, benchmarks).
    Not thread-safe: it swaps a module global."""
    dkim.RSASSA_PKCS1_v1_5_sign = _PURE_RSA_SIGN
    try:
        yield
    finally:
        _install_openssl_rsa()


# -- DNS ---------------------------------------------------------------------------------------


class DKIMTemporaryError(Exception):
    """A key lookup that failed for now (timeout, SERVFAIL, deadline passed).

    Deliberately not a ``dkim.DKIMException``: dkimpy catches those and reports a
    plain "invalid", and a temporary failure must be told apart from a missing key.
    """


def txt_lookup(resolver: Resolver, deadline: float | None = None) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc(name, timeout=5)`` over srsd's resolver.

    Returns the first TXT record's character-strings joined (RFC 6376 3.6.2.2), or
    None when the name has no TXT record. *deadline* (``time.monotonic()``) caps
    every query; past it, or on a DNS timeout/SERVFAIL, raises
    :class:`DKIMTemporaryError`.
    """

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        limit = float(timeout)
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
            if limit <= 0:
                raise DKIMTemporaryError(f"no time left to look up {text}")
        try:
            answer = resolver.resolve(text.rstrip("."), "TXT", limit)
        except DNSTemporaryError as exc:
            raise DKIMTemporaryError(str(exc)) from None
        except ValueError:
            return None  # an impossible name has no key
        if answer is None:
            return None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    return dnsfunc


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureResult:
    """One DKIM-Signature's outcome (RFC 8601 2.7.1 result keywords).

    ``result``: pass, fail, neutral (malformed signature), permerror (no usable
    key), temperror (key lookup failed for now). ``reason`` a short text for the
    A-R comment and logs.
    """

    result: str
    reason: str = ""
    domain: str = ""
    selector: str = ""
    identity: str = ""
    algorithm: str = ""
    b: str = ""  # the b= value, whitespace removed


@dataclass(frozen=True)
class ARCResult:
    """ARC chain validation (RFC 8617 5.2): ``cv`` is none, pass or fail;
    ``sealable`` False when no new set may be added (a set already says cv=fail,
    too many sets, or the chain could not be checked now); ``temporary`` True
    when a DNS failure prevented the check."""

    cv: str
    reason: str = ""
    instances: int = 0
    sealable: bool = True
    temporary: bool = False


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


def verify_signatures(message: bytes, dnsfunc: Callable[..., bytes | None], limit: int = 8) -> list[SignatureResult]:
    """Verify every DKIM-Signature of *message* (topmost first; at most *limit*).

    dkimpy's ``dkim.verify`` only looks at the first signature; this asks
    ``DKIM.verify(idx=i)`` for each and maps the outcome to an A-R result.
    """
    try:
        verifier = dkim.DKIM(message, logger=_QUIET, minkey=MIN_RSA_BITS)
    except dkim.DKIMException as exc:
        return [SignatureResult("permerror", f"unparsable message: {exc}")]
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    results = []
    for idx in range(min(count, limit)):
        results.append(_verify_one(verifier, idx, dnsfunc))
    return results


class _QuietLogger:
    """dkimpy logs every failure at error level; srsd reports results itself."""

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    info = warning = error = exception = debug

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return False


_QUIET = _QuietLogger()


def _verify_one(verifier: Any, idx: int, dnsfunc: Callable[..., bytes | None]) -> SignatureResult:
    sigheaders = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    try:
        tags = dkim.util.parse_tag_value(sigheaders[idx])
    except Exception:
        tags = {}
    info = {
        "domain": _text(tags.get(b"d")),
        "selector": _text(tags.get(b"s")),
        "identity": _text(tags.get(b"i")),
        "algorithm": _text(tags.get(b"a")),
        "b": re.sub(r"\s+", "", _text(tags.get(b"b"))),
    }
    try:
        prep = verifier.verify_headerprep(idx)
    except dkim.DKIMException as exc:
        return SignatureResult("neutral", f"malformed signature: {exc}", **info)
    if not prep:
        return SignatureResult("neutral", "malformed signature", **info)
    sig, include_headers, _ = prep
    name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    # Look the key up once here, to tell "no key" and "bad key" from a bad signature.
    try:
        record = dnsfunc(name)
    except DKIMTemporaryError as exc:
        return SignatureResult("temperror", f"key lookup: {exc}", **info)
    if not record:
        return SignatureResult("permerror", "no key for signature", **info)
    try:
        _pk, keysize, ktag, _tlsrpt = dkim.evaluate_pk(name, record)
    except dkim.DKIMException as exc:
        return SignatureResult("permerror", f"unusable key: {exc}", **info)
    except (binascii.Error, ValueError) as exc:
        return SignatureResult("permerror", f"unusable key: {exc}", **info)
    if ktag is None:
        return SignatureResult("permerror", "key not for email", **info)
    if ktag == b"rsa" and keysize < MIN_RSA_BITS:
        return SignatureResult("permerror", f"key too small ({keysize} bits)", **info)
    try:
        ok = verifier.verify(idx=idx, dnsfunc=lambda _name, timeout=5: record)
    except dkim.DKIMException as exc:
        reason = str(exc)
        if "body hash mismatch" in reason:
            return SignatureResult("fail", "body hash mismatch", **info)
        return SignatureResult("fail", reason[:200], **info)
    except DKIMTemporaryError as exc:  # pragma: no cover - the record is already in hand
        return SignatureResult("temperror", str(exc), **info)
    if ok:
        return SignatureResult("pass", "", **info)
    return SignatureResult("fail", "signature did not verify", **info)


def verify_arc(message: bytes, dnsfunc: Callable[..., bytes | None]) -> ARCResult:
    """Validate the ARC chain of *message* (RFC 8617 5.2) with ``dkim.arc_verify``."""
    try:
        cv, results, reason = dkim.arc_verify(message, logger=_QUIET, dnsfunc=dnsfunc, minkey=MIN_RSA_BITS)
    except DKIMTemporaryError as exc:
        return ARCResult("fail", f"temporary DNS error: {exc}", sealable=False, temporary=True)
    except Exception as exc:  # dkimpy lets parsing errors of odd chains escape
        return ARCResult("fail", f"{type(exc).__name__}: {exc}"[:200])
    instances = max((r.get("instance", 0) for r in results), default=0)
    if cv is None:
        # A set already reported cv=fail: the chain has ended (RFC 8617 5.1 step 1).
        return ARCResult("fail", _text_or(reason), instances, sealable=False)
    text = cv.decode("ascii")
    sealable = instances < 50
    return ARCResult(text, "" if text != "fail" else _text_or(reason), instances, sealable=sealable)


def _text_or(reason: Any) -> str:
    return str(reason)[:200]


# -- signing and sealing ------------------------------------------------------------------------------


def message_bytes(headers: Sequence[HeaderField], body: bytes) -> bytes:
    """RFC 5322 bytes with CRLF line ends from (name, value) fields and a CRLF body."""
    lines = []
    for name, value in headers:
        value = value.replace("\r\n", "\n").replace("\n", "\r\n")
        lines.append(f"{name}:{value}\r\n".encode("utf-8", "surrogateescape"))
    return b"".join(lines) + b"\r\n" + body


def _split_field(line: bytes) -> HeaderField:
    """dkimpy's ``b"Name: value\\r\\n"`` -> (name, value): the leading space kept,
    CRLF folding, no final CRLF (the form of :class:`srsd.message.Message` fields;
    the milter codec turns CRLF into the bare LF Postfix wants)."""
    text = line.decode("ascii")
    name, _, value = text.partition(":")
    return name, value.removesuffix("\r\n")


def _signed_fields(headers: Sequence[HeaderField], wanted: Sequence[str]) -> list[bytes]:
    """h= for *headers*: each wanted field once per occurrence present, then From
    once more (over-signed: a second From cannot be added). Absent fields are not
    listed, so a later hop may add them (List-Id, ...) without breaking us."""
    present: dict[str, int] = {}
    for name, _ in headers:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    out: list[bytes] = []
    seen: set[str] = set()
    for name in wanted:
        lowered = name.lower()
        if lowered in seen:
            continue
        seen.add(lowered)
        out += [lowered.encode("ascii")] * present.get(lowered, 0)
    out.append(b"from")
    return out


def sign_message(
    headers: Sequence[HeaderField],
    body: bytes,
    key: SigningKey,
    domain: str,
    selector: str,
    signed_headers: Sequence[str],
) -> HeaderField:
    """A DKIM-Signature (relaxed/relaxed, ``i=@domain``) for the message made of
    *headers* and *body*, as (name, value) ready for a milter insert."""
    message = message_bytes(headers, body)
    signer = dkim.DKIM(message, logger=_QUIET, signature_algorithm=key.algorithm.encode("ascii"))
    line = signer.sign(
        selector.encode("ascii"),
        domain.encode("ascii"),
        key.dkimpy_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=_signed_fields(headers, signed_headers),
    )
    return _split_field(line)


def seal_message(
    headers: Sequence[HeaderField],
    body: bytes,
    key: SigningKey,
    domain: str,
    selector: str,
    authserv_id: str,
    signed_headers: Sequence[str],
    timestamp: int | None = None,
) -> list[HeaderField]:
    """The next ARC set for the message: [ARC-Seal, ARC-Message-Signature,
    ARC-Authentication-Results], newest first, as (name, value) pairs.

    dkimpy builds the ARC-Authentication-Results from the ``Authentication-Results``
    fields in *headers* whose authserv-id is *authserv_id*, and takes cv from their
    ``arc=`` result; with no such field it seals nothing (returns []).
    ARC is rsa-sha256 only (RFC 8617 4.1).
    """
    if key.key_type != "rsa":
        raise ValueError("ARC sets are signed with rsa-sha256 only (RFC 8617)")
    message = message_bytes(headers, body)
    sealer = dkim.ARC(message, logger=_QUIET, signature_algorithm=b"rsa-sha256")
    lines = sealer.sign(
        selector.encode("ascii"),
        domain.encode("ascii"),
        key.dkimpy_key,
        authserv_id.encode("ascii"),
        include_headers=_signed_fields(headers, signed_headers),
        timestamp=timestamp,
    )
    return [_split_field(line) for line in lines]


# -- Authentication-Results ----------------------------------------------------------------------------


def _skip_cfws(text: str, i: int) -> int:
    """Index after any whitespace and (nested) comments from *i*."""
    depth = 0
    while i < len(text):
        ch = text[i]
        if depth:
            if ch == "\\":
                i += 1
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        elif ch == "(":
            depth = 1
        elif not ch.isspace():
            break
        i += 1
    return i


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2), lower case;
    "" when there is none."""
    i = _skip_cfws(value, 0)
    if i < len(value) and value[i] == '"':  # a quoted-string authserv-id (rare)
        end = value.find('"', i + 1)
        return value[i + 1 : end].lower() if end > 0 else ""
    j = i
    while j < len(value) and not value[j].isspace() and value[j] not in ";(":
        j += 1
    return value[i:j].lower()


def forged_results(headers: Sequence[HeaderField], authserv_id: str) -> list[int]:
    """1-based occurrences (among fields named Authentication-Results, any case) of
    those carrying *authserv_id*, highest first: delete them in that order (Postfix
    applies each deletion at once, renumbering the rest)."""
    wanted = authserv_id.lower()
    occurrences = []
    n = 0
    for name, value in headers:
        if name.lower() == "authentication-results":
            n += 1
            if authserv_id_of(value) == wanted:
                occurrences.append(n)
    return sorted(occurrences, reverse=True)


_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 2045 token


def _pvalue(value: str) -> str:
    """A property value: as is when it is a token or a domain/address, else quoted."""
    if _TOKEN.match(value) or re.match(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]*@[A-Za-z0-9.-]+$", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text)[:200]
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def _b_prefixes(results: Sequence[SignatureResult]) -> list[str]:
    """header.b values: 8 characters of b= (RFC 6008), longer where two would clash."""
    out = []
    for r in results:
        length = 8
        while length < len(r.b) and any(o is not r and o.b[:length] == r.b[:length] and o.b != r.b for o in results):
            length += 4
        out.append(r.b[:length])
    return out


def authentication_results(
    authserv_id: str,
    *,
    spf: tuple[str, str, str] | None,
    dkim_results: Sequence[SignatureResult],
    arc: ARCResult | None,
) -> HeaderField:
    """One ``Authentication-Results`` field (RFC 8601) as (name, value), value with
    its leading space and CRLF folding (one result per line).

    :param spf: (result, property, value): ``("pass", "smtp.mailfrom", "example.org")``
        or ``smtp.helo``; None when SPF was not checked.
    :param dkim_results: one per signature; none at all gives ``dkim=none``.
    :param arc: the chain validation, or None to leave ``arc=`` out.
    """
    parts: list[str] = []
    if spf is not None:
        result, prop, value = spf
        parts.append(f"spf={result} {prop}={_pvalue(value)}" if value else f"spf={result}")
    if not dkim_results:
        parts.append("dkim=none")
    for r, b in zip(dkim_results, _b_prefixes(dkim_results), strict=True):
        text = f"dkim={r.result}"
        if r.reason:
            text += " " + _comment(r.reason)
        props = [("header.d", r.domain), ("header.i", r.identity), ("header.s", r.selector),
                 ("header.a", r.algorithm), ("header.b", b)]  # fmt: skip
        text += "".join(f" {p}={_pvalue(v)}" for p, v in props if v)
        parts.append(text)
    if arc is not None:
        text = f"arc={arc.cv}"
        if arc.reason:
            text += " " + _comment(arc.reason)
        parts.append(text)
    return "Authentication-Results", " " + authserv_id + ";\r\n\t" + ";\r\n\t".join(parts)
