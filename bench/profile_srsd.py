#!/usr/bin/env python3
"""Where srsd's time goes per tcp_table lookup: cProfile of a server under load.

    python bench/profile_srsd.py [--map forward] [--connections 8] [--seconds 5]
                                 [--variant fast] [--top 25] [--save FILE.prof]

Starts one srsd process under cProfile (``bench/srsd_variant.py profile``,
optionally with other patches), drives it with the C load generator as
bench/lookups.py does (request/response; server alone on CPU 1, client on
CPU 0), stops it and prints, per lookup: function calls, reactor iterations,
time by group (syscalls made by Twisted, HMAC, srsd's modules, Twisted's
Python) and the top functions by own time.

cProfile adds roughly 0.1-0.3 µs to every Python call, so Python-heavy groups
are inflated (the totals here exceed the real CPU per lookup that
bench/lookups.py reports); the timings of C calls (send, recv, epoll) are
close to real. Use bench/layers.py for unprofiled per-layer costs.
Why not py-spy: on this VM it put 998 of 999 samples of a loop doing 1.2 µs
of Python and 0.6 µs of epoll_ctl on the epoll_ctl line; it samples syscall
sites, not time (see bench/README.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent

import lookups  # noqa: E402  (a sibling script in bench/)

C_CALLS = {
    "<method 'poll' of 'select.epoll' objects>": "epoll_wait() (includes waiting)",
    "<method 'modify' of 'select.epoll' objects>": "epoll_ctl() (arm/disarm EPOLLOUT)",
    "<method 'register' of 'select.epoll' objects>": "epoll_ctl() (arm/disarm EPOLLOUT)",
    "<method 'unregister' of 'select.epoll' objects>": "epoll_ctl() (arm/disarm EPOLLOUT)",
    "<method 'send' of '_socket.socket' objects>": "send() (loopback TCP + waking the client)",
    "<method 'recv' of '_socket.socket' objects>": "recv()",
    "<built-in method _hashlib.hmac_digest>": "HMAC-SHA1 (hmac.digest, OpenSSL)",
}


def group_of(filename: str, name: str) -> str:
    if name in C_CALLS:
        return C_CALLS[name]
    if filename == "~":
        return "other C builtins (isinstance, str/bytes methods, ...)"
    if "/srsd/" in filename:
        return "srsd " + filename.split("/srsd/")[-1]
    if "twisted/" in filename:
        return "Twisted (Python)"
    if "srsd_variant" in filename:
        return "bench variant patches"
    return "stdlib Python (" + Path(filename).name + ")"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--map", default="forward", choices=["forward", "reverse"])
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--variant", default="", help="other bench/srsd_variant.py patches, e.g. fast")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--save", help="keep the cProfile stats in this file")
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="srsd-profile-"))
    try:
        client = workdir / "lookupload"
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(client), str(BENCH / "lookupload.c")], check=True)
        secret = secrets.token_urlsafe(24).encode()
        secrets_path = workdir / "secrets"
        secrets_path.write_bytes(secret + b"\n")
        forward, reverse = lookups.make_keys(secret, 10000)
        keyfile = workdir / "keys"
        lookups.write_keys(keyfile, forward if args.map == "forward" else reverse)
        stats_path = workdir / "srsd.prof"
        os.environ["SRSD_PROFILE"] = str(stats_path)
        variant = "+".join(v for v in ("profile", args.variant) if v)
        server = lookups.start_srsd(workdir, secrets_path, "w1", variant)  # profiles the Twisted path
        try:
            lookups.set_affinity(lookups.tree(server.process.pid, lookups.proc_table()), {1})
            load = subprocess.run(
                [
                    str(client),
                    str(server.port(args.map)),
                    str(args.connections),
                    "1",
                    str(args.seconds),
                    "1",
                    str(keyfile),
                ],
                capture_output=True,
                text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, {0}),
            )
            result = json.loads(load.stdout.strip().splitlines()[-1])
        finally:
            server.process.send_signal(signal.SIGTERM)  # cProfile writes its stats on the way out
            server.process.wait(30)
        if args.save:
            shutil.copy(stats_path, args.save)
        stats = pstats.Stats(str(stats_path)).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    requests = sum(
        v[1]
        for (f, _, name), v in stats.items()
        if (name == "dataReceived" and "/srsd/" in f) or (name == "data_received" and "srsd_variant" in f)
    )
    if not requests:
        return print("no dataReceived calls recorded") or 1
    polls = sum(v[1] for (_, _, name), v in stats.items() if name == "<method 'poll' of 'select.epoll' objects>")
    calls = sum(v[1] for v in stats.values())
    label = f"srsd w1{' ' + args.variant if args.variant else ''} under cProfile, {args.map}, {args.connections} conn"
    print(f"{label}: {result['rate']:,.0f} lookups/s (profiled), {requests:,} lookups")
    print(f"per lookup: {calls / requests:.0f} function calls, {polls / requests:.2f} reactor iterations (epoll_wait)")

    groups: collections.Counter[str] = collections.Counter()
    for (filename, _, name), (_, _, tottime, _, _) in stats.items():
        groups[group_of(filename, name)] += tottime
    print("\nown time per lookup by group, µs (cProfile-inflated for Python; see the docstring):")
    for name, t in groups.most_common():
        if t / requests * 1e6 >= 0.05:
            print(f"  {t / requests * 1e6:6.2f}  {name}")
    print(f"\ntop {args.top} functions by own time, µs per lookup (calls per lookup):")
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[: args.top]
    for (filename, line, name), (_, nc, tottime, _, _) in rows:
        where = (
            name if filename == "~" else f"{name} ({filename.split('site-packages/')[-1].split('/main/')[-1]}:{line})"
        )
        print(f"  {tottime / requests * 1e6:6.2f}  ({nc / requests:4.2f})  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
