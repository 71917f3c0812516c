"""How srsd drives dkimpy: its RSA steps through OpenSSL, work done once, a quiet logger.

dkimpy computes RSASSA-PKCS1-v1_5 in pure Python (~6.6 ms per 2048-bit signature,
13.5 ms per ARC set, ~1 ms per verification), parses the PEM private key in pure
Python at every signature, and canonicalizes the body again for every signature it
makes or checks (a forwarded message: its DKIM signature, the ARC message signature,
the new ARC set and the new DKIM signature, each a pass of two regular expressions
over the body). :func:`install` replaces, process-wide, the functions dkimpy calls
for these, each by one that gives the same result:

* ``dkim.RSASSA_PKCS1_v1_5_sign`` -> :func:`openssl_rsa_sign` (``cryptography``; PKCS#1
  v1.5 is deterministic, RFC 8017 8.2.1, so the signatures are byte-identical, tested);
* ``dkim.RSASSA_PKCS1_v1_5_verify`` -> :func:`openssl_rsa_verify` (the same yes/no);
* ``dkim.parse_pem_private_key`` and ``dkim.parse_public_key`` -> memos of their
  results by key bytes;
* ``CanonicalizationPolicy.canonicalize_body`` -> a memo by (algorithm, body), bounded
  to :data:`BODY_MEMO_BYTES`, so each body is canonicalized once per algorithm;
* ``Relaxed.canonicalize_body`` -> :func:`relaxed_body` (the same bytes, fewer passes).

srsd's own signer and verifier (:mod:`srsd.mailauth.canonical`) use :func:`canonical_body`
from here; dkimpy's own entry points (the independent verifier of tests and benchmarks)
get the rest.

(These are dkimpy's module-level names; ``tests/unit/test_dkim.py`` checks each
replacement against the original.) Nothing happens at import: the milter handler
installs them when it is built (:class:`srsd.mailauth.handler.MailAuth`);
:func:`pure_python_rsa` restores dkimpy as shipped for a block (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import dkim
import dkim.canonicalization
import dkim.crypto
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

__all__ = [
    "MIN_RSA_BITS",
    "BODY_MEMO_BYTES",
    "canonical_body",
    "forget_messages",
    "QUIET",
    "install",
    "installed",
    "openssl_rsa_sign",
    "openssl_rsa_verify",
    "pure_python_rsa",
    "remember_rsa_key",
]

MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must not accept less

#: bytes of bodies and their canonical forms the body memo keeps at most
BODY_MEMO_BYTES = 32 * 1024 * 1024

_PURE_RSA_SIGN = dkim.crypto.RSASSA_PKCS1_v1_5_sign
_PURE_RSA_VERIFY = dkim.crypto.RSASSA_PKCS1_v1_5_verify
_PARSE_PEM = dkim.crypto.parse_pem_private_key
_PARSE_PUBLIC = dkim.crypto.parse_public_key
_CANONICALIZE_BODY = dkim.canonicalization.CanonicalizationPolicy.canonicalize_body
_RELAXED_HEADERS = dkim.canonicalization.Relaxed.canonicalize_headers
_RELAXED_BODY = dkim.canonicalization.Relaxed.canonicalize_body
_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
_rsa_keys: dict[tuple[int, int], rsa.RSAPrivateKey] = {}
_rsa_keys_lock = threading.Lock()
_MAX_CACHED_KEYS = 32


def remember_rsa_key(private: rsa.RSAPrivateKey) -> None:
    """Keep *private* so :func:`openssl_rsa_sign` finds it without rebuilding it from
    dkimpy's numbers (~1 ms for a 2048-bit key)."""
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
        remember_rsa_key(private)
    return private


def openssl_rsa_sign(hash: Any, private_key: dict[str, int]) -> bytes:
    """Drop-in for ``dkim.crypto.RSASSA_PKCS1_v1_5_sign(hash, private_key)``.

    *hash* is the hashlib-like object dkimpy fed the canonicalized headers (it has
    ``name`` and ``digest()``); *private_key* dkimpy's dict from
    ``parse_pem_private_key``. Same output, byte for byte, computed by OpenSSL. A
    digest other than SHA-1/SHA-256 goes to dkimpy's own code.
    """
    algorithm = _HASHES.get(hash.name.lower())
    if algorithm is None:
        return _PURE_RSA_SIGN(hash, private_key)
    key = _openssl_key(private_key)
    if key.key_size < 512:  # dkimpy raises DigestTooLargeError for tiny moduli; keep that
        return _PURE_RSA_SIGN(hash, private_key)
    return key.sign(hash.digest(), padding.PKCS1v15(), Prehashed(algorithm()))


_public_keys: dict[tuple[int, int], rsa.RSAPublicKey] = {}


