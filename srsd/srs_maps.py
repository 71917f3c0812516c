"""Postfix's two SRS lookup maps, answered: the one place a forward or reverse is decided.

* ``forward`` (``sender_canonical_maps``): the :class:`~srsd.rewrite.Rewriter`'s SRS
  decision, then, with ``[spf] aware``, :class:`~srsd.spf_aware.SPFAwareForward` may
  keep the sender after all (not found);
* ``reverse`` (``recipient_canonical_maps``): the Rewriter's decision.

Every answer is counted and, when an admin would ask about it (a rewrite, a reversal,
an SPF-aware keep, a refused SRS address), logged by :mod:`srsd.lookup_outcomes`. One
:class:`SRSMaps` per configuration: a reload builds a new one. The wire adapters reach
it through :meth:`srsd.service.Daemon.lookup`.
"""

from __future__ import annotations

from twisted.internet import defer

from srsd import metrics
from srsd.lookup_outcomes import REASONS, SPF_KEPT, LookupOutcomes, reason_of
from srsd.rewrite import FOUND, NOTFOUND, TEMP, Answer, Rewriter
from srsd.spf import SPFResult
from srsd.spf_aware import SPFAwareForward

__all__ = ["SRSMaps", "MAPS"]

#: the map names the lookup endpoints serve
MAPS = ("forward", "reverse")


class SRSMaps:
    """The forward and reverse maps of one configuration.

    :param rewriter: the SRS decisions.
    :param spf_aware: SPF-aware keeping of senders, or None.
    :param debug: log every lookup.
    """

    def __init__(self, rewriter: Rewriter, spf_aware: SPFAwareForward | None = None, *, debug: bool = False) -> None:
        self.rewriter = rewriter
        self.spf_aware = spf_aware
        self.debug = debug
        self.outcomes = LookupOutcomes(debug=debug)

    def lookup(self, map_name: str, key: str) -> Answer | defer.Deferred:
        """Answer one lookup of map ``forward`` or ``reverse``: an Answer, or (SPF-aware
        forward) a Deferred firing with one within ``spf.decision_budget`` seconds."""
        if map_name == "forward":
            answer = self.rewriter.forward(key)
            if answer.status == FOUND and self.spf_aware is not None:
                return self._spf_aware(key, answer)
        else:
            answer = self.rewriter.reverse(key)
        return self.outcomes.record(map_name, key, answer)

    def cacheable(self, map_name: str, answer: Answer) -> tuple[str, str] | None:
        """When *answer*, just returned at once by :meth:`lookup` of *map_name*, is the
        answer to the same key until 00:00 UTC or a reload (srsd.answer_cache): the
        (map, outcome) a replay of it counts as; else None. The Rewriter's answers are
        functions of (key, configuration, day number), and each is logged at most once
        a key and day anyway (:mod:`srsd.lookup_outcomes`). Not cached: answers that
        rest on SPF (its data has a TTL), TEMP, anything at ``log.level = "debug"``
        (every lookup logged)."""
        status, text = answer
        if self.debug or status == TEMP:
            return None
        if status == FOUND:
            if map_name == "forward" and self.spf_aware is not None:
                return None
            return map_name, "found"
        if text == SPF_KEPT:
            return None
        return map_name, REASONS.get(text) or reason_of(text)

    def _spf_aware(self, sender: str, rewritten: Answer) -> Answer | defer.Deferred:
        aware = self.spf_aware
        results = aware.results(sender)
        if isinstance(results, defer.Deferred):
            return results.addCallback(self._spf_decided, sender, rewritten)
        return self._spf_decided(results, sender, rewritten)

    def _spf_decided(self, results: list[SPFResult], sender: str, rewritten: Answer) -> Answer:
        keep, summary = self.spf_aware.keep_sender(results)
        metrics.count_spf("aware", results)
        return self.outcomes.record("forward", sender, Answer(NOTFOUND, SPF_KEPT) if keep else rewritten, summary)
