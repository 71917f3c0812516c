#!/usr/bin/env python3
"""The milter's per-message job in threads against processes, in process (no Postfix).

    python bench/dkim_jobs.py [--messages 600] [--rounds 3] [--parallel 2] [--size 10240]

The job is what srsd does for a forwarded message (bench/dkim_signing.py's "forwarded:
verify+seal+sign": verify its DKIM signature and ARC set, seal a new ARC set, sign).
Each round runs --messages jobs three ways, in alternating order: on one thread; on
--parallel threads (as ``[dkim] processes = 0`` runs them, the GIL shared); in --parallel
forked processes (as ``[dkim] processes = N``, without the pipes). Printed: messages/s
and CPU ms a message (user + system of this process and its children) for each, and the
processes/threads ratio round by round. Keys are in hand (no DNS).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling dkim_signing.py
import dkim_signing as ds  # noqa: E402  (it puts this checkout's srsd on sys.path)

from srsd.mailauth.canonical import forget_fields  # noqa: E402
from srsd.mailauth.dkimpy_setup import forget_messages, install  # noqa: E402


def forwarded_job(size: int) -> Callable[[], object]:
    """A function doing one forwarded message's work, the message and keys set up."""
    install()
    key = ds.generate_key(os.path.join(tempfile.mkdtemp(prefix="srsd-bench-jobs-"), "rsa.private"))
    headers, body = ds.sample_message(size)
    spf = ("pass", "smtp.mailfrom", "example.org")
    results = ds.authentication_results("fwd.example", spf=spf, dkim_results=[], arc=ds.ARCResult("none"))
    signature = ds.sign_message(headers, body, key, "fwd.example", "sel", ds.SIGNED)
    arc_set = ds.seal_message([results, *headers], body, key, "fwd.example", "sel", "fwd.example", ds.SIGNED,
                              cv="none")  # fmt: skip
    incoming = [*arc_set, results, signature, *headers]
    fields = ds.split_message(ds.message_bytes(incoming, body))
    ours = ds.authentication_results("fwd.example", spf=spf, dkim_results=[], arc=ds.ARCResult("pass"))
    records = {b"sel._domainkey.fwd.example.": key.txt_record().encode()}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    def job() -> object:
        forget_messages()  # a new message each time: canonicalized and hashed again
        forget_fields()
        ds.verify_signatures(*fields, dnsfunc)
        ds.verify_arc(*fields, dnsfunc)
        new_set = ds.seal_message([ours, *incoming], body, key, "fwd.example", "sel", "fwd.example", ds.SIGNED,
                                  cv="pass")  # fmt: skip
        return ds.sign_message([*new_set, ours, *incoming], body, key, "fwd.example", "sel", ds.SIGNED)

    return job


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(job: Callable[[], object], messages: int, how: str, parallel: int) -> tuple[float, float]:
    """(messages/s, CPU ms a message) for *messages* jobs run *how*: "thread", "threads"
    or "processes" (*parallel* of them, the messages split evenly)."""

    def loop(n: int) -> None:
        for _ in range(n):
            job()

    share = messages // parallel
    started, cpu = time.perf_counter(), _cpu()
    if how == "thread":
        loop(messages)
    elif how == "threads":
        threads = [threading.Thread(target=loop, args=(share,)) for _ in range(parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:  # no thread runs here now: forking is safe
        pids = []
        for _ in range(parallel):
            pid = os.fork()
            if pid == 0:
                loop(share)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
    done = messages if how == "thread" else share * parallel
    wall = time.perf_counter() - started
    return done / wall, (_cpu() - cpu) / done * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=600, help="jobs per way per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parallel", type=int, default=2, help="threads or processes at once")
    p.add_argument("--size", type=int, default=10240, help="message body bytes")
    args = p.parse_args()
    job = forwarded_job(args.size)
    job()  # warm up: imports, key caches
    print(f"forwarded-message job, {args.size}-byte body, {args.messages} jobs a way, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    ratios = []
    ways = ["thread", "threads", "processes"]
    for r in range(1, args.rounds + 1):
        order = ways if r % 2 else ways[::-1]
        got = {how: measure(job, args.messages, how, args.parallel) for how in order}
        ratio = got["processes"][0] / got["threads"][0]
        ratios.append(ratio)
        cells = ", ".join(f"{how} {rate:.0f} msgs/s ({ms:.2f} ms CPU/msg)" for how, (rate, ms) in got.items())
        print(f"round {r}: {cells} (processes/threads {ratio:.2f}x)")
    print(f"{args.parallel} processes / {args.parallel} threads, median of {args.rounds} rounds: "
          f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
