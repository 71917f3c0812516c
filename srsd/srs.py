"""The libsrs2 Sender Rewriting Scheme ("Guarded" SRS0/SRS1), pure and reactor-free.

Address format (Shevek's SRS paper; libsrs2, Mail::SRS, PostSRSd, pysrs)::

    SRS0<sep>HHHH=TT=orig-domain=orig-local@srs-domain
    SRS1<sep>HHHH=first-hop=<SRS0 local part minus "SRS0">@srs-domain

HHHH is the first ``hash_length`` characters of base64(HMAC-SHA1(secret, data)),
where data is the ASCII-lower-cased concatenation TT + orig-domain + orig-local
(SRS0) or first-hop + opaque (SRS1). TT is the day number (unix time // 86400)
modulo 1024 as two base32 characters.

This module knows nothing of local domains, Postfix or sockets: :mod:`srsd.rewrite`
decides *whether* to rewrite, this module only *how*.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

__all__ = [
    "SRS",
    "SRSError",
    "MalformedAddress",
    "NotSRS",
    "BadHash",
    "BadTimestamp",
    "TooLong",
    "SEPARATORS",
    "InvalidParameter",
    "check_parameters",
    "srs_tag",
]

SEPARATORS = "=+-"
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_VALUE = {c: i for i, c in enumerate(_B32)} | {c.lower(): i for i, c in enumerate(_B32)}
_DAY = 86400
_CYCLE = 1024  # two base32 digits
_FULL_HASH = 27  # base64 of a 20-byte SHA-1 digest, without the "=" pad
# base64url (PostSRSd >= 2.2.6) -> standard, applied before comparing hashes.
_TO_STANDARD = str.maketrans("-_", "+/")
_TO_URLSAFE = str.maketrans("+/", "-_")


class SRSError(ValueError):
    """An address that cannot be rewritten or reversed. ``kind`` names the class."""

    kind = "error"


class MalformedAddress(SRSError):
    """Syntax: no ``@``, empty domain, missing SRS fields, a malformed SRS1 hop."""

    kind = "malformed"


class NotSRS(SRSError):
    """Reverse of an address whose local part is not SRS0/SRS1."""

    kind = "not-srs"


class BadHash(SRSError):
    """The hash is shorter than ``hash_minimum`` or no secret verifies it (forged)."""

    kind = "bad-hash"


class BadTimestamp(SRSError):
    """The timestamp is not two base32 characters, is in the future or too old."""

    kind = "expired"


class TooLong(SRSError):
    """The rewritten address would exceed ``max_length`` octets."""

    kind = "too-long"


class InvalidParameter(ValueError):
    """A scheme parameter out of range; ``name`` is the parameter (``hash_length``, ...)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


#: fewest hash characters ever accepted: base64 compared case-insensitively carries
#: ~5.2 bits a character, so 3 would let a forger through in ~2^15.6 tries
MIN_HASH_MINIMUM = 4
MAX_AGE_DAYS = 1000  # below the 1024-day timestamp cycle, so no stamp is ambiguous


def check_parameters(hash_length: int, hash_minimum: int, max_age_days: int, separator: str) -> None:
    """The one range check of the scheme's parameters (the config and :class:`SRS` use it).

    :raises InvalidParameter: naming the first parameter out of range.
    """
    if not MIN_HASH_MINIMUM <= hash_minimum:
        raise InvalidParameter("hash_minimum", f"below {MIN_HASH_MINIMUM} lets forged addresses through")
    if not hash_minimum <= hash_length <= _FULL_HASH:
        raise InvalidParameter("hash_length", f"must be hash_minimum..{_FULL_HASH}")
    if not 1 <= max_age_days <= MAX_AGE_DAYS:
        raise InvalidParameter("max_age_days", f"must be 1..{MAX_AGE_DAYS}")
    if len(separator) != 1 or separator not in SEPARATORS:
        raise InvalidParameter("separator", "must be one of '=', '+', '-'")


