#!/usr/bin/env python3
"""What forwarded-only's second pass costs: latency and throughput through a real Postfix.

    python bench/forwarding_modes.py [--messages 200] [--batch 200] [--rounds 3]    # root, postfix

Four private Postfix instances (tests/e2e/postfix_instance.py), each wired with the
output of ``srsd postfix-snippet`` for its srsd and relaying to one loopback SMTP sink:
plain ``tcp_table`` and ``forwarded-only`` over tcp_table (one srsd with the tcp_table
endpoints), plain ``socketmap`` and ``forwarded-only`` over socketmap (a second srsd).
Every message goes to a virtual alias that forwards it off-site, so every message is
rewritten in all four (and every one is checked: SRS0 sender at the sink).

* **latency**: --messages rounds, each sending one message to every instance in turn
  (the order rotates every round), one at a time: from the 250 reply to DATA to the
  sink's 250 reply to that message's DATA. Median and 90th percentile.
* **throughput**: --rounds rounds, each sending a --batch of messages to every
  instance in turn over 4 SMTP connections at once: messages/s from the first
  connection to the last arrival. Median of the rounds.

The machine is shared (2 cores, other test suites): the alternation spreads the noise
over all four; compare the instances of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # srsd and its test harness from this checkout

from tests.e2e.postfix_instance import PostfixInstance  # noqa: E402
from tests.e2e.smtp_sink import ReceivedMessage, SmtpSink, marked_message  # noqa: E402
from tests.srsd_daemon import SrsdDaemon, free_port, tcp_endpoint  # noqa: E402

ALIAS = "fwd@alias.example"
TARGET = "someone@remote.example"
SENDER = "alice@orig.example"
SRS0 = re.compile(r"SRS0=[A-Za-z0-9+/_-]{4}=[A-Z2-7]{2}=orig\.example=alice@fwd\.example")
_SUBJECT = re.compile(rb"^Subject: (\S+)\r$", re.MULTILINE)


class TimedSink(SmtpSink):
    """The test sink, noting when each marker arrived (monotonic seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}
        self.bad: list[ReceivedMessage] = []

    def record(self, message: ReceivedMessage) -> None:
        match = _SUBJECT.search(message.data)
        with self._changed:
            if match:
                self.arrived[match.group(1).decode()] = time.monotonic()
            if not SRS0.fullmatch(message.mail_from):
                self.bad.append(message)
            self._changed.notify_all()

    def wait(self, markers: list[str], timeout: float = 120.0) -> float:
        """The last arrival time of *markers*; RuntimeError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all(m in self.arrived for m in markers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = sum(m not in self.arrived for m in markers)
                    raise RuntimeError(f"{missing} of {len(markers)} messages did not arrive")
                self._changed.wait(remaining)
            return max(self.arrived[m] for m in markers)


def start_srsd(workdir: Path, listen: dict[str, str]) -> SrsdDaemon:
    workdir.mkdir()
    daemon = SrsdDaemon(
        workdir,
        srs={"domain": "fwd.example", "local_domains": ["fwd.example", "alias.example"]},
        endpoints=(),
        listen=listen,
        sections={"postfix": {"forward_pass": f"127.0.0.1:{free_port()}"}},
        probe=True,
    )
    return daemon.start()


def snippet(daemon: SrsdDaemon, *args: str) -> str:
    printed = daemon.cli("postfix-snippet", *args)
    if printed.returncode != 0:
        raise RuntimeError(printed.stderr)
    return printed.stdout


def start_postfix(label: str, sink: SmtpSink, daemon: SrsdDaemon, mode: str) -> PostfixInstance:
    master = snippet(daemon, mode, "--master") if mode == "forwarded-only" else ""
    instance = PostfixInstance(
        relay_port=sink.port,
        local_domains=["fwd.example"],
        virtual_aliases={ALIAS: TARGET},
        extra_main_cf=snippet(daemon, mode) + "virtual_alias_domains = alias.example\n",
        extra_master_cf=master,
        label=f"bench-{label}",
    )
    return instance.start()


def send(instance: PostfixInstance, markers: list[str]) -> float:
    """Send one message per marker over one connection; the time of the last 250 to DATA."""
    with instance.smtp() as client:
        for marker in markers:
            client.sendmail(SENDER, [ALIAS], marked_message(marker, SENDER, [ALIAS]))
        return time.monotonic()


def latencies(instances: dict[str, PostfixInstance], sink: TimedSink, rounds: int) -> dict[str, list[float]]:
    names = list(instances)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            marker = f"lat-{uuid.uuid4().hex}"
            accepted = send(instances[name], [marker])
            out[name].append(sink.wait([marker]) - accepted)
    return out


def throughput(instance: PostfixInstance, sink: TimedSink, batch: int, connections: int = 4) -> float:
    markers = [f"tp-{uuid.uuid4().hex}" for _ in range(batch)]
    shares = [markers[i::connections] for i in range(connections)]
    threads = [threading.Thread(target=send, args=(instance, share)) for share in shares]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return batch / (sink.wait(markers, timeout=300) - started)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=200, help="latency rounds (one message per instance each)")
    p.add_argument("--batch", type=int, default=200, help="messages per throughput run")
    p.add_argument("--rounds", type=int, default=3, help="throughput runs per instance")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (Postfix's master starts as root)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="srsd-bench-modes-"))
    sink = TimedSink().start()
    daemons = [
        start_srsd(work / "tcp", {"tcp_forward": tcp_endpoint(free_port()), "tcp_reverse": tcp_endpoint(free_port())}),
        start_srsd(work / "socketmap", {"socketmap": tcp_endpoint(free_port())}),
    ]
    instances: dict[str, PostfixInstance] = {}
    try:
        for label, daemon, mode in (
            ("tcp_table", daemons[0], "tcp_table"),
            ("forwarded-only/tcp_table", daemons[0], "forwarded-only"),
            ("socketmap", daemons[1], "socketmap"),
            ("forwarded-only/socketmap", daemons[1], "forwarded-only"),
        ):
            instances[label] = start_postfix(label.replace("/", "-"), sink, daemon, mode)
        latencies(instances, sink, 5)  # warm up: processes started, connections cached

        lat = latencies(instances, sink, args.messages)
        rates: dict[str, list[float]] = {name: [] for name in instances}
        for _ in range(args.rounds):
            for name, instance in instances.items():
                rates[name].append(throughput(instance, sink, args.batch))
        if sink.bad:
            print(f"{len(sink.bad)} messages left without an SRS0 sender: {sink.bad[:3]}", file=sys.stderr)
            return 1

        print(f"# {args.messages} messages per instance for latency, {args.rounds} x {args.batch} for throughput;")
        print(f"# load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
        print(f"{'mode':<26} {'latency p50':>12} {'p90':>9} {'msgs/s':>8}  (runs)")
        for name in instances:
            values = sorted(lat[name])
            p90 = values[int(0.9 * (len(values) - 1))]
            runs = ", ".join(f"{r:.0f}" for r in rates[name])
            print(
                f"{name:<26} {statistics.median(values) * 1000:>9.1f} ms {p90 * 1000:>6.1f} ms "
                f"{statistics.median(rates[name]):>8.0f}  ({runs})"
            )
        return 0
    finally:
        for instance in instances.values():
            instance.stop()
        for daemon in daemons:
            daemon.stop()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