def openssl_rsa_verify(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """Drop-in for ``dkim.crypto.RSASSA_PKCS1_v1_5_verify(hash, signature, public_key)``:
    True when *signature* is the PKCS#1 v1.5 signature of *hash*'s digest under
    *public_key* (dkimpy's dict from ``parse_public_key``), checked by OpenSSL. A digest
    other than SHA-1/SHA-256, or a modulus under 512 bits (dkimpy raises its own errors
    for those), goes to dkimpy's own code."""
    algorithm = _HASHES.get(hash.name.lower())
    n, e = public_key["modulus"], public_key["publicExponent"]
    if algorithm is None or n.bit_length() < 512:
        return _PURE_RSA_VERIFY(hash, signature, public_key)
    key = _public_keys.get((n, e))
    if key is None:
        key = rsa.RSAPublicNumbers(e, n).public_key()
        with _rsa_keys_lock:
            if len(_public_keys) >= 4 * _MAX_CACHED_KEYS:
                _public_keys.clear()
            _public_keys[(n, e)] = key
    try:
        key.verify(bytes(signature), hash.digest(), padding.PKCS1v15(), Prehashed(algorithm()))
    except InvalidSignature:
        return False
    return True


def _memo(parse: Any, size: int) -> Any:
    """*parse* (a pure function of one bytes argument) remembered for *size* arguments."""
    parsed_by_data: dict[bytes, Any] = {}

    def memo(data: bytes) -> Any:
        parsed = parsed_by_data.get(data)
        if parsed is None:
            parsed = parse(data)  # raises on bad data: nothing kept
            with _rsa_keys_lock:
                if len(parsed_by_data) >= size:
                    parsed_by_data.clear()
                parsed_by_data[bytes(data)] = parsed
        return parsed

    return memo


# dkimpy parses the private key at every signature, a public key at every verification
_parse_pem_private_key = _memo(_PARSE_PEM, _MAX_CACHED_KEYS)
_parse_public_key = _memo(_PARSE_PUBLIC, 4 * _MAX_CACHED_KEYS)


class _BodyMemo:
    """Canonical bodies by (algorithm, body), the most recent first, within a byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._lock = threading.Lock()
        self._bodies: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()

    def canonicalize_body(self, policy: Any, body: Any) -> Any:
        if not isinstance(body, bytes) or 4 * len(body) > self.budget:
            return _CANONICALIZE_BODY(policy, body)
        key = (policy.body_algorithm.name, body)
        with self._lock:
            done = self._bodies.get(key)
            if done is not None:
                self._bodies.move_to_end(key)
                return done
        done = _CANONICALIZE_BODY(policy, body)
        with self._lock:
            if key not in self._bodies:
                self._bodies[key] = done
                self.size += len(body) + len(done)
                while self.size > self.budget:
                    (_, old), old_done = self._bodies.popitem(last=False)
                    self.size -= len(old) + len(old_done)
        return done

    def clear(self) -> None:
        with self._lock:
            self._bodies.clear()
            self.size = 0


_BODY_MEMO = _BodyMemo(BODY_MEMO_BYTES)


_RELAXED = dkim.canonicalization.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def canonical_body(body: bytes) -> bytes:
    """*body* in RFC 6376 3.4.4 "relaxed" form, from the body memo (what srsd's own
    signer hashes for bh=; dkimpy's canonicalization, so both agree by construction)."""
    return _BODY_MEMO.canonicalize_body(_RELAXED, body)


def _memo_canonicalize_body(policy: Any, body: Any) -> Any:
    return _BODY_MEMO.canonicalize_body(policy, body)


def forget_messages() -> None:
    """Empty the body memo (benchmarks: each message's first canonicalization counted)."""
    _BODY_MEMO.clear()


_SQUEEZED = re.compile(rb"\t[\t ]*| [\t ]+")  # the WSP runs relaxed changes: a single space stays


def relaxed_body(body: bytes) -> bytes:
    """``Relaxed.canonicalize_body`` (RFC 6376 3.4.4), the same bytes with fewer
    passes: dkimpy's two regular expressions replace every space of the body
    (~360 µs for 10 KB here); a body without a tab or two spaces in a row needs none
    (~17 µs), and the others only touch the runs that change."""
    if b"\t" in body or b"  " in body:
        body = _SQUEEZED.sub(b" ", body)
    return dkim.canonicalization.correct_empty_body(
        dkim.canonicalization.strip_trailing_lines(body.replace(b" \r\n", b"\r\n"))
    )


_SHIPPED = (_PURE_RSA_SIGN, _PURE_RSA_VERIFY, _PARSE_PEM, _PARSE_PUBLIC, _CANONICALIZE_BODY, _RELAXED_BODY)
_OURS = (openssl_rsa_sign, openssl_rsa_verify, _parse_pem_private_key, _parse_public_key, _memo_canonicalize_body,
         relaxed_body)  # fmt: skip


def _set(functions: tuple[Any, ...]) -> None:
    (
        dkim.RSASSA_PKCS1_v1_5_sign,
        dkim.RSASSA_PKCS1_v1_5_verify,
        dkim.parse_pem_private_key,
        dkim.parse_public_key,
        dkim.canonicalization.CanonicalizationPolicy.canonicalize_body,
        body,
    ) = functions
    dkim.canonicalization.Relaxed.canonicalize_body = staticmethod(body)


def _current() -> tuple[Any, ...]:
    return (
        dkim.RSASSA_PKCS1_v1_5_sign,
        dkim.RSASSA_PKCS1_v1_5_verify,
        dkim.parse_pem_private_key,
        dkim.parse_public_key,
        dkim.canonicalization.CanonicalizationPolicy.canonicalize_body,
        dkim.canonicalization.Relaxed.canonicalize_body,
    )


def install() -> None:
    """Make dkimpy sign and verify RSA with OpenSSL, parse each key once and
    canonicalize each body once per algorithm (idempotent)."""
    _set(_OURS)


def installed() -> bool:
    """True when :func:`install`'s replacements are in place."""
    return _current() == _OURS


@contextlib.contextmanager
def pure_python_rsa() -> Iterator[None]:
    """Within the block dkimpy runs as shipped: its own pure-Python RSA, key parsing and
    body canonicalization (tests, benchmarks); the previous state comes back after it.
    Not thread-safe: it swaps module globals."""
    before = _current()
    _set(_SHIPPED)
    try:
        yield
    finally:
        _set(before)


class _QuietLogger:
    """dkimpy logs every failure at error level; srsd reports results itself."""

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    info = warning = error = exception = debug

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return False


#: the ``logger=`` srsd gives dkimpy's DKIM and ARC objects
QUIET = _QuietLogger()
