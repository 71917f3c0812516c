"""Postfix's two SRS lookup maps, answered: the one place a forward or reverse is decided.

* ``forward`` (``sender_canonical_maps``): the :class:`~srsd.rewrite.Rewriter`'s SRS
  decision, then, with ``[spf] aware``, :class:`~srsd.spf_aware.SPFAwareForward` may
  keep the sender after all (not found);
* ``reverse`` (``recipient_canonical_maps``): the Rewriter's decision.

Each decision an admin asks about is logged here too: SPF-aware keeps and rewrites,
refused SRS addresses at our domain (forged, stale, mangled); every lookup at
``log.level = "debug"``. One :class:`SRSMaps` per configuration: a reload builds a
new one. The wire adapters reach it through :meth:`srsd.service.Daemon.lookup`.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from srsd.rewrite import FOUND, NOTFOUND, REVERSE_NOT_OURS, TEMP, Answer, Rewriter
from srsd.spf import SPFResult
from srsd.spf_aware import SPFAwareForward

__all__ = ["SRSMaps", "MAPS"]

log = Logger(namespace="srsd")

#: the map names the lookup endpoints serve
MAPS = ("forward", "reverse")
_KEPT = "SPF of the sender authorizes our egress IPs"


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

    def lookup(self, map_name: str, key: str) -> Answer | defer.Deferred:
        """Answer one lookup of map ``forward`` or ``reverse``: an Answer, or (SPF-aware
        forward) a Deferred firing with one within ``spf.decision_budget`` seconds."""
        if map_name == "forward":
            answer = self.rewriter.forward(key)
            if answer.status == FOUND and self.spf_aware is not None:
                return self._spf_aware(key, answer)
        else:
            answer = self.rewriter.reverse(key)
        if self.debug:
            log.debug("{map} {key!r}: {status} {text}", map=map_name, key=key, status=answer.status, text=answer.text)
        elif answer.status == NOTFOUND and map_name == "reverse" and answer.text not in REVERSE_NOT_OURS:
            # An SRS address at our domain that does not verify: forged, stale or
            # mangled. Worth an admin's eye; it is answered not-found.
            log.info("reverse {key!r} refused: {reason}", key=key, reason=answer.text)
        return answer

    def cacheable(self, map_name: str, answer: Answer) -> bool:
        """Whether *answer*, just returned at once by :meth:`lookup` of *map_name*, is
        the answer to the same key until 00:00 UTC or a reload (srsd.answer_cache):
        the Rewriter's answers are (key, configuration, day number). Not those that
        rest on SPF (its data has a TTL), TEMP, nor those logged on every lookup
        (refused SRS addresses, everything at ``log.level = "debug"``)."""
        if self.debug or answer.status == TEMP:
            return False
        if map_name == "forward":
            return self.spf_aware is None or (answer.status == NOTFOUND and answer.text != _KEPT)
        return answer.status == FOUND or answer.text in REVERSE_NOT_OURS

    def _spf_aware(self, sender: str, rewritten: Answer) -> Answer | defer.Deferred:
        aware = self.spf_aware
        results = aware.results(sender)
        if isinstance(results, defer.Deferred):
            return results.addCallback(self._spf_decided, sender, rewritten)
        return self._spf_decided(results, sender, rewritten)

    def _spf_decided(self, results: list[SPFResult], sender: str, rewritten: Answer) -> Answer:
        keep, summary = self.spf_aware.keep_sender(results)
        if keep:
            log.info(
                "forward {sender}: kept, its SPF authorizes our egress ({summary})", sender=sender, summary=summary
            )
            return Answer(NOTFOUND, _KEPT)
        log.info("forward {sender} -> {srs}: rewritten ({summary})", sender=sender, srs=rewritten.text, summary=summary)
        return rewritten
