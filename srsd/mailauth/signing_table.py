"""Which keys sign which mail: the signing table (pure; docs/dkim.md "Signing table").

Every configured key (``[[dkim.keys]]``, and the single ``dkim.selector``/``key_file``
of older configs) is a :class:`TableKey`: a signing domain (d=), a selector (s=), the
private key and a state:

``active``   signs now.
``next``     signs once its DNS record is visible and matches the key (checked by
             :mod:`srsd.mailauth.rotation`); from then on it takes the place of the
             ``active`` keys of its domain and key type (RSA, ed25519).
``retired``  signs nothing; still printed by ``srsd dns-records`` (keep it published
             until the mail it signed has been delivered).

A domain may have several signing keys: an RSA and an ed25519 key sign every message
side by side (RFC 8463 dual signing: receivers that cannot verify ed25519 use the RSA one).

Who gets which keys (:meth:`SigningTable.for_author`, local mail):

1. the keys of the author domain itself (its RFC5322.From domain, exact match);
2. else the keys of its nearest parent listed in ``dkim.sign_subdomains``;
3. else the forwarder's keys (``dkim.domain``): a valid signature of the host that
   sent it, not aligned with the From domain, as the single-key setup always did.

Forwarded mail gets the forwarder's keys (:meth:`SigningTable.forwarder_keys`); its
ARC set is sealed with the forwarder's first RSA key (ARC is rsa-sha256 only, RFC 8617 4.1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from srsd.mailauth.keys import SigningKey, dns_record_name

__all__ = ["ACTIVE", "NEXT", "RETIRED", "STATES", "KeyId", "TableKey", "SigningTable"]

ACTIVE = "active"
NEXT = "next"
RETIRED = "retired"
STATES = (ACTIVE, NEXT, RETIRED)

KeyId = tuple[str, str, str]
"""(domain, selector, public key base64): one key, across reloads."""


@dataclass(frozen=True)
class TableKey:
    """One configured key. ``where`` is the config key that names it
    (``dkim.keys[2]``, ``dkim.selector``), for messages."""

    domain: str
    selector: str
    key: SigningKey = field(repr=False)
    state: str = ACTIVE
    where: str = ""

    @property
    def id(self) -> KeyId:
        return (self.domain, self.selector, self.key.public_key_base64())

    @property
    def record_name(self) -> str:
        """``<selector>._domainkey.<domain>`` (RFC 6376 3.6.2.1)."""
        return dns_record_name(self.selector, self.domain)

    @property
    def key_type(self) -> str:
        return self.key.key_type


class SigningTable:
    """The keys of one configuration, with the ``next`` keys seen published.

    :param keys: every configured key, in config order (signatures come in that order).
    :param forwarder: the forwarder's domain (``dkim.domain``, default ``srs.domain``).
    :param subdomain_parents: domains whose keys also sign for their subdomains.
    :param visible: ids of ``next`` keys whose DNS record was seen and matches.
    """

    def __init__(
        self,
        keys: Sequence[TableKey],
        forwarder: str,
        subdomain_parents: Iterable[str] = (),
        visible: Iterable[KeyId] = (),
    ) -> None:
        self.keys = tuple(keys)
        self.forwarder = forwarder.lower()
        self.subdomain_parents = frozenset(d.lower() for d in subdomain_parents)
        self.visible = frozenset(visible) & {k.id for k in self.keys if k.state == NEXT}
        taking_over = {(k.domain, k.key_type) for k in self.keys if k.id in self.visible}
        self.signing: tuple[TableKey, ...] = tuple(
            k
            for k in self.keys
            if k.id in self.visible or (k.state == ACTIVE and (k.domain, k.key_type) not in taking_over)
        )
        self._by_domain: dict[str, tuple[TableKey, ...]] = {}
        for k in self.signing:
            self._by_domain[k.domain] = (*self._by_domain.get(k.domain, ()), k)

    def with_visible(self, visible: Iterable[KeyId]) -> SigningTable:
        """The same table with *visible* (more) ``next`` keys seen published."""
        return SigningTable(self.keys, self.forwarder, self.subdomain_parents, self.visible | frozenset(visible))

    @property
    def pending(self) -> tuple[TableKey, ...]:
        """``next`` keys not seen published yet: they sign nothing so far."""
        return tuple(k for k in self.keys if k.state == NEXT and k.id not in self.visible)

    def replaced_by(self, key: TableKey) -> tuple[TableKey, ...]:
        """The keys that sign now and that *key* (a ``next`` key) takes over from."""
        return tuple(k for k in self.signing if (k.domain, k.key_type) == (key.domain, key.key_type) and k is not key)

    def keys_of(self, domain: str) -> tuple[TableKey, ...]:
        """The keys signing for *domain* now (exact match), in config order."""
        return self._by_domain.get(domain.lower(), ())

    def forwarder_keys(self) -> tuple[TableKey, ...]:
        """The keys that sign forwarded mail (and local mail of domains without keys)."""
        return self.keys_of(self.forwarder)

    def arc_key(self) -> TableKey | None:
        """The key that seals ARC sets: the forwarder's first signing RSA key."""
        return next((k for k in self.forwarder_keys() if k.key_type == "rsa"), None)

    def for_author(self, domain: str) -> tuple[tuple[TableKey, ...], str]:
        """(keys, why) for local mail whose author domain is *domain* (see the module
        docstring); *why* is "" for the domain's own keys, else a note for the log."""
        domain = domain.lower()
        own = self.keys_of(domain)
        if own:
            return own, ""
        labels = domain.split(".")
        for i in range(1, len(labels) - 1):
            parent = ".".join(labels[i:])
            if parent in self.subdomain_parents and self.keys_of(parent):
                return self.keys_of(parent), f"parent of {domain}"
        return self.forwarder_keys(), f"no key for {domain}"
