"""The fault battery at full size: ``python3 -m tests.faults.battery [--quick] [--only GROUP ...]``.

Runs every fault of tests/faults at the sizes docs/reliability.md reports (``--quick``:
the CI sizes), each against its own srsd, Postfix and sink on loopback, and prints
each fault's figures and a summary table (Markdown). Needs what the e2e tests need:
root, Postfix, the project's test dependencies. Exits 1 if any fault lost mail or
failed a request.

Groups: ``kill`` (SIGKILL during a batch), ``sighup`` (secret rotation under load),
``dns`` (DNS closed / silent / garbage), ``hostile`` (slowloris, idle floods,
never-reading clients, huge inputs).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.faults import hostile
from tests.faults.dnsfaults import Budgets, dns_outage, dns_stack, pipelined_during_outage
from tests.faults.faultdns import MODES, FaultyDNS
from tests.faults.mailflow import ForwardingStack, sigkill_during_batch
from tests.faults.measure import Outcome
from tests.faults.rotation import sighup_rotation
from tests.srsd_daemon import serving

GROUPS = ("kill", "sighup", "dns", "hostile")


@dataclass(frozen=True)
class Sizes:
    messages: int  # per SIGKILL batch
    rotation_messages: int
    rotation_threads: int
    rotation_interval: float  # seconds between reloads
    dns_lookups: int
    dns_policy: int  # per temperror setting
    dns_messages: int
    dns_pipelined: int
    budgets: Budgets
    slowloris: int
    slowloris_seconds: float
    idle: int
    over_limit: int
    unread_bytes: int
    huge_bytes: int


FULL = Sizes(
    messages=1000,
    rotation_messages=500,
    rotation_threads=8,
    rotation_interval=1.0,
    dns_lookups=200,
    dns_policy=50,
    dns_messages=50,
    dns_pipelined=100_000,
    budgets=Budgets(),  # srsd's defaults: dns.timeout 2, decision_budget 2, check_budget 10
    slowloris=500,
    slowloris_seconds=30,
    idle=3000,
    over_limit=100,
    unread_bytes=1 << 30,
    huge_bytes=100 * 1024 * 1024,
)
QUICK = Sizes(
    messages=200,
    rotation_messages=100,
    rotation_threads=4,
    rotation_interval=0.3,
    dns_lookups=24,
    dns_policy=8,
    dns_messages=6,
    dns_pipelined=5000,
    budgets=Budgets(dns_timeout=0.5, decision=1.0, check=3.0),
    slowloris=300,
    slowloris_seconds=3,
    idle=1100,
    over_limit=20,
    unread_bytes=256 * 1024 * 1024,
    huge_bytes=10 * 1024 * 1024,
)

#: (protocol, milter, seconds srsd stays down: past Postfix's ~10 s tcp_table retries)
KILL_STACKS = (
    ("tcp_table", True, 15.0),
    ("socketmap", True, 5.0),
    ("tcp_table", False, 15.0),
    ("socketmap", False, 5.0),
)


def machine() -> str:
    def first(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    def proc(path: str, key: str) -> str:
        lines = Path(path).read_text().splitlines()
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "?")

    import twisted

    cpu, memory = proc("/proc/cpuinfo", "model name"), proc("/proc/meminfo", "MemTotal").split()[0]

    return (
        f"{platform.node()}: {os.cpu_count()} x {cpu}, {int(memory) // 1024} MiB RAM, "
        f"{first(['sh', '-c', '. /etc/os-release && echo $PRETTY_NAME'])}, kernel {platform.release()}, "
        f"Python {platform.python_version()}, Twisted {twisted.__version__}, "
        f"Postfix {first(['postconf', '-d', '-h', 'mail_version'])}"
    )


@contextmanager
def running(stack: ForwardingStack) -> Iterator[ForwardingStack]:
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def kill_group(sizes: Sizes, work: Path) -> Iterator[Outcome]:
    for protocol, milter, down in KILL_STACKS:
        with running(ForwardingStack(work / f"kill-{protocol}-{milter}", protocol, milter=milter)) as stack:
            yield sigkill_during_batch(stack, sizes.messages, down)


def sighup_group(sizes: Sizes, work: Path) -> Iterator[Outcome]:
    # With --workers, the two-step rotation docs/reliability.md recommends (one step:
    # reverses fail for a moment, see there).
    for protocol, workers in (("tcp_table", 1), ("socketmap", 1), ("socketmap", 2)):
        stack = ForwardingStack(work / f"sighup-{protocol}-{workers}", protocol, workers=workers)
        with running(stack):
            lookups, mail = sighup_rotation(
                stack,
                reloads=10,
                messages=sizes.rotation_messages,
                threads=sizes.rotation_threads,
                interval=sizes.rotation_interval,
                two_step=workers > 1,
            )
        if workers > 1:
            for outcome in (lookups, mail):
                outcome.case += f", --workers {workers}"
        yield lookups
        yield mail


def dns_group(sizes: Sizes, work: Path) -> Iterator[Outcome]:
    server = FaultyDNS()
    try:
        with running(dns_stack(work / "dns", server, sizes.budgets)) as stack:
            for mode in MODES:
                yield dns_outage(
                    stack,
                    server,
                    mode,
                    sizes.budgets,
                    lookups=sizes.dns_lookups,
                    policy_requests=sizes.dns_policy,
                    messages=sizes.dns_messages,
                )
            yield pipelined_during_outage(stack, server, sizes.budgets, sizes.dns_pipelined)
    finally:
        server.stop()


def hostile_group(sizes: Sizes, work: Path) -> Iterator[Outcome]:
    # Each attack on a fresh srsd, so that each peak RSS is its own (CPython keeps
    # what it once allocated); started with a 1024 soft open-files limit, like a shell.
    attacks: list[Callable[[object], Outcome]] = [
        lambda d: hostile.slowloris(d, sizes.slowloris, sizes.slowloris_seconds),
        lambda d: hostile.idle_flood(d, sizes.idle, hold=5.0),
        lambda d: hostile.over_max_connections(d, 1000, sizes.over_limit),
        *(lambda d, e=e: hostile.never_reading(d, e, sizes.unread_bytes) for e in hostile.UNREAD_ENDPOINTS),
        lambda d: hostile.huge_inputs(d, sizes.huge_bytes),
    ]
    for number, attack in enumerate(attacks):
        workdir = work / f"hostile-{number}"
        workdir.mkdir()
        with serving(hostile.hostile_srsd(workdir, open_files=1024)) as daemon:
            yield attack(daemon)


RUNNERS = {"kill": kill_group, "sighup": sighup_group, "dns": dns_group, "hostile": hostile_group}


def summary(outcomes: list[Outcome]) -> str:
    rows = [
        "| fault | inputs | answered | failures | messages lost | srsd peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        lost = "-" if o.lost is None else str(o.lost)
        rss = "-" if o.peak_rss_kb is None else f"{o.peak_rss_kb / 1024:.1f} MiB"
        rows.append(f"| {o.case} | {o.inputs} {o.unit} | {o.answers} | {o.failures} | {lost} | {rss} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.faults.battery", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI sizes")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS), metavar="GROUP")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    print(f"# srsd fault battery ({'quick' if args.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {machine()}")
    print(f"command: python3 -m tests.faults.battery {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="srsd-faults-") as work:
        for group in args.only:
            group_dir = Path(work) / group
            group_dir.mkdir()
            for outcome in RUNNERS[group](sizes, group_dir):
                print(outcome.report(), flush=True)
                outcomes.append(outcome)
    print(f"\n{summary(outcomes)}\n\n{len(outcomes)} faults in {time.monotonic() - started:.0f} s")
    bad = [o.case for o in outcomes if o.failures or o.lost]
    if bad:
        print(f"FAILED: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