def _keyed_sha1(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA1 (RFC 2104) keyed once: the inner and outer SHA-1 states after the
    padded key, copied for every hash. Copying two hashlib states costs a third of
    ``hmac.new(...).copy()`` or ``hmac.digest()``, whose OpenSSL 3 HMAC context is
    allocated, looked up by name and freed on every call (docs/performance.md)."""
    if len(key) > 64:  # the SHA-1 block size
        key = hashlib.sha1(key).digest()
    key = key.ljust(64, b"\0")
    return hashlib.sha1(key.translate(_IPAD)), hashlib.sha1(key.translate(_OPAD))


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def srs_tag(local: str) -> str | None:
    """Return "SRS0"/"SRS1" when *local* starts with that tag (ASCII, any case) and a separator."""
    if len(local) > 4 and local[4] in SEPARATORS:
        tag = local[:4].upper()
        # isascii: str.upper() maps "ſ" (U+017F) to "S"; libsrs2 compares in ASCII only,
        # and a re-signed "ſrs0=..." would reverse to "SRS0=...", not to the sender.
        if tag in ("SRS0", "SRS1") and local[:4].isascii():
            return tag
    return None


def _check_first_hop(hop: str) -> None:
    """An SRS1 first hop must be a dotted domain, so its reverse can be delivered, and
    hold no "=", so the reverse splits the fields where forward joined them.

    :raises MalformedAddress: it is not such a domain.
    """
    if "." not in hop or hop.startswith(".") or hop.endswith(".") or "=" in hop:
        raise MalformedAddress(f"SRS1 first hop {hop!r} is not a domain")


class SRS:
    """Forward and reverse SRS addresses with one set of secrets.

    :param secrets: non-empty sequence of secrets (``str`` is UTF-8 encoded); the
        first signs, every one verifies (key rotation).
    :param domain: the SRS domain, the part after ``@`` of every address minted.
    :param hash_length: characters of hash emitted (hash_minimum..27, libsrs2 default 4).
    :param hash_minimum: fewest hash characters accepted on reverse (4.., default 4).
    :param max_age_days: days a timestamp stays valid (1..1000, default 21: 22 day values).
    :param separator: character after the SRS0/SRS1 tag, one of ``= + -``.
    :param urlsafe_hash: emit the base64url alphabet (``-_``) instead of ``+/``.
        Reverse always accepts both.
    :param max_length: longest address (octets of UTF-8) that forward mints;
        longer ones raise :class:`TooLong` (RFC 5321 4.5.3.1.3: a path is <= 256).
    :raises ValueError: on an invalid parameter (:class:`InvalidParameter` for a range).
    """

    def __init__(
        self,
        secrets: Sequence[str | bytes],
        domain: str,
        *,
        hash_length: int = 4,
        hash_minimum: int = 4,
        max_age_days: int = 21,
        separator: str = "=",
        urlsafe_hash: bool = False,
        max_length: int = 512,
    ) -> None:
        if not secrets:
            raise ValueError("at least one secret is required")
        keys = [s.encode() if isinstance(s, str) else bytes(s) for s in secrets]
        if not all(keys):
            raise ValueError("secrets must not be empty")
        self._keys = keys
        self._macs = [_keyed_sha1(key) for key in keys]
        self._day = -1  # the day number TT was last computed for, and that TT
        self._tt = ""
        check_parameters(hash_length, hash_minimum, max_age_days, separator)
        self.domain = domain
        self.hash_length = hash_length
        self.hash_minimum = hash_minimum
        self.max_age_days = max_age_days
        self.separator = separator
        self.urlsafe_hash = urlsafe_hash
        self.max_length = max_length

    # -- primitives -----------------------------------------------------------

    @staticmethod
    def _digest(keyed: tuple[Any, Any], data: str) -> str:
        """Full base64 HMAC-SHA1 of the ASCII-lower-cased *data* (27 chars)."""
        inner, outer = keyed[0].copy(), keyed[1].copy()
        # bytes.lower() lowers A-Z only, as libsrs2's tolower() in the C locale.
        inner.update(data.encode("utf-8", "surrogateescape").lower())
        outer.update(inner.digest())
        return binascii.b2a_base64(outer.digest(), newline=False).decode("ascii")[:_FULL_HASH]

    def sign(self, data: str) -> str:
        """The hash minted for *data*: ``hash_length`` characters of base64 HMAC-SHA1
        with the first secret, over the ASCII-lower-cased data."""
        h = self._digest(self._macs[0], data)[: self.hash_length]
        return h.translate(_TO_URLSAFE) if self.urlsafe_hash else h

    def verify(self, given: str, data: str) -> None:
        """Check hash *given* for *data* against every secret (any case, either alphabet).

        :raises BadHash: shorter than ``hash_minimum``, longer than a digest, or no secret verifies it.
        """
        if len(given) < self.hash_minimum:
            raise BadHash(f"hash {given!r} shorter than {self.hash_minimum} characters")
        if len(given) > _FULL_HASH:
            raise BadHash(f"hash {given[:30]!r}... too long")
        # Compared case-insensitively: smtpd and users lower-case addresses.
        want = given.translate(_TO_STANDARD).lower().encode("ascii", "replace")
        n = len(given)
        for keyed in self._macs:
            have = self._digest(keyed, data)[:n].lower().encode("ascii")
            if hmac.compare_digest(want, have):
                return
        raise BadHash(f"hash {given!r} does not verify (forged, or signed with another secret)")

    @staticmethod
    def timestamp(now: float) -> str:
        """TT for unix time *now* (seconds): the day number mod 1024 in base32."""
        day = int(now) // _DAY
        return _B32[(day >> 5) & 31] + _B32[day & 31]

    def check_timestamp(self, tt: str, now: float) -> None:
        """Check timestamp *tt* at unix time *now*.

        :raises BadTimestamp: not two base32 characters, older than ``max_age_days`` or in the future.
        """
        if len(tt) != 2 or tt[0] not in _B32_VALUE or tt[1] not in _B32_VALUE:
            raise BadTimestamp(f"malformed timestamp {tt!r}")
        then = (_B32_VALUE[tt[0]] << 5) | _B32_VALUE[tt[1]]
        today = (int(now) // _DAY) % _CYCLE
        age = (today - then) % _CYCLE
        # Ages past max_age are stale; a stamp "from the future" wraps to a huge age.
        if age > self.max_age_days:
            raise BadTimestamp(f"timestamp {tt!r} expired or in the future")

    def _today(self, now: float | None) -> str:
        """TT for *now* (default: the clock), computed once a day."""
        day = int(time.time() if now is None else now) // _DAY
        if day != self._day:
            self._day, self._tt = day, _B32[(day >> 5) & 31] + _B32[day & 31]
        return self._tt

    def mac(self, data: bytes) -> bytes:
        """The raw HMAC-SHA1 of *data* (exactly as given) with the first secret."""
        inner, outer = self._macs[0][0].copy(), self._macs[0][1].copy()
        inner.update(data)
        outer.update(inner.digest())
        return outer.digest()

    def derived(self, label: str) -> SRS:
        """The same scheme keyed with secrets derived from these for *label*
        (HMAC-SHA256(secret, label) each, the order kept): hashes one makes never verify
        in the other, so an extension of the scheme cannot be confused with it."""
        keys = [hmac.digest(key, label.encode(), "sha256") for key in self._keys]
        return SRS(
            keys,
            self.domain,
            hash_length=self.hash_length,
            hash_minimum=self.hash_minimum,
            max_age_days=self.max_age_days,
            separator=self.separator,
            urlsafe_hash=self.urlsafe_hash,
            max_length=self.max_length,
        )

    def _finish(self, local: str) -> str:
        address = f"{local}@{self.domain}"
        # A character is at most 4 octets of UTF-8: most addresses need no encoding to tell.
        if len(address) * 4 > self.max_length and len(address.encode("utf-8", "surrogateescape")) > self.max_length:
            raise TooLong(f"rewritten address longer than {self.max_length} octets")
        return address

    # -- forward --------------------------------------------------------------

    def forward(self, sender: str, now: float | None = None) -> str:
        """Rewrite *sender* (``local@domain``) into an address at the SRS domain.

        A plain sender becomes SRS0; an SRS0 sender (another forwarder's) becomes
        SRS1 with its domain as first hop; an SRS1 sender is re-signed with the
        same first hop. No local-domain logic here (see :mod:`srsd.rewrite`).

        :param now: unix time in seconds (default: the clock).
        :raises MalformedAddress: no ``@``, an empty domain, an ``@`` inside the local
            part, a ``=`` in the domain (reverse splits SRS fields at ``=``), an SRS0
            sender whose domain cannot be an SRS1 first hop (no dot), or an SRS1 sender
            without a dotted first hop and separator-led opaque part.
        :raises TooLong: the result would exceed ``max_length``.
        """
        local, at, domain = sender.rpartition("@")
        # An empty local part is Mail::SRS's behaviour; srsd.rewrite refuses it.
        if not at or not domain or "@" in local:
            raise MalformedAddress(f"not local@domain: {sender!r}")
        return self.forward_parts(local, domain, srs_tag(local), now)

    def forward_parts(self, local: str, domain: str, tag: str | None, now: float | None = None) -> str:
        """:meth:`forward` of ``local@domain`` already split (*tag*: ``srs_tag(local)``),
        for a caller that has split it for its own checks. Same result and errors."""
        if tag == "SRS0":
            _check_first_hop(domain)
            return self.srs1(domain, local[4:])
        if tag == "SRS1":
            hop, opaque = self.parse_srs1(local)[1:]
            return self.srs1(hop, opaque)
        return self.srs0(local, domain, now)

    def srs0(self, local: str, domain: str, now: float | None = None) -> str:
        """Mint ``SRS0<sep>HHHH=TT=domain=local@srs-domain``.

        :raises MalformedAddress: *domain* holds a ``=``: reverse would take what follows
            it for the local part, and the hash would not verify.
        """
        if "=" in domain:
            raise MalformedAddress(f"domain {domain!r} holds an SRS separator '='")
        tt = self._today(now)
        h = self.sign(tt + domain + local)
        return self._finish(f"SRS0{self.separator}{h}={tt}={domain}={local}")

    def srs1(self, hop: str, opaque: str) -> str:
        """Mint ``SRS1<sep>HHHH=hop=opaque@srs-domain``; *opaque* is the SRS0 local
        part minus its "SRS0" tag (so it starts with that address's separator)."""
        h = self.sign(hop + opaque)
        return self._finish(f"SRS1{self.separator}{h}={hop}={opaque}")

    @staticmethod
    def parse_srs1(local: str) -> tuple[str, str, str]:
        """Split an SRS1 local part into (hash, first-hop, opaque).

        :raises MalformedAddress: a field is missing, the first hop has no dot or
            the opaque part does not start with a separator (its reverse could
            never be a deliverable SRS0 address).
        """
        parts = local[5:].split("=", 2)
        if len(parts) != 3:
            raise MalformedAddress("SRS1 needs hash, first hop and opaque part")
        h, hop, opaque = parts
        _check_first_hop(hop)
        if not opaque or opaque[0] not in SEPARATORS:
            raise MalformedAddress("SRS1 opaque part does not start with a separator")
        return h, hop, opaque

    # -- reverse --------------------------------------------------------------

    def reverse(self, address: str, now: float | None = None) -> str:
        """Reverse an SRS address: SRS0 -> the original sender, SRS1 -> the SRS0
        address at the first hop. Any case and both base64 alphabets accepted.

        The domain after ``@`` is not checked here (see :mod:`srsd.rewrite`).

        :param now: unix time in seconds (default: the clock).
        :raises NotSRS: the local part is not tagged SRS0/SRS1.
        :raises MalformedAddress: no ``@`` or missing fields.
        :raises BadTimestamp: SRS0 stamp malformed, expired or in the future.
        :raises BadHash: the hash is too short or verifies with no secret.
        """
        local, at, _domain = address.rpartition("@")
        if not at:
            raise MalformedAddress(f"no @ in {address!r}")
        tag = srs_tag(local)
        if tag is None:
            raise NotSRS(f"not an SRS address: {address!r}")
        return self.reverse_parts(local, tag, now)

    def reverse_parts(self, local: str, tag: str, now: float | None = None) -> str:
        """:meth:`reverse` of an address whose local part *local* the caller has already
        split off and tagged (*tag*: ``srs_tag(local)``, SRS0 or SRS1). Same result and
        errors."""
        if tag == "SRS1":
            h, hop, opaque = self.parse_srs1(local)
            self.verify(h, hop + opaque)
            return f"SRS0{opaque}@{hop}"
        if tag != "SRS0":
            raise NotSRS(f"not an SRS address: {local!r}")
        parts = local[5:].split("=", 3)
        if len(parts) != 4:
            raise MalformedAddress("SRS0 needs hash, timestamp, domain and local part")
        h, tt, domain, user = parts
        if not domain:
            raise MalformedAddress("SRS0 with an empty domain")
        # The stamp first: a malformed or stale one is refused without HMAC work.
        self.check_timestamp(tt, time.time() if now is None else now)
        self.verify(h, tt + domain + user)
        return f"{user}@{domain}"
