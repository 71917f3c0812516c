"""check_host() results kept for the TTL of the DNS data they rest on.

An SPF result (RFC 7208 4) depends on the client IP, the domain checked, the HELO name
(``%{h}``) and, only when a record the check read uses a local-part macro (``%{s}``,
``%{l}``, RFC 7208 7.3), on the local part too. So a result is kept per (ip, HELO name,
domain) and reused for every sender of that domain, or per whole sender when it is
sender-specific; it lives as long as the shortest TTL of the answers it used (at most
``max_ttl``). A temperror is never kept (the next message asks again), nor a result whose
data had no TTL (an NXDOMAIN or no DNS at all).

A result reused for another sender of the domain gets that sender in its Received-SPF
text (``envelope-from=``, RFC 7208 9.1); the rest of the text names only the domain,
the IP and the HELO name, which are the key.

Bounded: at most ``max_entries`` results; the oldest go first.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from srsd.received_spf import quote_value

if TYPE_CHECKING:  # srsd.spf uses this module
    from srsd.spf import SPFResult

__all__ = ["SPFResultCache"]

# The key of a domain whose result is sender-specific: look up the whole sender instead.
_PER_SENDER = object()


def _domain(sender: str) -> str:
    return sender.rpartition("@")[2].lower()  # DNS names compare case-insensitively


class SPFResultCache:
    """SPF results by (ip, HELO name, domain), or (ip, HELO name, sender).

    :param max_entries: results kept (each domain-wide result and each sender-specific
        one counts); 0 keeps none.
    :param max_ttl: seconds a result lives at most, whatever its DNS TTL.
    """

    def __init__(self, max_entries: int = 50000, max_ttl: float = 3600.0) -> None:
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        # key -> (expires (monotonic seconds), the sender it was checked for, result or _PER_SENDER)
        self._entries: dict[tuple[str, str, str], tuple[float, str, Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def _entry(self, key: tuple[str, str, str], now: float) -> tuple[float, str, Any] | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] <= now:
            del self._entries[key]
            return None
        return entry

    def get(self, ip: str, sender: str, helo: str, now: float) -> SPFResult | None:
        """The result of check_host(*ip*, *sender*'s domain, *sender*) under HELO *helo*
        if one is kept (*now*: ``time.monotonic()``), with *sender* in its header."""
        entry = self._entry((ip, helo, _domain(sender)), now)
        if entry is None:
            return None
        if entry[2] is _PER_SENDER:
            entry = self._entry((ip, helo, sender), now)
            if entry is None:
                return None
        checked_for, result = entry[1], entry[2]
        if checked_for == sender or not result.header:
            return result
        old = f"envelope-from={quote_value(checked_for)};"
        new = f"envelope-from={quote_value(sender)};"
        return replace(result, header=result.header.replace(old, new, 1))

    def put(self, ip: str, sender: str, helo: str, result: SPFResult, now: float) -> None:
        """Keep *result* of checking *sender* from *ip* under HELO *helo*, if it may be kept."""
        if result.result == "temperror" or not result.ttl or self.max_entries <= 0:
            return
        expires = now + min(result.ttl, self.max_ttl)
        domain = _domain(sender)
        if result.sender_specific:
            self._add((ip, helo, domain), (expires, sender, _PER_SENDER))
            self._add((ip, helo, sender), (expires, sender, result))
        else:
            self._add((ip, helo, domain), (expires, sender, result))

    def _add(self, key: tuple[str, str, str], entry: tuple[float, str, Any]) -> None:
        self._entries.pop(key, None)  # re-inserted at the young end
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = entry
