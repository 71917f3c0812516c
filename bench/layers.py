#!/usr/bin/env python3
"""What one lookup costs in each layer of srsd, in-process (no sockets, no reactor).

    python bench/layers.py [--variant fast] [--keys 10000] [--n 200000]

Times, in µs per lookup over the same key mix as bench/lookups.py: the HMAC
alone, SRS.forward/reverse, Rewriter.forward/reverse, Daemon.lookup and
TcpTableProtocol.dataReceived over a StringTransport (one request a call, as
in request/response traffic); then the metrics and log instrumentation alone
(srsd.lookup_outcomes, srsd.metrics: what each lookup pays for being counted),
next to the cost of an empty call of the measuring loop. The difference between the last line and the
server CPU per lookup that bench/lookups.py reports is the reactor and the
kernel (epoll, recv, send, TCP over loopback).
"""

from __future__ import annotations

import argparse
import hmac
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

import lookups  # noqa: E402  (a sibling script in bench/)
import srsd_variant  # noqa: E402  (a sibling script in bench/)


def per_call(fn, keys, n: int) -> float:
    """Best of 3 passes: µs per call of fn(key) over *keys* repeated to *n* calls."""
    items = (keys * (n // len(keys) + 1))[:n]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for k in items:
            fn(k)
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def instrumentation_rows(daemon, fkeys: list[str], rkeys: list[str]) -> list:
    """What counting and logging add to each lookup, measured alone (none before srsd.metrics)."""
    try:
        from srsd.metrics import endpoint_stats
    except ImportError:
        return []
    from time import perf_counter

    outcomes = daemon.maps.outcomes
    stats = endpoint_stats("bench")
    answered = {
        "forward": [(k, daemon.lookup("forward", k)) for k in fkeys],
        "reverse": [(k, daemon.lookup("reverse", k)) for k in rkeys],
    }
    rows = [("(an empty call: the loop's own cost)", lambda item: None, answered["forward"])]
    for map_name, items in answered.items():
        rows.append((
            f"instrumentation: outcome counted and logged ({map_name})",
            lambda item, m=map_name: outcomes.record(m, item[0], item[1]),
            items,
        ))  # fmt: skip
    rows.append(("instrumentation: request duration (2 clock reads, histogram)", lambda k: stats.since(perf_counter()),
                 fkeys))  # fmt: skip
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="", help="apply bench/srsd_variant.py patches first (e.g. fast)")
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--n", type=int, default=200000, help="calls per measurement")
    args = p.parse_args()
    if args.variant:
        srsd_variant.apply(args.variant.split("+"))

    from twisted.internet.testing import StringTransport

    from srsd.config import parse_config
    from srsd.protocols.tcp_table import TcpTableFactory
    from srsd.service import Daemon

    secret = b"bench-secret-0123456789"
    with tempfile.NamedTemporaryFile("wb", suffix=".secrets") as fh:
        fh.write(secret + b"\n")
        fh.flush()
        cfg = parse_config(
            {
                "srs": {"domain": lookups.SRS_DOMAIN, "secrets_file": fh.name, "local_domains": [lookups.LOCAL_DOMAIN]},
                "listen": {"socketmap": ""},
                "log": {"level": "warn"},
            }
        )
    daemon = Daemon(cfg)
    forward, reverse = lookups.make_keys(secret, args.keys)
    fkeys = [k for k, _ in forward]
    rkeys = [k for k, _ in reverse]
    rewritten = [k for k, v in forward if v != "500"]
    srs, rewriter = daemon.maps.rewriter.srs, daemon.maps.rewriter
    # The answers must be right before their speed matters.
    for key, expected in forward[:500] + reverse[:500]:
        got = daemon.lookup("forward" if key in fkeys[:500] else "reverse", key)
        want_found = expected.startswith("200 ")
        assert (got.status == "found") == want_found and (not want_found or got.text == expected[4:]), (key, got)

    rows = [
        ("hmac.digest(key, data, 'sha1') alone", lambda k: hmac.digest(secret, k.encode(), "sha1"), fkeys),
        ("SRS.forward (rewritten keys only)", srs.forward, rewritten),
        ("Rewriter.forward (mix)", rewriter.forward, fkeys),
        ("Daemon.lookup('forward', key)", lambda k: daemon.lookup("forward", k), fkeys),
        ("SRS.reverse", srs.reverse, rkeys),
        ("Rewriter.reverse", rewriter.reverse, rkeys),
        ("Daemon.lookup('reverse', key)", lambda k: daemon.lookup("reverse", k), rkeys),
    ]
    for map_name, keys in (("forward", fkeys), ("reverse", rkeys)):
        factory = TcpTableFactory(daemon.lookup, f"tcp_{map_name}", map_name)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        requests = [b"get " + k.encode() + b"\n" for k in keys]

        def received(data, proto=proto, transport=transport):
            proto.dataReceived(data)
            transport.io.seek(0)  # keep the buffer small
            transport.io.truncate()

        rows.append((f"TcpTableProtocol.dataReceived ({map_name})", received, requests))

    rows += instrumentation_rows(daemon, fkeys, rkeys)
    label = f" (variant {args.variant})" if args.variant else ""
    print(f"µs per lookup, in-process{label}, Python {sys.version.split()[0]}")
    for name, fn, keys in rows:
        print(f"  {per_call(fn, keys, args.n):6.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
