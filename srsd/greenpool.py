"""Blocking-style code on the reactor thread: each job a greenlet that parks on Deferreds.

pyspf evaluates a record by calling its DNS hook and waiting for the answer. On a thread
pool every check paid for its thread hand-offs (the GIL passing between the reactor and
the workers, ~40 futex calls a check) and one core bounded them all. Run as a greenlet,
a check calls :func:`wait` on the Deferred of an asynchronous lookup: an answer already
cached comes back at once, otherwise the greenlet switches back to the reactor, which
goes on serving, and is switched into again when the answer arrives. Nothing runs
concurrently with the reactor, so no lock is needed, and a job must not block on I/O
other than through :func:`wait`.

Every switch into a job and every Deferred the pool fires happen on the thread's root
greenlet (the reactor's), never inside a job.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import greenlet
from twisted.internet import defer
from twisted.python.failure import Failure

from srsd.workpool import PoolOverloaded

__all__ = ["GreenPool", "wait"]


class _Job(greenlet.greenlet):
    """One job's greenlet, with the pool that resumes it."""

    def __init__(self, pool: GreenPool, run: Callable[[], Any], parent: greenlet.greenlet) -> None:
        super().__init__(run, parent)
        self.pool = pool


_PARKED = object()  # what a job switching back to the reactor hands it


def wait(d: defer.Deferred) -> Any:
    """The result of *d*, from inside a :class:`GreenPool` job: at once if *d* has fired,
    else once it fires (the reactor serves others meanwhile).

    :raises RuntimeError: called outside a job.
    :raises Exception: what *d* failed with.
    """
    job = greenlet.getcurrent()
    if not isinstance(job, _Job):
        raise RuntimeError("srsd.greenpool.wait() outside a GreenPool job")
    if d.called and not d.paused and not isinstance(d.result, defer.Deferred):
        # Fired already (an answer from a cache): its result, without a callback round.
        result = d.result
        if isinstance(result, Failure):
            d.addErrback(lambda _f: None)  # handled here: no "Unhandled error in Deferred"
            result.raiseException()
        return result
    out: list[Any] = []
    parked = [False]

    def fired(result: Any) -> None:
        if parked[0]:
            job.pool._resume(job, result)
        else:
            out.append(result)

    d.addBoth(fired)
    if out:
        result = out[0]
    else:
        parked[0] = True
        result = job.parent.switch(_PARKED)
    if isinstance(result, Failure):
        result.raiseException()
    return result


class GreenPool:
    """:class:`~srsd.workpool.BoundedPool`'s contract with greenlets instead of threads.

    :param reactor: for the timeouts (``IReactorTime``).
    :param size: jobs running at once; up to ``4 * size`` may wait for a turn, more are
        refused (:class:`~srsd.workpool.PoolOverloaded`).
    """

    def __init__(self, reactor: Any, size: int) -> None:
        self.reactor = reactor
        self.size = size
        self.pending = 0  # running + waiting
        self.running = 0
        self._queue: collections.deque[tuple[defer.Deferred, Callable[[], Any]]] = collections.deque()

    @property
    def max_pending(self) -> int:
        return 4 * self.size

    def run(self, timeout: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """``f(*args, **kwargs)`` as a job (f may call :func:`wait`).

        :param timeout: seconds the caller waits; past it the Deferred fails with
            ``defer.TimeoutError`` (a job not yet started is skipped; a running one
            finishes unseen).
        :returns: a Deferred with f's result; it fails with :class:`PoolOverloaded` (at
            once), ``defer.TimeoutError``, or whatever f raised.
        """
        if self.pending >= self.max_pending:
            return defer.fail(PoolOverloaded(f"{self.pending} jobs in progress"))
        self.pending += 1
        d: defer.Deferred = defer.Deferred()

        def timed_out(_value: Any, seconds: float) -> None:
            raise defer.TimeoutError(f"took more than {seconds:g} s")

        d.addTimeout(max(0.0, timeout), self.reactor, onTimeoutCancel=timed_out)
        self._queue.append((d, lambda: f(*args, **kwargs)))
        self._start_waiting()
        return d

    def _start_waiting(self) -> None:
        if greenlet.getcurrent().parent is not None:  # inside a job: start it from the reactor
            self.reactor.callLater(0, self._start_waiting)
            return
        while self._queue and self.running < self.size:
            d, run = self._queue.popleft()
            if d.called:  # its caller gave up while it waited
                self.pending -= 1
                continue
            self.running += 1
            self._resume(_Job(self, lambda run=run, d=d: (d, _outcome(run)), greenlet.getcurrent()), None)

    def _resume(self, job: _Job, value: Any) -> None:
        """Switch into *job* until it parks or ends; fire its Deferred when it ends."""
        if greenlet.getcurrent() is not job.parent:  # a Deferred fired inside a job: from the reactor
            self.reactor.callLater(0, self._resume, job, value)
            return
        out = job.switch(value) if job else job.switch()  # a job not started takes no value
        if out is _PARKED:
            return
        d, result = out
        self.running -= 1
        self.pending -= 1
        if not d.called:
            d.callback(result) if not isinstance(result, Failure) else d.errback(result)
        self._start_waiting()


def _outcome(run: Callable[[], Any]) -> Any:
    try:
        return run()
    except Exception:  # a job's failure goes to its caller; GreenletExit and the like do not
        return Failure()
