"""srsd's short SRS0 form for long senders: an SRS0 address that carries an alias-store
key instead of the sender (pure, reactor-free; the store is :mod:`srsd.alias_store`).

::

    SRS0<sep>HHHH=TT==KEY@srs-domain        e.g. SRS0=q8Zk=JN==4GQ2XWY7LRM3C5HA@fwd.example

* **The empty domain field is the marker.** Every SRS0 that libsrs2, Mail::SRS, PostSRSd
  or srsd mints for a sender carries the sender's domain there, and RFC 5321 (4.1.2) has no
  mailbox without one (``Mailbox = Local-part "@" ( Domain / address-literal )``); srsd's
  forward never rewrites such a sender. PostSRSd 2.x's own database aliases carry the
  domain ``1`` (``SRS0=HHHH=TT=1=<32 base32hex>``), so they are told apart too.
* **KEY**: :data:`KEY_LENGTH` characters of base32 (RFC 4648: A-Z, 2-7; read in any case,
  smtpd lower-cases recipients) of HMAC-SHA1 over the address a bounce must reach, keyed
  with a secret derived from the signing secret: the same sender always gets the same key
  (repeats add no rows, every node of a fleet computes the same one) and the key reveals
  nothing about the sender without the secret.
* **HHHH**: SRS's hash over ``TT + KEY``, with secrets derived from the configured ones for
  this form alone (every secret verifies, as for SRS0): a libsrs2 hash made with the same
  secret never verifies as an alias hash, nor the other way round.
* **TT**: the SRS0 timestamp, checked the same way (``max_age_days``).

The local part is ``26 + hash_length`` octets (30 by default), far below RFC 5321's 64.
Reverse checks the timestamp and the hash before anything asks the store: a forged
address never reaches it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from srsd.srs import SRS, MalformedAddress, srs_tag

__all__ = ["Alias", "AliasAddresses", "KEY_LENGTH", "alias_local_length"]

#: base32 characters of key: 80 bits, so two senders meet on one key with odds
#: ~N^2 / 2^81 (10^-12 for 2 million stored senders); the store refuses a clash anyway
KEY_LENGTH = 16
_KEY = re.compile(rf"[A-Za-z2-7]{{{KEY_LENGTH}}}")
_DAY = 86400
# Labels of the derived secrets (domain separation from libsrs2's hashes and each other).
_KEY_LABEL = "srsd alias key v1"
_HASH_LABEL = "srsd alias address v1"


def alias_local_length(hash_length: int) -> int:
    """Octets of an alias address's local part: ``SRS0=`` HHHH ``=TT==`` KEY."""
    return 5 + hash_length + 5 + KEY_LENGTH


@dataclass(frozen=True)
class Alias:
    """One long sender's alias: *address* goes out, *key* -> *target* goes to the store
    until *expires* (unix seconds: the end of the last day the address's TT is valid)."""

    key: str
    target: str
    address: str
    expires: int


class AliasAddresses:
    """Mint and check alias addresses for one :class:`~srsd.srs.SRS` (its secrets,
    domain, hash length, separator and max age).

    :param srs: the SRS scheme whose long addresses are shortened.
    :param max_local_part: octets of SRS local part above which :meth:`shorten` makes an
        alias (RFC 5321 4.5.3.1.1: 64).
    """

    def __init__(self, srs: SRS, max_local_part: int = 64) -> None:
        self.srs = srs
        self.max_local_part = max_local_part
        self._key_mac = srs.derived(_KEY_LABEL)
        self._hash = srs.derived(_HASH_LABEL)

    def shorten(self, rewritten: str, now: float) -> Alias | None:
        """The alias for *rewritten* (an address this scheme just minted) when its local
        part is longer than ``max_local_part``, else None. Its target is what *rewritten*
        reverses to, so the alias leads a bounce exactly where the long form would."""
        local = rewritten.rpartition("@")[0]
        if len(local.encode("utf-8", "surrogateescape")) <= self.max_local_part:
            return None
        target = self.srs.reverse(rewritten, now)
        key = self.key(target)
        day = int(now) // _DAY
        return Alias(key, target, self.mint(key, now), (day + self.srs.max_age_days + 1) * _DAY)

    def key(self, target: str) -> str:
        """The store key of *target*: upper-case base32, :data:`KEY_LENGTH` characters."""
        digest = self._key_mac.mac(target.encode("utf-8", "surrogateescape"))
        return base64.b32encode(digest).decode("ascii")[:KEY_LENGTH]

    def mint(self, key: str, now: float) -> str:
        """The alias address carrying *key*, stamped for unix time *now*."""
        tt = SRS.timestamp(now)
        return f"SRS0{self.srs.separator}{self._hash.sign(tt + key)}={tt}=={key}@{self.srs.domain}"

    @staticmethod
    def is_alias(local: str, tag: str | None) -> bool:
        """Whether local part *local* has the alias form (SRS0 with an empty domain field);
        it says nothing of its hash or timestamp. *tag*: ``srs_tag(local)``, which the
        callers have at hand."""
        if tag != "SRS0":
            return False
        parts = local[5:].split("=", 3)
        return len(parts) == 4 and parts[2] == ""

    def key_of(self, address: str, now: float) -> str:
        """The store key an alias address carries, once its timestamp and hash verify.

        :param address: ``SRS0<sep>HHHH=TT==KEY@domain`` in any case (the domain is not
            checked here: see :class:`srsd.rewrite.Rewriter`).
        :returns: the key in upper case.
        :raises MalformedAddress: not the alias form, or the key is not base32 of the right length.
        :raises BadTimestamp: the stamp is malformed, expired or in the future.
        :raises BadHash: the hash is too short or verifies with no secret (forged).
        """
        local = address.rpartition("@")[0]
        if not self.is_alias(local, srs_tag(local)):
            raise MalformedAddress(f"not an alias address: {address!r}")
        h, tt, _empty, key = local[5:].split("=", 3)
        if not _KEY.fullmatch(key):
            raise MalformedAddress(f"alias key {key[:40]!r} is not {KEY_LENGTH} base32 characters")
        key = key.upper()
        self._hash.check_timestamp(tt, now)
        self._hash.verify(h, tt + key)
        return key
