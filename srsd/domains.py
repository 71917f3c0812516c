"""Which domains and which clients: the two membership rules every decision shares.

:class:`DomainSet` is Postfix's domain-list notation (``example.com`` the domain
itself, ``.example.com`` its subdomains), used for local domains (SRS rewriting,
mail authentication), whitelisted HELO names (policy) and signing domains.
:class:`Networks` is a list of IP networks with IPv4-mapped IPv6 addresses
treated as the IPv4 address they carry (Postfix writes clients either way).
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

__all__ = ["DomainSet", "Networks", "normalize_domain", "read_address"]


def normalize_domain(name: str) -> str:
    """*name* lower-cased, surrounding space and one trailing root dot removed."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


class DomainSet:
    """Domains matched case-insensitively, a trailing dot ignored.

    ``example.com`` matches that domain only; ``.example.com`` matches its
    subdomains only (Postfix's parent-domain notation, e.g. ``parent_domain_matches_subdomains``
    off). Write both for both. Empty entries and ``#`` comments are skipped.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        exact: set[str] = set()
        parents: set[str] = set()
        for entry in entries:
            entry = normalize_domain(entry)
            if not entry or entry.startswith("#"):
                continue
            if entry.startswith("."):
                parents.add(entry)
            else:
                exact.add(entry)
        self.exact, self.parents = frozenset(exact), frozenset(parents)

    def __contains__(self, domain: str) -> bool:
        domain = domain.lower()
        if domain in self.exact:
            return True
        if domain.endswith("."):
            domain = domain[:-1]
            if domain in self.exact:
                return True
        if self.parents:
            dot = domain.find(".")
            while dot >= 0:
                if domain[dot:] in self.parents:
                    return True
                dot = domain.find(".", dot + 1)
        return False

    def __len__(self) -> int:
        return len(self.exact) + len(self.parents)

    def __bool__(self) -> bool:
        return bool(self.exact or self.parents)

    def __iter__(self):
        """The entries, exact domains first (sorted), then ``.parent`` entries."""
        return iter([*sorted(self.exact), *sorted(self.parents)])


_V4_MAPPED = 0xFFFF << 32  # ::ffff:0:0/96 (RFC 4291 2.5.5.2)


_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def read_address(text: str) -> tuple[str, bytes]:
    """A client address as (its text, its bytes): an IPv4-mapped IPv6 address as IPv4,
    the text as ``str(ipaddress.ip_address(...))`` writes it (RFC 5952 for IPv6).

    inet_pton(3) and inet_ntop(3) read and write the usual forms (~1 µs); ipaddress the rest
    (a scope id, an IPv6 form that inet_ntop writes with a dotted quad). The test suite checks
    both against ipaddress on random addresses.

    :raises ValueError: *text* is not an IP address.
    """
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
        return socket.inet_ntop(socket.AF_INET, packed), packed
    except (OSError, TypeError, ValueError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, TypeError, ValueError):
        packed = b""
    if packed[:12] == _MAPPED_PREFIX:
        packed = packed[12:]
        return socket.inet_ntop(socket.AF_INET, packed), packed
    if packed:
        written = socket.inet_ntop(socket.AF_INET6, packed)
        if "." not in written:
            return written, packed
    address = ipaddress.ip_address(text)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), address.packed


def _packed(family: int, address: str) -> int | None:
    """*address* as an integer when inet_pton(3) reads it in *family*, else None."""
    try:
        return int.from_bytes(socket.inet_pton(family, address), "big")
    except (OSError, TypeError, ValueError):
        return None


class Networks:
    """IP networks; ``address in networks`` for a client address string.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is in the set when either
    its IPv4 form or the IPv6 form is; an IPv4 address likewise matches
    ``::ffff:a.b.c.d/...`` entries. An unparsable address is in no set.

    :param entries: networks or addresses (``192.0.2.0/24``, ``::1``); host bits
        allowed.
    :raises ValueError: an entry is not an IP network.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: tuple[Any, ...] = tuple(ipaddress.ip_network(e, strict=False) for e in entries)
        # (address as an int, netmask as an int) per family: a policy request tests its
        # client against two lists, and ipaddress objects cost ~10 µs a test
        self._v4 = [(int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 4]
        self._v6 = [(int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 6]

    def __contains__(self, address: str) -> bool:
        if not self.networks:
            return False
        # The forms inet_pton reads, ipaddress reads alike; the others (a scope id) go to it.
        v4 = _packed(socket.AF_INET, address)
        if v4 is not None:
            return self._has(self._v4, v4) or self._has(self._v6, _V4_MAPPED | v4)
        v6 = _packed(socket.AF_INET6, address)
        if v6 is not None:
            return self._has(self._v6, v6) or (v6 >> 32 == _V4_MAPPED >> 32 and self._has(self._v4, v6 & 0xFFFFFFFF))
        return self._contains_parsed(address)

    @staticmethod
    def _has(networks: list[tuple[int, int]], value: int) -> bool:
        return any(value & mask == net for net, mask in networks)

    def _contains_parsed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        candidates: list[Any] = [ip]
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        elif ip.version == 4:
            candidates.append(ipaddress.IPv6Address("::ffff:" + str(ip)))
        return any(a in net for a in candidates for net in self.networks if a.version == net.version)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __len__(self) -> int:
        return len(self.networks)
