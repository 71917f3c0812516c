"""A bounded thread pool for the blocking work srsd cannot do on the reactor:
pyspf's synchronous SPF evaluation, DKIM/ARC crypto and key lookups.

Bounded twice: at most ``threads`` jobs run, and at most ``4 * threads`` are in
flight (running or queued); beyond that a job fails at once with
:class:`PoolOverloaded` instead of queueing without bound. A job counts until its
thread is done with it, even after its caller stopped waiting (a timeout), so a
slow DNS server cannot pile work up behind the callers' backs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

__all__ = ["BoundedPool", "PoolOverloaded"]


class PoolOverloaded(Exception):
    """Every slot is taken; the job was not queued."""


class BoundedPool:
    """Run blocking callables off the reactor thread, with a timeout each.

    :param reactor: the reactor (results come back on its thread).
    :param threads: jobs running at once.
    :param name: the threads' name (seen in ``ps -L``, py-spy).
    """

    def __init__(self, reactor: Any, threads: int, name: str) -> None:
        self.reactor = reactor
        self.pending = 0
        self.threadpool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self.threadpool.start()
        self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self.threadpool.stop)

    @property
    def max_pending(self) -> int:
        return 4 * self.threadpool.max

    def resize(self, threads: int) -> None:
        self.threadpool.adjustPoolsize(minthreads=0, maxthreads=threads)

    def stop(self) -> None:
        """Stop the threads (waits for running jobs; call from a thread, or at exit)."""
        self.reactor.removeSystemEventTrigger(self._trigger)
        self.threadpool.stop()

    def run(self, timeout: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """``f(*args, **kwargs)`` on a pool thread.

        :param timeout: seconds the caller waits; past it the Deferred fails with
            ``defer.TimeoutError`` (and the job is skipped if it has not started).
        :returns: a Deferred with f's result; it fails with :class:`PoolOverloaded`
            (at once), ``defer.TimeoutError``, or whatever f raised.
        """
        if self.pending >= self.max_pending:
            return defer.fail(PoolOverloaded(f"{self.pending} jobs in progress"))
        self.pending += 1
        abandoned = [False]
        d = threads.deferToThreadPool(self.reactor, self.threadpool, self._job, abandoned, f, args, kwargs)

        def timed_out(_value: Any, seconds: float) -> None:
            abandoned[0] = True
            raise defer.TimeoutError(f"took more than {seconds:g} s")

        d.addTimeout(max(0.0, timeout), self.reactor, onTimeoutCancel=timed_out)
        return d

    def run_until(self, deadline: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """:meth:`run` with an absolute *deadline* (``time.monotonic()`` seconds)."""
        return self.run(deadline - time.monotonic(), f, *args, **kwargs)

    def _job(self, abandoned: list[bool], f: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Worker-thread side: skip work whose caller gave up; count it done when done."""
        try:
            if abandoned[0]:
                return None
            return f(*args, **kwargs)
        finally:
            self.reactor.callFromThread(self._finished)

    def _finished(self) -> None:
        self.pending -= 1
