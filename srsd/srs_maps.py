"""Postfix's two SRS lookup maps, answered: the one place a forward or reverse is decided.

* ``forward`` (``sender_canonical_maps``): the :class:`~srsd.rewrite.Rewriter`'s SRS
  decision, then, with ``[spf] aware``, :class:`~srsd.spf_aware.SPFAwareForward` may
  keep the sender after all (not found); a rewritten sender whose SRS local part is too
  long leaves with its short alias address instead, once the alias store holds it;
* ``reverse`` (``recipient_canonical_maps``): the Rewriter's decision; an alias address
  that verifies is looked up in the alias store.

The alias store (:mod:`srsd.alias_store`) is the only part here that can fail: a store
that is down, slow or overloaded makes the lookup a temporary failure (TEMP: Postfix
defers), never a wrong found or not found. At the daily cap, or on a key clash, the long
form goes out: it reverses without the store.

Every answer is counted and, when an admin would ask about it (a rewrite, a reversal,
an SPF-aware keep, a refused SRS address, an unknown alias), logged by
:mod:`srsd.lookup_outcomes`; new aliases and store failures (at most one line per
:data:`WARN_INTERVAL` seconds) are logged here. One :class:`SRSMaps` per configuration: a reload builds a new
one. The wire adapters reach it through :meth:`srsd.service.Daemon.lookup`.
"""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from srsd import metrics
from srsd.alias_store import CLASH, FULL, STORED, DeferredStore
from srsd.lookup_outcomes import REASONS, SPF_KEPT, LookupOutcomes, reason_of
from srsd.rewrite import ALIAS, FOUND, NOTFOUND, TEMP, Answer, Rewriter
from srsd.spf import SPFResult
from srsd.spf_aware import SPFAwareForward
from srsd.srs_alias import Alias

__all__ = ["SRSMaps", "MAPS", "WARN_INTERVAL"]

log = Logger(namespace="srsd")

#: the map names the lookup endpoints serve
MAPS = ("forward", "reverse")
#: seconds between two log lines about the same kind of store trouble
WARN_INTERVAL = 10.0
STORE_UNAVAILABLE = "alias store unavailable"


class _Throttle:
    """At most one log line per *interval* seconds for each kind; the rest are counted."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None to stay quiet, else how many lines of this kind were skipped since the last."""
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._skipped.pop(kind, 0)


