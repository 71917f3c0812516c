"""srsd's one DNS resolver: configured nameservers, per-query timeouts, TTL cache.

Built on dnspython's stub resolver and its thread-safe LRU cache, which honours
record TTLs and caches negative answers (NXDOMAIN, NODATA) for the SOA minimum
(RFC 2308). Lookups block, so they run on worker threads (see :mod:`srsd.spf`),
never on the reactor thread.

:meth:`Resolver.records` gives the records SPF evaluation reads (:mod:`srsd.spf_eval`).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Sequence
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

__all__ = [
    "DNSTemporaryError",
    "Resolver",
    "no_such_name",
    "parse_nameserver",
    "shorter_ttl",
    "spf_records",
]


class DNSTemporaryError(Exception):
    """A lookup that timed out or got SERVFAIL/REFUSED from every server."""


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` -> (address, port).

    :raises ValueError: not an IP address with an optional port 1..65535.
    """
    host, port = text, 53
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"bad nameserver {text!r}")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad nameserver {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in nameserver {text!r}")
    return host, port


def shorter_ttl(current: float | None, answer: dns.resolver.Answer) -> float:
    """The seconds a decision resting on *current* (None: nothing yet) and *answer* stays valid."""
    remaining = max(0.0, answer.expiration - time.time())
    return remaining if current is None else min(current, remaining)


def no_such_name(exc: Exception, name: str, qtype: str) -> None:
    """What a failed dnspython lookup of *name*/*qtype* means for srsd: None (return it)
    for no such name -- NXDOMAIN, or a CNAME loop, which SPF treats as no data (RFC 7208
    ptr-cname-loop) and dnspython reports as ChainTooLong per server.

    :raises DNSTemporaryError: timeout, SERVFAIL/REFUSED or no server answered (a generic
        text: it may reach a remote SMTP client; no server addresses).
    :raises ValueError: *name* is not a DNS name.
    :raises Exception: *exc* itself, when it is none of these.
    """
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return None
    if isinstance(exc, dns.resolver.NoNameservers):
        errors = exc.kwargs.get("errors") or []
        if errors and all(isinstance(e[3], dns.message.ChainTooLong) for e in errors):
            return None
        raise DNSTemporaryError(f"DNS {qtype} {name}: no nameserver answered") from None
    if isinstance(exc, dns.exception.Timeout):  # LifetimeTimeout is one
        raise DNSTemporaryError(f"DNS {qtype} {name}: timed out") from None
    if isinstance(exc, (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel, dns.name.BadEscape)):
        raise ValueError(f"bad DNS name {name!r}: {exc}") from None
    raise exc


class _NoSuchName:
    """An NXDOMAIN kept in :class:`Resolver`'s front cache until *expiration* (unix time)."""

    response = None

    def __init__(self, expiration: float) -> None:
        self.expiration = expiration


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    """Seconds an NXDOMAIN may be kept: its SOA's TTL, capped by the SOA MINIMUM
    (RFC 2308 5); 0 when the answer brought no SOA."""
    try:
        responses = exc.responses()
    except Exception:  # noqa: BLE001 - an NXDOMAIN without its responses is not kept
        return 0.0
    for response in responses.values():
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum))
    return 0.0


