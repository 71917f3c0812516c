"""srsd.workpool.BoundedPool on a real reactor (tests/reactor_thread.py): results, errors,
the two bounds, timeouts and cancellation skip work not started, resize and stop."""

from __future__ import annotations

import threading

import pytest
from twisted.internet import defer

from srsd.workpool import BoundedPool, PoolOverloaded


@pytest.fixture
def pool(reactor_thread):
    made = []

    def make(threads=2):
        p = reactor_thread.call(lambda: BoundedPool(reactor_thread.reactor, threads, "test-pool"))
        made.append(p)
        return p

    yield make
    for p in made:
        reactor_thread.call(p.stop)


def outcome(reactor_thread, start):
    """Run *start* on the reactor thread and wait for its Deferred's outcome: (ok, value)."""

    def begin():
        d = start()
        done = defer.Deferred()
        d.addCallbacks(lambda v: done.callback((True, v)), lambda f: done.callback((False, f.value)))
        return done

    return reactor_thread.call(begin)


def test_results_and_errors_come_back_on_the_reactor(reactor_thread, pool):
    p = pool()
    seen = []

    def job(x):
        seen.append(threading.current_thread().name)
        return x * 2

    assert outcome(reactor_thread, lambda: p.run(5, job, 21)) == (True, 42)
    ok, error = outcome(reactor_thread, lambda: p.run(5, lambda: 1 / 0))
    assert not ok and isinstance(error, ZeroDivisionError)
    assert seen[0].startswith("test-pool-")
    assert reactor_thread.call(lambda: p.pending) == 0


def test_beyond_four_times_the_threads_jobs_are_refused_at_once(reactor_thread, pool):
    p = pool(threads=1)
    gate = threading.Event()

    def start():
        waiting = [p.run(30, gate.wait, 30) for _ in range(p.max_pending)]
        refused = p.run(30, lambda: None)
        return defer.succeed((waiting, refused, p.pending))

    waiting, refused, pending = reactor_thread.call(start)
    assert pending == 4
    ok, error = outcome(reactor_thread, lambda: refused)
    assert not ok and isinstance(error, PoolOverloaded)
    gate.set()
    for d in waiting:
        assert outcome(reactor_thread, lambda d=d: d) == (True, True)
    assert reactor_thread.call(lambda: p.pending) == 0


def test_a_job_past_its_time_fails_and_one_not_started_is_skipped(reactor_thread, pool):
    p = pool(threads=1)
    gate, ran = threading.Event(), []

    def start():
        first = p.run(0.2, gate.wait, 30)  # holds the one thread past its timeout
        second = p.run(0.2, ran.append, "second")  # queued behind it: timed out before it starts
        return defer.succeed((first, second))

    first, second = reactor_thread.call(start)
    for d in (first, second):
        ok, error = outcome(reactor_thread, lambda d=d: d)
        assert not ok and isinstance(error, defer.TimeoutError)
    assert reactor_thread.call(lambda: p.pending) == 2  # still counted: the thread is busy
    gate.set()
    assert outcome(reactor_thread, lambda: p.run(5, lambda: "after")) == (True, "after")
    assert ran == [] and reactor_thread.call(lambda: p.pending) == 0


def test_cancelling_skips_a_job_not_started(reactor_thread, pool):
    p = pool(threads=1)
    gate, ran = threading.Event(), []

    def start():
        p.run(30, gate.wait, 30)
        queued = p.run(30, ran.append, "queued")
        queued.cancel()
        return defer.succeed(queued)

    queued = reactor_thread.call(start)
    ok, error = outcome(reactor_thread, lambda: queued)
    assert not ok and isinstance(error, defer.CancelledError)
    gate.set()
    assert outcome(reactor_thread, lambda: p.run(5, lambda: "after")) == (True, "after")
    assert ran == []


def test_resize_and_stop(reactor_thread, pool):
    p = pool(threads=4)
    gate = threading.Event()

    def start(n):
        return defer.succeed([p.run(30, gate.wait, 30) for _ in range(n)])

    running = reactor_thread.call(start, 4)
    assert len(reactor_thread.call(lambda: p._threads)) == 4
    gate.set()
    for d in running:
        assert outcome(reactor_thread, lambda d=d: d) == (True, True)
    reactor_thread.call(p.resize, 1)
    assert len(reactor_thread.call(lambda: p._threads)) == 1 and p.max_pending == 4
    assert outcome(reactor_thread, lambda: p.run(5, lambda: "one")) == (True, "one")
    reactor_thread.call(p.stop)
    ok, error = outcome(reactor_thread, lambda: p.run(5, lambda: None))
    assert not ok and isinstance(error, PoolOverloaded)
