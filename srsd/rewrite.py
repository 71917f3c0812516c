"""Whether to rewrite: the forwarding decisions over the pure SRS scheme.

Postfix asks two questions, and looks every answer up again (cleanup(8) repeats a
canonical lookup on its result up to 10 times), so each answer here must also be
stable under re-lookup:

* forward (``sender_canonical_maps``): which envelope sender should this mail
  leave with? Not-found leaves the sender as it is.
* reverse (``recipient_canonical_maps``): which address does a bounce to one of
  our SRS addresses really go to? Not-found delivers to the address as is.

No sockets and no reactor: protocol adapters map :class:`Answer` onto their wire.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from srsd.config import Config
from srsd.domains import DomainSet
from srsd.srs import SRS, MalformedAddress, SRSError, srs_tag
from srsd.srs_alias import AliasAddresses

__all__ = [
    "Answer",
    "FOUND",
    "NOTFOUND",
    "TEMP",
    "ALIAS",
    "REVERSE_NOT_OURS",
    "Rewriter",
    "rewriter_from_config",
]

FOUND = "found"
NOTFOUND = "notfound"
TEMP = "temp"  # cannot decide now: Postfix defers and retries
#: reverse only, never sent: a verified alias address; ``text`` is the key to look up
#: in the alias store (:class:`srsd.srs_maps.SRSMaps` answers it)
ALIAS = "alias"

_NOT_SRS = "not an SRS address"
_OTHER_DOMAIN = "not the SRS domain"
#: reverse reasons for ordinary recipients (everything else is a refused SRS address)
REVERSE_NOT_OURS = frozenset({_NOT_SRS, _OTHER_DOMAIN})


class Answer(NamedTuple):
    """One lookup's answer: ``status`` is FOUND, NOTFOUND or TEMP; ``text`` is the
    new address when FOUND, else a short reason for the log and the reply."""

    status: str
    text: str


class Rewriter:
    """The SRS decisions for one configuration (immutable; swapped on reload).

    :param srs: the address scheme with its secrets.
    :param local_domains: senders in these domains are never rewritten (the SRS
        domain always counts as local).
    :param always_rewrite: rewrite local senders too (never our own SRS addresses).
    :param reverse_domains: further domains whose SRS addresses are reversed (an
        earlier SRS domain, while its addresses may still bounce back).
    :param aliases: the short form for long senders (default: over *srs*, 64 octets).
    """

    def __init__(
        self,
        srs: SRS,
        local_domains: DomainSet,
        always_rewrite: bool = False,
        reverse_domains: Iterable[str] = (),
        aliases: AliasAddresses | None = None,
    ) -> None:
        self.srs = srs
        self.aliases = aliases or AliasAddresses(srs)
        self.srs_domain = srs.domain.lower()
        self.reverse_domains = frozenset({self.srs_domain, *(d.lower().rstrip(".") for d in reverse_domains)})
        self.local_domains = local_domains
        self.always_rewrite = always_rewrite

    def forward(self, sender: str, now: float | None = None) -> Answer:
        """Decide the envelope sender for a forwarded message (sender_canonical_maps).

        :param sender: the lookup key as Postfix sent it (empty or ``""`` = null sender;
            also ``user`` and ``@domain`` forms from canonical(5)'s search order).
        :param now: unix time in seconds (default: the clock).
        :returns: FOUND with the SRS0/SRS1 address, or NOTFOUND with the reason.
        """
        if not sender or sender == '""':  # Postfix sends the null sender as ""
            return Answer(NOTFOUND, "null sender")
        local, at, domain = sender.rpartition("@")
        # "user" and "@domain" are canonical(5)'s fallback keys: answering those
        # would map every sender of a domain onto one address.
        if not at or not local or not domain:
            return Answer(NOTFOUND, "not a complete address")
        lowered = domain.lower()
        tag = srs_tag(local)
        if lowered == self.srs_domain and tag:
            # Our own result coming back for re-lookup.
            return Answer(NOTFOUND, "already rewritten")
        if not self.always_rewrite and (lowered == self.srs_domain or lowered in self.local_domains):
            return Answer(NOTFOUND, "local domain")
        if "@" in local:  # as SRS.forward would say; never wrapped: no SRS address holds one
            return Answer(NOTFOUND, f"not local@domain: {sender!r}")
        try:
            return Answer(FOUND, self.srs.forward_parts(local, domain, tag, now))
        except MalformedAddress as exc:
            if tag is None:
                return Answer(NOTFOUND, str(exc))
            # A foreign SRS0/SRS1 that cannot be re-signed into anything whose bounce is
            # deliverable (a malformed SRS1, an SRS0 at a dotless domain): wrap it whole
            # so the bounce returns to it.
            try:
                return Answer(FOUND, self.srs.srs0(local, domain, now))
            except SRSError as inner:
                return Answer(NOTFOUND, str(inner))
        except SRSError as exc:
            return Answer(NOTFOUND, str(exc))

    def reverse(self, address: str, now: float | None = None) -> Answer:
        """Decide where a message to *address* goes (recipient_canonical_maps).

        Only SRS0/SRS1 addresses at the SRS domain (or a reverse domain) that verify (hash, timestamp)
        are reversed; a forged or stale one is NOTFOUND, not an error, so Postfix
        handles it like any unknown recipient instead of deferring it.

        :returns: FOUND with the original sender (SRS0) or the first hop's SRS0
            address (SRS1), ALIAS with the store key of an alias address that verifies
            (:mod:`srsd.srs_alias`), or NOTFOUND with the reason.
        """
        local, at, domain = address.rpartition("@")
        tag = srs_tag(local) if at else None
        if tag is None:
            return Answer(NOTFOUND, _NOT_SRS)
        if domain.lower() not in self.reverse_domains:
            return Answer(NOTFOUND, _OTHER_DOMAIN)
        if now is None:
            now = time.time()
        try:
            if self.aliases.is_alias(local, tag):
                return Answer(ALIAS, self.aliases.key_of(address, now))
            return Answer(FOUND, self.srs.reverse_parts(local, tag, now))
        except SRSError as exc:
            return Answer(NOTFOUND, str(exc))


def rewriter_from_config(cfg: Config) -> Rewriter:
    """Build the :class:`Rewriter` for a loaded, validated :class:`Config`."""
    s = cfg.srs
    srs = SRS(
        cfg.secrets,
        s.domain,
        hash_length=s.hash_length,
        hash_minimum=s.hash_minimum,
        max_age_days=s.max_age_days,
        separator=s.separator,
        urlsafe_hash=s.alphabet == "urlsafe",
    )
    aliases = AliasAddresses(srs, cfg.store.max_local_part)
    return Rewriter(srs, DomainSet(cfg.local_domains), s.always_rewrite, s.reverse_domains, aliases)
