#!/usr/bin/env python3
"""Where a cold SPF policy request's CPU goes, layer by layer, in one process.

    python bench/spf_layers.py [--requests 2000] [--rounds 3] [--at-once 8]

The cold mix of bench/spf_policy.py (every sender domain and HELO name new: four DNS
queries a request, two SPF checks) against NSD on loopback (bench/nsd_server.py), 8
requests at once on the epoll reactor. Prints CPU µs a request (process time: user +
system, this process only) for:

* ``cold policy``: :class:`srsd.policy_service.PolicyService`, nothing kept (each round
  its own names): what the daemon does for a request, less the policy protocol;
* then, every answer kept in the DNS cache and the result cache off, the same requests
  through fewer layers -- ``check_host``: srsd's evaluator (:mod:`srsd.spf_eval`) with the
  answers handed over directly (:func:`srsd.spf.check_host`, no Deferred);
  ``checker``: :meth:`srsd.spf.SPFChecker.check`; ``policy``: ``PolicyService.handle``;
* ``DNS``: :meth:`srsd.dns_async.AsyncResolver.lookup` alone, new names, 1 and 8 at once;
* ``collector``: time in CPython's collector during the cold rounds (gc callbacks), with
  CPython's defaults or, ``--settle-heap``, as ``srsd serve`` sets it (:mod:`srsd.heap`).

The rounds alternate the layers; the machine's noise (±15 % between identical runs here)
shows as the spread. Read the differences between rows, not single figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()
import nsd_server  # noqa: E402  (a sibling script in bench/)
import spf_policy  # noqa: E402
from twisted.internet import defer, reactor  # noqa: E402

from srsd.config import PolicySettings  # noqa: E402
from srsd.dns import Resolver  # noqa: E402
from srsd.dns_async import reading_records  # noqa: E402
from srsd.heap import settle_heap  # noqa: E402
from srsd.policy_service import PolicyService  # noqa: E402
from srsd.spf import SPFChecker, check_host  # noqa: E402


class KeptOnly:
    """check_host's resolver answered from the reactor's DNS cache directly."""

    def __init__(self, resolver) -> None:
        self.resolver, self.timeout = resolver, resolver.timeout

    def start_ttl_tracking(self) -> None:
        pass

    def tracked_ttl(self) -> None:
        return None

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list:
        reading = self.resolver.cached(name, qtype)
        if reading is None:
            raise RuntimeError(f"{name}/{qtype} is not kept")
        return reading_records(reading, name)


class Collector:
    """Seconds spent in gc collections while :attr:`on`."""

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.seconds += time.process_time() - self._start


def attributes(request: spf_policy.Request) -> dict[str, str]:
    return dict(line.split("=", 1) for line in request.text.decode().strip().split("\n"))


async def measure(args: argparse.Namespace, port: int, cold: list[list[dict]], names: list[str]) -> dict:
    resolver = Resolver(nameservers=[f"127.0.0.1:{port}"], timeout=5)
    checker = SPFChecker(reactor, resolver, threads=8)
    settings = dataclasses.replace(PolicySettings(), helo_reject="fail", mail_from_reject="fail")
    service = PolicyService(settings, checker, "mx.local.example")
    kept = checker.async_resolver
    collector = Collector()
    rows: dict[str, list[float]] = {}

    async def in_batches(call, items) -> float:
        started = time.process_time()
        for i in range(0, len(items), args.at_once):
            await defer.gatherResults([call(item) for item in items[i : i + args.at_once]])
        return 1e6 * (time.process_time() - started) / len(items)

    def note(row: str, value: float) -> None:
        rows.setdefault(row, []).append(value)

    for requests in cold[1:]:
        collector.seconds = 0.0
        note("cold policy", await in_batches(service.handle, requests))
        note("collector (cold policy)", 1e6 * collector.seconds / len(requests))
    hot = cold[0]
    await in_batches(service.handle, hot)  # every answer kept
    checker.cache.max_entries = 0
    checker.cache.clear()

    def both(a: dict, run) -> defer.Deferred:
        ip, sender, helo = a["client_address"], a["sender"], a["helo_name"]
        return defer.gatherResults([run(ip, sender, helo), run(ip, "", helo)])

    def direct() -> float:
        started = time.process_time()
        for a in hot:
            for sender in (a["sender"], ""):
                check_host(KeptOnly(kept), a["client_address"], sender, a["helo_name"])
        return 1e6 * (time.process_time() - started) / len(hot)

    for _ in range(args.rounds):
        note("check_host", direct())
        note("checker", await in_batches(lambda a: both(a, checker.check), hot))
        service._messages.clear()
        note("policy", await in_batches(service.handle, hot))
    for at_once in (1, args.at_once):
        part = names[: len(names) // 2] if at_once == 1 else names[len(names) // 2 :]
        started = time.process_time()
        for i in range(0, len(part), at_once):
            await defer.gatherResults([kept.lookup(n, "TXT") for n in part[i : i + at_once]])
        note(f"DNS query, {at_once} at once", 1e6 * (time.process_time() - started) / len(part))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--at-once", type=int, default=8)
    parser.add_argument("--settle-heap", action="store_true", help="the collector as `srsd serve` sets it (srsd.heap)")
    args = parser.parse_args()
    rng, zone = random.Random(1), {}
    cold = [
        [attributes(r) for r in spf_policy.make_requests("cold", args.requests, f"c{k}", zone, rng)]
        for k in range(args.rounds + 1)
    ]
    names = [f"q{i}.lookups.example" for i in range(2 * args.requests)]
    for name in names:
        zone[name] = [{"TXT": "v=spf1 -all"}]
    out: dict = {}
    if args.settle_heap:
        settle_heap()
    with (
        tempfile.TemporaryDirectory(prefix="srsd-bench-layers-") as tmp,
        nsd_server.NSDServer(zone, 3600, Path(tmp)) as dns,
    ):

        async def run() -> None:
            out.update(await measure(args, dns.port, cold, names))

        d = defer.ensureDeferred(run())
        d.addErrback(lambda failure: (failure.printTraceback(), out.setdefault("failed", [1])))
        d.addBoth(lambda _: reactor.callLater(0, reactor.stop))
        reactor.run()
    if "failed" in out:
        return 1
    print(f"CPU µs a request ({args.requests} requests, {args.at_once} at once; a DNS row: a query)")
    for row, values in out.items():
        print(f"  {row:28} median {statistics.median(values):7.1f}   " + " ".join(f"{v:.0f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
