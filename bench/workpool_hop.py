#!/usr/bin/env python3
"""What a job on a thread pool costs the process: srsd's BoundedPool against the one it
replaced (Twisted's ``deferToThreadPool`` underneath), alternated in one run.

    python bench/workpool_hop.py [--jobs 2000] [--rounds 3] [--work 0,20000]

For each round, each pool and each amount of work (a Python loop of N additions; 20,000
is ~0.6-1 ms here), it runs --jobs jobs, 1 and then 4 at a time, on a real reactor, and
prints the process's CPU (user + system) and wall time per job. The forwarded-message path
of the milter runs two jobs a message (docs/performance.md, "DKIM milter").
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # srsd from this checkout

from twisted.internet import defer, reactor, threads  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from srsd.workpool import BoundedPool  # noqa: E402


class TwistedPool:
    """The anchor: BoundedPool as it was (srsd 0e43730): Twisted's thread pool, a job
    through deferToThreadPool with addTimeout, and one more callFromThread per job for
    the count of jobs in flight."""

    def __init__(self, size: int) -> None:
        self.threadpool = ThreadPool(minthreads=0, maxthreads=size, name="twisted")
        self.threadpool.start()
        self.pending = 0

    def run(self, timeout: float, f, *args):  # noqa: ANN001, ANN201
        self.pending += 1
        d = threads.deferToThreadPool(reactor, self.threadpool, self._job, f, args)
        return d.addTimeout(timeout, reactor)

    def _job(self, f, args):  # noqa: ANN001, ANN202
        try:
            return f(*args)
        finally:
            reactor.callFromThread(self._finished)

    def _finished(self) -> None:
        self.pending -= 1

    def stop(self) -> None:
        self.threadpool.stop()


def work(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@defer.inlineCallbacks
def measure(pool, jobs: int, n: int, at_once: int):  # noqa: ANN001, ANN201
    started_cpu, started = cpu(), time.perf_counter()
    for _ in range(jobs // at_once):
        yield defer.gatherResults([pool.run(30, work, n) for _ in range(at_once)])
    return (cpu() - started_cpu) / jobs * 1e6, (time.perf_counter() - started) / jobs * 1e6


@defer.inlineCallbacks
def main(args: argparse.Namespace):  # noqa: ANN201
    pools = {"srsd BoundedPool": BoundedPool(reactor, 4, "srsd"), "before (deferToThreadPool)": TwistedPool(4)}
    amounts = [int(x) for x in args.work.split(",")]
    ratios: dict[tuple[int, int], list[float]] = {}
    try:
        for number in range(1, args.rounds + 1):
            for n in amounts:
                for at_once in (1, 4):
                    cpus = {}
                    names = list(pools) if number % 2 else list(pools)[::-1]  # A B, then B A
                    for name in names:
                        cpus[name], wall = yield measure(pools[name], args.jobs, n, at_once)
                        print(f"round {number}: work {n}, {at_once} at once, {name}: "
                              f"{cpus[name]:.0f} µs CPU/job, {wall:.0f} µs wall/job", flush=True)  # fmt: skip
                    ratios.setdefault((n, at_once), []).append(
                        cpus["before (deferToThreadPool)"] / cpus["srsd BoundedPool"]
                    )
        for (n, at_once), values in ratios.items():
            print(f"work {n}, {at_once} at once: before / now CPU per job, median of {len(values)} rounds: "
                  f"{statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f})")  # fmt: skip
    finally:
        for pool in pools.values():
            pool.stop()
        reactor.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000, help="jobs per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default="0,20000", help="loop lengths of a job, comma-separated")
    reactor.callWhenRunning(main, p.parse_args())
    reactor.run()
