"""Key rotation: a ``next`` key starts signing once its DNS record is published.

The milter's handler (:class:`srsd.mailauth.handler.MailAuth`) keeps one
:class:`NextKeyWatcher`. While the signing table has ``next`` keys not seen yet, it
looks each one's record up (now, after every reload, then every
``dkim.rotation_check_interval`` seconds) and reports the keys whose record is there
and matches the private key (:func:`srsd.mailauth.key_lookup.published_key_problem`).
The handler then signs with them in place of the active keys of the same domain and
key type (:mod:`srsd.mailauth.signing_table`). See docs/dkim.md "Key rotation".

The lookups run on the handler's thread pool, never on the reactor thread, with a
resolver that has no cache: a "no such name" answer cached before the record was
published would otherwise hide it for the zone's negative TTL (RFC 2308).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from srsd.dns import Resolver
from srsd.mailauth.key_lookup import DKIMTemporaryError, published_key_problem
from srsd.mailauth.signing_table import KeyId, TableKey
from srsd.workpool import BoundedPool

__all__ = ["NextKeyWatcher"]

log = Logger(namespace="srsd.mailauth")


class NextKeyWatcher:
    """Checks the DNS records of the keys *pending()* returns until none is left.

    :param reactor: the reactor (its clock schedules the checks).
    :param pool: where the blocking lookups run.
    :param resolver: an uncached :class:`~srsd.dns.Resolver` with srsd's nameservers.
    :param pending: the ``next`` keys not seen published yet (read before every round).
    :param on_visible: called on the reactor thread with each key found published.
    :param timeout: seconds one lookup may take.
    """

    def __init__(
        self,
        reactor: Any,
        pool: BoundedPool,
        resolver: Resolver,
        pending: Callable[[], Sequence[TableKey]],
        on_visible: Callable[[TableKey], None],
        timeout: float,
    ) -> None:
        self.reactor = reactor
        self.pool = pool
        self.resolver = resolver
        self.pending = pending
        self.on_visible = on_visible
        self.timeout = timeout
        self._loop: task.LoopingCall | None = None
        self._reported: dict[KeyId, str] = {}  # the last problem logged per key
        #: the latest round of lookups: fires (never fails) once its results are applied
        self.last_round: defer.Deferred | None = None

    def watch(self, interval: float) -> None:
        """Check now, then every *interval* seconds while keys are pending (a reload
        calls this again: the next round starts at once)."""
        self.stop()
        self._reported.clear()
        if not self.pending():
            return
        self._loop = task.LoopingCall(self._round)
        self._loop.clock = self.reactor
        self._loop.start(interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _round(self) -> defer.Deferred | None:
        keys = list(self.pending())
        if not keys:
            self.stop()
            return None
        checks = []
        for key in keys:
            d = self.pool.run(self.timeout + 1, published_key_problem, self.resolver, key.record_name, key.key,
                              self.timeout)  # fmt: skip
            d.addCallbacks(self._checked, self._failed, callbackArgs=(key,), errbackArgs=(key,))
            checks.append(d)
        # The loop waits for this round before scheduling the next; it never fails.
        self.last_round = defer.DeferredList(checks, consumeErrors=True)
        return self.last_round

    def _checked(self, problem: str | None, key: TableKey) -> None:
        if problem is None:
            self._reported.pop(key.id, None)
            self.on_visible(key)
            return
        level = log.info if problem == "no TXT record" else log.warn
        self._report(key, problem, level)

    def _failed(self, failure: Any, key: TableKey) -> None:
        if failure.check(DKIMTemporaryError, defer.TimeoutError):
            self._report(key, f"could not check: {failure.getErrorMessage()}", log.info)
        else:  # a pool overload, a bug: try again next round
            self._report(key, f"could not check: {failure.type.__name__}: {failure.getErrorMessage()}", log.warn)

    def _report(self, key: TableKey, problem: str, level: Callable[..., None]) -> None:
        if self._reported.get(key.id) == problem:
            log.debug("{where}: {name}: still {problem}", where=key.where, name=key.record_name, problem=problem)
            return
        self._reported[key.id] = problem
        level(
            "{where}: next key {name} not usable yet ({problem}); not signing with it until it is published "
            "and matches (`srsd dns-records` prints the record)",
            where=key.where,
            name=key.record_name,
            problem=problem,
        )