class Resolver:
    """A caching stub resolver for SPF and DKIM lookups.

    :param nameservers: ``host[:port]`` strings; empty = /etc/resolv.conf.
    :param timeout: seconds one query may take in all (every server and retry).
    :param cache_size: answers kept (LRU), each for its TTL; 0 = no cache.
    """

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 2.0, cache_size: int = 10000) -> None:
        resolver = dns.resolver.Resolver(configure=not nameservers)
        if nameservers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers]
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        self._resolver = resolver
        self.timeout = timeout
        #: the arguments that build a resolver like this one (the DKIM job processes')
        self.spec: tuple[tuple[str, ...], float, int] = (tuple(nameservers), timeout, cache_size)
        self._ttl = threading.local()  # smallest TTL seen by this thread's current check
        # (name, type) -> answer, before dnspython's cache: a hit there builds Name
        # objects and a resolution state (~20 µs; a cached NXDOMAIN raises through it);
        # here it is a dict lookup. Each until its expiration (an NXDOMAIN: its SOA's,
        # RFC 2308 5), as many as the cache holds.
        self._front: dict[tuple[str, str], Any] = {}
        self._front_size = cache_size

    # -- TTL tracking for decision caches ---------------------------------------

    def start_ttl_tracking(self) -> None:
        """Begin recording the smallest TTL of the answers this thread receives."""
        self._ttl.value = None

    def tracked_ttl(self) -> float | None:
        """Seconds the answers used since :meth:`start_ttl_tracking` stay valid."""
        return getattr(self._ttl, "value", None)

    def _note(self, answer: dns.resolver.Answer) -> None:
        self._ttl.value = shorter_ttl(getattr(self._ttl, "value", None), answer)

    # -- lookups ----------------------------------------------------------------

    def resolve(self, name: str, qtype: str, timeout: float | None = None) -> dns.resolver.Answer | None:
        """Look *name*/*qtype* up (cached); None for NXDOMAIN or no data.

        :param timeout: seconds for this query, capped at the resolver's own.
        :raises DNSTemporaryError: timeout, SERVFAIL or no server answered.
        :raises ValueError: *name* is not a valid DNS name (e.g. a label > 63).
        """
        answer = self._query(name, qtype, timeout)
        return answer if answer is not None and answer.rrset is not None else None

    def exists(self, name: str, timeout: float | None = None) -> bool:
        """False when *name* does not exist (NXDOMAIN: RFC 8020; RFC 9989 3.2.13, A.4),
        True when it does, with or without records (an A query; NODATA = exists).

        :raises DNSTemporaryError: as :meth:`resolve`.
        :raises ValueError: as :meth:`resolve`.
        """
        return self._query(name, "A", timeout) is not None

    def _query(self, name: str, qtype: str, timeout: float | None) -> dns.resolver.Answer | None:
        """The answer (NODATA included), None for NXDOMAIN (or a CNAME loop)."""
        key = (name, qtype)
        front = self._front.get(key)
        if front is not None and front.expiration > time.time():
            if front.response is None:  # a kept NXDOMAIN
                return None
            self._note(front)
            return front
        lifetime = self.timeout if timeout is None else max(0.001, min(timeout, self.timeout))
        try:
            answer = self._resolver.resolve(name, qtype, lifetime=lifetime, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            ttl = _negative_ttl(exc)
            if ttl > 0:
                self._keep(key, _NoSuchName(time.time() + ttl))
            return None
        except Exception as exc:
            return no_such_name(exc, name, qtype)
        self._keep(key, answer)
        self._note(answer)
        return answer

    def _keep(self, key: tuple[str, str], entry: Any) -> None:
        if self._front_size:
            if len(self._front) >= self._front_size:
                self._front.clear()  # under the GIL: a racing reader only misses
            self._front[key] = entry

    @property
    def dnspython(self) -> dns.resolver.Resolver:
        """The dnspython resolver underneath (its settings and cache; srsd.dns_async drives it)."""
        return self._resolver

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list:
        """*name*'s *qtype* records in :func:`spf_records`' shape (what srsd.spf_eval reads).

        :raises DNSTemporaryError: as :meth:`resolve`.
        :raises ValueError: as :meth:`resolve`.
        """
        return spf_records(self.resolve(name, qtype, timeout), name)


def spf_records(answer: dns.resolver.Answer | None, name: str) -> list:
    """*answer* (None: no such name) in the shape srsd.spf_eval reads, asked as *name*:
    ``[((name, type), value), ...]``, CNAMEs included. Values: A/AAAA address strings, MX
    (preference, exchange name), PTR target text, TXT/SPF tuples of bytes, CNAME target text."""
    if answer is None:
        return []
    out: list = []
    for rrset in answer.response.answer:
        # the answer goes under the name asked for (the evaluator's); to_text() would
        # escape odd bytes (a space -> "\\032", e.g. after %_ macro expansion)
        if rrset.name == answer.qname:
            owner = name.rstrip(".")
        else:
            owner = rrset.name.to_text(omit_final_dot=True)
        rtype = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            if rtype in ("A", "AAAA"):
                value: Any = rdata.address
            elif rtype == "MX":
                value = (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
            elif rtype in ("PTR", "CNAME"):
                value = rdata.target.to_text(omit_final_dot=True)
            elif rtype in ("TXT", "SPF"):
                value = tuple(rdata.strings)
            else:
                continue
            out.append(((owner, rtype), value))
    return out
