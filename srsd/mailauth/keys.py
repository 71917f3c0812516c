"""DKIM signing keys (RFC 6376 3.6.1, RFC 8463): load, generate, publish.

A :class:`SigningKey` holds the private key twice over: as a ``cryptography``
object (OpenSSL does the RSA step, :mod:`srsd.mailauth.dkimpy_setup`) and in the
form dkimpy's sign functions take. No I/O beyond reading and writing key files.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.util import InvalidTagValueList, parse_tag_value

from srsd.mailauth.dkimpy_setup import MIN_RSA_BITS, remember_rsa_key

__all__ = [
    "ALGORITHMS",
    "GOOD_RSA_BITS",
    "DKIMKeyError",
    "SigningKey",
    "load_signing_key",
    "generate_key",
    "dns_record_name",
    "zone_file_txt",
    "record_problem",
]

#: config spelling -> (key type, dkimpy a= value)
ALGORITHMS = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}

GOOD_RSA_BITS = 2048  # RFC 8301: signers SHOULD use at least this


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

    def __reduce__(self) -> tuple[Any, tuple]:
        # Pickled for the job processes (srsd.mailauth.job_processes) as its key bytes:
        # cryptography's key objects do not pickle.
        return _rebuilt, (self.path, self.algorithm, self.dkimpy_key, self.bits, self.warnings)


def _rebuilt(path: str, algorithm: str, dkimpy_key: bytes, bits: int, warnings: tuple[str, ...]) -> SigningKey:
    """The :class:`SigningKey` a pickle holds, its private key built once per process
    (the same bytes give the same key; RSA's checks skipped: the key was checked when
    the daemon loaded it from its file)."""
    memo = _rebuilt_keys.get((algorithm, dkimpy_key))
    if memo is not None:
        return memo
    if ALGORITHMS[algorithm] == "rsa":
        private = serialization.load_pem_private_key(dkimpy_key, password=None, unsafe_skip_rsa_key_validation=True)
        remember_rsa_key(private)
    else:
        private = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(dkimpy_key))
    key = SigningKey(path, algorithm, private, dkimpy_key, bits, warnings)
    if len(_rebuilt_keys) >= 256:
        _rebuilt_keys.clear()
    _rebuilt_keys[(algorithm, dkimpy_key)] = key
    return key


#: (algorithm, key bytes) -> the key rebuilt from a pickle, in this process
_rebuilt_keys: dict[tuple[str, bytes], SigningKey] = {}


def _from_pem(path: str, data: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise DKIMKeyError(f"{path}: the key is encrypted; srsd needs an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DKIMKeyError(f"{path}: not a usable PEM private key ({exc})") from None


def load_signing_key(path: str, algorithm: str | None = "rsa-sha256") -> SigningKey:
    """Read the private key at *path* for *algorithm* (``rsa-sha256`` or ``ed25519-sha256``;
    None: whichever the file holds).

    Accepts PEM (PKCS#1 ``RSA PRIVATE KEY`` or PKCS#8 ``PRIVATE KEY``, as
    ``srsd dkim-keygen``, ``openssl genpkey`` and ``opendkim-genkey`` write them) and,
    for ed25519, dkimpy's ``dknewkey`` format (the base64 32-byte seed on one line).

    :raises DKIMKeyError: unreadable, not a key, encrypted, a key of the other type,
        or an RSA key below 1024 bits; the message names the file.
    """
    if algorithm is not None and algorithm not in ALGORITHMS:
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
    if isinstance(private, rsa.RSAPrivateKey):
        found = "rsa"
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        found = "ed25519"
    else:
        raise DKIMKeyError(f"{path}: a {type(private).__name__}; DKIM keys are RSA or ed25519")
    requested = algorithm
    if algorithm is None:
        algorithm = f"{found}-sha256"
    elif found != ALGORITHMS[algorithm]:
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
        remember_rsa_key(private)
    else:
        bits = 256
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        dkimpy_key = base64.b64encode(raw)
    key = SigningKey(path, algorithm, private, dkimpy_key, bits, tuple(warnings))
    _loaded_keys[(path, requested)] = (data, key)
    return key


#: (path, algorithm asked for) -> (the file's bytes, the key loaded from them). The same
#: bytes give the same key: a reload (SIGHUP) would otherwise run cryptography's RSA key
#: checks again (~0.13 s each, holding the GIL: every endpoint stalled, tests/faults/rotation.py).
_loaded_keys: dict[tuple[str, str | None], tuple[bytes, SigningKey]] = {}


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


def record_problem(text: bytes | str | None, key: SigningKey) -> str | None:
    """What keeps the DKIM key record *text* (one TXT record, its strings joined) from
    verifying signatures made with *key*; None when it does (RFC 6376 3.6.1).

    Checked: present, parseable tag list, ``v=DKIM1`` if given, ``k=`` (default rsa)
    is the key's type, ``h=`` (if given) allows sha256, ``s=`` (if given) covers email,
    ``p=`` not empty (revoked) and the public key of *key* (RSA: SubjectPublicKeyInfo
    DER compared by its numbers; ed25519: the raw 32 bytes).
    """
    if text is None:
        return "no TXT record"
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        tags = {k.decode("ascii").lower(): v.decode("ascii") for k, v in parse_tag_value(data).items()}
    except (InvalidTagValueList, UnicodeDecodeError) as exc:
        return f"not a DKIM key record ({exc})"
    if tags.get("v", "DKIM1") != "DKIM1":
        return f"v={tags['v']}, not DKIM1"
    kind = tags.get("k", "rsa").lower()
    if kind != key.key_type:
        return f"k={kind}, but the private key is {key.key_type}"
    hashes = [h.strip().lower() for h in tags.get("h", "sha256").split(":")]
    if "sha256" not in hashes:
        return f"h={tags['h']} does not allow sha256"
    services = [s.strip().lower() for s in tags.get("s", "*").split(":")]
    if "*" not in services and "email" not in services:
        return f"s={tags['s']} does not cover email"
    published = re.sub(r"\s+", "", tags.get("p", ""))
    if not published:
        return "p= is empty: the key is revoked"
    if published == key.public_key_base64():
        return None
    try:
        raw = base64.b64decode(published, validate=True)
        if key.key_type == "rsa":
            numbers = serialization.load_der_public_key(raw).public_numbers()
            if numbers == key.private.public_key().public_numbers():
                return None  # same key, other DER spelling
    except (binascii.Error, ValueError, UnsupportedAlgorithm, AttributeError):
        return "p= is not a public key"
    return "p= is another key than the private key"