class SRSMaps:
    """The forward and reverse maps of one configuration.

    :param rewriter: the SRS decisions.
    :param spf_aware: SPF-aware keeping of senders, or None.
    :param store: the alias store for long senders, or None (``store.backend = "none"``:
        long senders keep their long SRS address, alias addresses are not found).
    :param debug: log every lookup.
    """

    def __init__(
        self,
        rewriter: Rewriter,
        spf_aware: SPFAwareForward | None = None,
        *,
        store: DeferredStore | None = None,
        debug: bool = False,
    ) -> None:
        self.rewriter = rewriter
        self.spf_aware = spf_aware
        self.store = store
        self.debug = debug
        self._throttle = _Throttle(WARN_INTERVAL)
        self.outcomes = LookupOutcomes(debug=debug)

    def lookup(self, map_name: str, key: str) -> Answer | defer.Deferred:
        """Answer one lookup of map ``forward`` or ``reverse``: an Answer, or a Deferred
        firing with one (SPF-aware forward: within ``spf.decision_budget`` seconds; the
        alias store: within ``store.timeout``)."""
        now = time.time()
        if map_name == "forward":
            answer = self.rewriter.forward(key, now)
            if answer.status == FOUND and self.spf_aware is not None:
                return self._spf_aware(key, answer, now)
            return self._shortened(key, answer, now)
        answer = self.rewriter.reverse(key, now)
        if answer.status == ALIAS:
            return self._recall(key, answer.text, now)
        return self._logged(map_name, key, answer)

    def _logged(self, map_name: str, key: str, answer: Answer, detail: str = "") -> Answer:
        return self.outcomes.record(map_name, key, answer, detail)

    def cacheable(self, map_name: str, answer: Answer) -> tuple[str, str] | None:
        """When *answer*, just returned at once by :meth:`lookup` of *map_name*, is the
        answer to the same key until 00:00 UTC or a reload (srsd.answer_cache): the
        (map, outcome) a replay of it counts as; else None. The Rewriter's answers are
        functions of (key, configuration, day number), and each is logged at most once
        a key and day anyway (:mod:`srsd.lookup_outcomes`). Not cached: answers that
        rest on SPF (its data has a TTL) or on the alias store (those come as
        Deferreds, never cached), TEMP, anything at ``log.level = "debug"``."""
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

    # -- forward ---------------------------------------------------------------------

    def _spf_aware(self, sender: str, rewritten: Answer, now: float) -> Answer | defer.Deferred:
        aware = self.spf_aware
        results = aware.results(sender)
        if isinstance(results, defer.Deferred):
            return results.addCallback(self._spf_decided, sender, rewritten, now)
        return self._spf_decided(results, sender, rewritten, now)

    def _spf_decided(
        self, results: list[SPFResult], sender: str, rewritten: Answer, now: float
    ) -> Answer | defer.Deferred:
        keep, summary = self.spf_aware.keep_sender(results)
        metrics.count_spf("aware", results)
        if keep:
            return self._logged("forward", sender, Answer(NOTFOUND, SPF_KEPT), summary)
        # The line names the address that leaves: the alias, if the SRS address was too long.
        return self._shortened(sender, rewritten, now, summary)

    def _shortened(self, sender: str, answer: Answer, now: float, detail: str = "") -> Answer | defer.Deferred:
        """*answer*, or for a too long SRS address its alias once the store holds it."""
        alias = None
        if answer.status == FOUND and self.store is not None:
            alias = self.rewriter.aliases.shorten(answer.text, now)
        if alias is None:
            return self._logged("forward", sender, answer, detail)
        d = self.store.put(alias, now)
        return d.addCallbacks(
            self._stored,
            self._store_failed,
            callbackArgs=(sender, answer, alias, detail),
            errbackArgs=("forward", sender),
        )

    def _stored(self, result: str, sender: str, long_form: Answer, alias: Alias, detail: str = "") -> Answer:
        if result == STORED:
            log.info(
                "forward {sender} -> {alias}: new alias (SRS address too long)",
                sender=sender,
                alias=alias.address,
            )
        elif result in (FULL, CLASH):
            reason = (
                "store.max_new_per_day new aliases today already"
                if result == FULL
                else f"alias key {alias.key} holds another address"
            )
            self._warn(
                result,
                "forward {sender}: leaves with its long SRS address, no alias: {reason}",
                sender=sender,
                reason=reason,
            )
            return self._logged("forward", sender, long_form, detail)
        return self._logged("forward", sender, Answer(FOUND, alias.address), detail)

    # -- reverse ---------------------------------------------------------------------

    def _recall(self, address: str, key: str, now: float) -> Answer | defer.Deferred:
        if self.store is None:
            return self._logged("reverse", address, Answer(NOTFOUND, "alias address, but no alias store configured"))
        d = self.store.get(key, now)
        return d.addCallbacks(
            self._recalled, self._store_failed, callbackArgs=(address, key), errbackArgs=("reverse", address)
        )

    def _recalled(self, target: str | None, address: str, key: str) -> Answer:
        if target is None:
            # Expired, evicted or the store was wiped: as good as a stale address.
            return self._logged("reverse", address, Answer(NOTFOUND, f"alias {key} is not in the alias store"))
        return self._logged("reverse", address, Answer(FOUND, target))

    # -- store trouble -----------------------------------------------------------------

    def _store_failed(self, failure: Failure, map_name: str, key: str) -> Answer:
        error = failure.getErrorMessage() or failure.type.__name__
        self.outcomes.counts[map_name, "temp"] += 1  # logged below, throttled
        self._warn(
            "failed",
            "{map} {key!r}: temporary failure, the alias store did not answer: {error}",
            map=map_name,
            key=key,
            error=error,
        )
        return Answer(TEMP, f"{STORE_UNAVAILABLE}: {error}")

    def _warn(self, kind: str, text: str, **fields: object) -> None:
        skipped = self._throttle.allow(kind)
        if skipped is None:
            return
        if skipped:
            text += " ({skipped} more like it not logged)"
        log.warn(text, skipped=skipped, **fields)
