"""How srsd drives dkimpy: its RSA step through OpenSSL, and a quiet logger.

dkimpy computes RSASSA-PKCS1-v1_5 in pure Python (~6.6 ms per 2048-bit signature,
13.5 ms per ARC set). :func:`install` replaces the one function dkimpy calls for
it, ``dkim.RSASSA_PKCS1_v1_5_sign`` (imported into the ``dkim`` namespace from
``dkim.crypto``), by :func:`openssl_rsa_sign`, which signs the same digest with
``cryptography``. PKCS#1 v1.5 is deterministic (RFC 8017 8.2.1), so the
signatures are byte-identical (tested against the pure-Python function); only the
time differs, which is why a process-wide substitution is harmless. Nothing
happens at import: the milter handler installs it when it is built
(:class:`srsd.mailauth.handler.MailAuth`); :func:`pure_python_rsa` turns it off
for a block (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import dkim
import dkim.crypto
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

__all__ = ["MIN_RSA_BITS", "QUIET", "install", "installed", "openssl_rsa_sign", "pure_python_rsa", "remember_rsa_key"]

MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must not accept less

_PURE_RSA_SIGN = dkim.crypto.RSASSA_PKCS1_v1_5_sign
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


def install() -> None:
    """Make dkimpy sign RSA with OpenSSL (idempotent)."""
    dkim.RSASSA_PKCS1_v1_5_sign = openssl_rsa_sign


def installed() -> bool:
    """True when dkimpy's RSA step goes to OpenSSL."""
    return dkim.RSASSA_PKCS1_v1_5_sign is openssl_rsa_sign


@contextlib.contextmanager
def pure_python_rsa() -> Iterator[None]:
    """Within the block dkimpy signs with its own pure-Python RSA (tests, benchmarks);
    the previous state comes back after it. Not thread-safe: it swaps a module global."""
    before = dkim.RSASSA_PKCS1_v1_5_sign
    dkim.RSASSA_PKCS1_v1_5_sign = _PURE_RSA_SIGN
    try:
        yield
    finally:
        dkim.RSASSA_PKCS1_v1_5_sign = before


class _QuietLogger:
    """dkimpy logs every failure at error level; srsd reports results itself."""

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    info = warning = error = exception = debug

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return False


#: the ``logger=`` srsd gives dkimpy's DKIM and ARC objects
QUIET = _QuietLogger()
