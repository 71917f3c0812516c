"""A bounded thread pool for the blocking work srsd cannot do on the reactor:
DKIM/ARC crypto and key lookups, DMARC's DNS, the alias store.

Bounded twice: at most ``threads`` jobs run, and at most ``4 * threads`` are in
flight (running or queued); beyond that a job fails at once with
:class:`PoolOverloaded` instead of queueing without bound. A job counts until its
thread is done with it, even after its caller stopped waiting (a timeout), so a
slow DNS server cannot pile work up behind the callers' backs.

Its own threads on a ``queue.SimpleQueue``, not Twisted's ``deferToThreadPool``: that
costs ~140 µs of CPU for an empty job here (its context copy, worker team and locks,
a timeout Deferred, and two ``callFromThread`` wake-ups a job, one for the result
and one for the count), twice per forwarded message; this pool wakes the reactor
once a job (docs/performance.md, "DKIM milter").
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["BoundedPool", "PoolOverloaded"]


class PoolOverloaded(Exception):
    """Every slot is taken; the job was not queued."""


class _Job:
    """One call on its way: the caller's Deferred, its timeout, whether it was given up."""

    __slots__ = ("f", "args", "kwargs", "deferred", "timeout", "abandoned")

    def __init__(self, f: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self.f, self.args, self.kwargs = f, args, kwargs
        self.deferred: defer.Deferred = defer.Deferred(self._cancel)
        self.timeout: Any = None
        self.abandoned = False

    def _cancel(self, _d: defer.Deferred) -> None:
        # the caller cancelled: skip the work if it has not started; Deferred fails it
        self.abandoned = True
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()


_STOP = None  # queued once per thread that is to exit


class BoundedPool:
    """Run blocking callables off the reactor thread, with a timeout each.

    :param reactor: the reactor (results come back on its thread, through
        ``callFromThread``; timeouts are its ``callLater``).
    :param threads: jobs running at once (threads start when work needs them).
    :param name: the threads' name (seen in ``ps -L``, py-spy).
    """

    def __init__(self, reactor: Any, threads: int, name: str) -> None:
        self.reactor = reactor
        self.name = name
        self.pending = 0  # jobs queued or running (reactor thread only)
        self._max = threads
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._trigger: Any = reactor.addSystemEventTrigger("during", "shutdown", self._stop_threads)

    @property
    def max_pending(self) -> int:
        return 4 * self._max

    def resize(self, threads: int) -> None:
        """Run at most *threads* jobs at once from now on (running jobs finish)."""
        self._threads = [t for t in self._threads if t.is_alive()]
        for _ in range(len(self._threads) - threads):
            self._queue.put(_STOP)
            self._threads.pop()  # one of them exits after its job; counted gone now
        self._max = threads

    def stop(self) -> None:
        """Stop the threads (waits for running jobs; call from a thread, or at exit)."""
        if self._trigger is not None:
            self.reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        self._stop_threads()

    def _stop_threads(self) -> None:
        self._stopped = True
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)
        for thread in threads:
            thread.join()

    def run(self, timeout: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """``f(*args, **kwargs)`` on a pool thread.

        :param timeout: seconds the caller waits; past it the Deferred fails with
            ``defer.TimeoutError`` (and the job is skipped if it has not started).
        :returns: a Deferred with f's result; it fails with :class:`PoolOverloaded`
            (at once), ``defer.TimeoutError``, or whatever f raised. Cancelling it
            skips the job if it has not started.
        """
        if self.pending >= self.max_pending:
            return defer.fail(PoolOverloaded(f"{self.pending} jobs in progress"))
        if self._stopped:
            return defer.fail(PoolOverloaded("the pool is stopped"))
        self.pending += 1
        job = _Job(f, args, kwargs)
        job.timeout = self.reactor.callLater(max(0.0, timeout), self._timed_out, job, timeout)
        if len(self._threads) < min(self.pending, self._max):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._queue.put(job)
        return job.deferred

    def run_until(self, deadline: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """:meth:`run` with an absolute *deadline* (``time.monotonic()`` seconds)."""
        return self.run(deadline - time.monotonic(), f, *args, **kwargs)

    def _timed_out(self, job: _Job, seconds: float) -> None:
        job.abandoned = True
        if not job.deferred.called:
            job.deferred.errback(defer.TimeoutError(f"took more than {seconds:g} s"))

    def _work(self) -> None:
        """A worker thread: run jobs until told to stop; hand each outcome to the reactor."""
        while (job := self._queue.get()) is not _STOP:
            if job.abandoned:
                result: Any = None
            else:
                try:
                    result = job.f(*job.args, **job.kwargs)
                except BaseException:
                    result = Failure()
            self.reactor.callFromThread(self._finished, job, result)

    def _finished(self, job: _Job, result: Any) -> None:
        """Reactor thread: the job is done (counted), its caller told unless it gave up."""
        self.pending -= 1
        if job.timeout.active():
            job.timeout.cancel()
        if job.deferred.called:
            return  # timed out or cancelled: nobody is waiting
        if isinstance(result, Failure):
            job.deferred.errback(result)
        else:
            job.deferred.callback(result)
