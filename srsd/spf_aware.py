"""SPF-aware rewriting: keep a sender whose SPF already authorizes this host's egress.

A forwarded message keeps its envelope sender when SPF of that sender passes for
every address forwarded mail leaves from (``spf.egress_ips``): the receiver's SPF
check then passes and the message keeps its SPF alignment for DMARC. The check runs
on the :class:`~srsd.spf.SPFChecker`, which keeps results for the TTL of the DNS
data they rest on. See ``docs/design.md``.
"""

from __future__ import annotations

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
    SRS is always safe, a wrongly kept sender is not. The checker keeps results
    (per domain, or per sender when they depend on the local part) for the TTL of
    the DNS data they rest on (:mod:`srsd.spf_cache`).
    """

    def __init__(
        self,
        checker: SPFChecker,
        egress_ips: Iterable[str],
        skip_results: Iterable[str] = ("pass",),
        *,
        budget: float = 2.0,
        helo: str = "",
    ) -> None:
        self.checker = checker
        self.egress_ips = tuple(egress_ips)
        self.skip_results = frozenset(skip_results)
        self.budget = budget
        self.helo = helo

    def results(self, sender: str) -> list[SPFResult] | defer.Deferred:
        """SPF results of *sender* for every egress IP: a list when the checker has them
        all kept, else a Deferred firing with the list within the budget."""
        out: list[Any] = [self.checker.cached(ip, sender, self.helo) for ip in self.egress_ips]
        if all(r is not None for r in out):
            return out
        return defer.gatherResults(
            [
                defer.succeed(r) if r is not None else self.checker.check(ip, sender, self.helo, self.budget)
                for ip, r in zip(self.egress_ips, out, strict=True)
            ]
        )

    def keep_sender(self, results: list[SPFResult]) -> tuple[bool, str]:
        """(True, reason) when every result is one that skips rewriting."""
        summary = ", ".join(f"{ip}: {r.result}" for ip, r in zip(self.egress_ips, results, strict=True))
        return all(r.result in self.skip_results for r in results), summary
