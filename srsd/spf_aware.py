"""SPF-aware rewriting: keep a sender whose SPF already authorizes this host's egress.

A forwarded message keeps its envelope sender when SPF of that sender passes for
every address forwarded mail leaves from (``spf.egress_ips``): the receiver's SPF
check then passes and the message keeps its SPF alignment for DMARC. The check runs
on the :class:`~srsd.spf.SPFChecker`; results are cached for the TTL of the DNS
data they rest on. See ``docs/design.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer

from srsd.spf import SPFChecker, SPFResult

__all__ = ["SPFAwareForward"]


class SPFAwareForward:
    """SPF-aware rewriting: keep a sender whose SPF already authorizes us.

    For a forward lookup of ``user@D`` that would be rewritten, check_host(ip, D,
    sender) runs for every egress IP; when each result is in *skip_results* the
    sender is kept (not-found), so the message keeps its SPF alignment for DMARC.
    Anything else, including a check that overruns *budget* seconds, rewrites:
    SRS is always safe, a wrongly kept sender is not. Results are cached per
    (domain, ip) for the TTL of the DNS data they rest on (at most *max_ttl*);
    a result that depends on the local part (%{s}, %{l}) per (sender, ip).
    """

    def __init__(
        self,
        checker: SPFChecker,
        egress_ips: Iterable[str],
        skip_results: Iterable[str] = ("pass",),
        *,
        budget: float = 2.0,
        helo: str = "",
        max_ttl: float = 3600.0,
        max_entries: int = 50000,
    ) -> None:
        self.checker = checker
        self.egress_ips = tuple(egress_ips)
        self.skip_results = frozenset(skip_results)
        self.budget = budget
        self.helo = helo
        self.max_ttl = max_ttl
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str], tuple[float, SPFResult]] = {}
        self._inflight: dict[tuple[str, str], defer.Deferred] = {}

    def _cached(self, key: tuple[str, str], now: float) -> SPFResult | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._cache[key]
            return None
        return entry[1]

    def _store(self, check: tuple[str, str], domain: str, result: SPFResult) -> SPFResult:
        self._inflight.pop(check, None)
        if result.result != "temperror" and result.ttl:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()  # crude but bounded; refills at DNS-cache speed
            key = check if result.sender_specific else (domain, check[1])
            self._cache[key] = (time.monotonic() + min(result.ttl, self.max_ttl), result)
        return result

    def results(self, sender: str) -> list[SPFResult] | defer.Deferred:
        """SPF results of *sender* for every egress IP: a list when all are cached,
        else a Deferred firing with the list within the budget."""
        lowered = sender.lower()
        domain = lowered.rpartition("@")[2]
        now = time.monotonic()
        out: list[Any] = []
        pending = False
        for ip in self.egress_ips:
            result = self._cached((domain, ip), now) or self._cached((lowered, ip), now)
            if result is None:
                pending = True
                check = (lowered, ip)
                inflight = self._inflight.get(check)
                if inflight is None:
                    inflight = self._inflight[check] = self.checker.check(ip, sender, self.helo, self.budget)
                    inflight.addCallback(lambda r, c=check, d=domain: self._store(c, d, r))
                # Each waiter gets its own copy of the shared result.
                result = defer.Deferred()
                inflight.addCallback(lambda r, d=result: (d.callback(r), r)[1])
            out.append(result)
        if not pending:
            return out
        return defer.gatherResults([r if isinstance(r, defer.Deferred) else defer.succeed(r) for r in out])

    def keep_sender(self, results: list[SPFResult]) -> tuple[bool, str]:
        """(True, reason) when every result is one that skips rewriting."""
        summary = ", ".join(f"{ip}: {r.result}" for ip, r in zip(self.egress_ips, results, strict=True))
        return all(r.result in self.skip_results for r in results), summary
