#!/usr/bin/env python3
"""Forwarded messages/s through a real Postfix whose canonical maps are PostSRSd or srsd.

    python bench/postfix_srs.py [--messages 1000] [--clients 8] [--rounds 3] [--srsd l2]

Issue 11's "Postfix end to end" row (target 3: srsd >= 0.98x). Needs root, Postfix and
/usr/sbin/postsrsd (.ci/install). Starts PostSRSd 1.10 and srsd (``--srsd`` layout, as
bench/lookups.py) with one secret, SRS domain ``fwd.example``, and one private Postfix
per daemon (tests/e2e/postfix_instance.py) with ``sender_canonical_maps`` /
``recipient_canonical_maps`` on that daemon's tcp_table ports, as
postfix-snippets/main.cf.tcp_table. Each run sends ``--messages`` messages from
``--clients`` SMTP clients in parallel, every one to an alias that forwards it
off-host, from a sender of its own (no two lookups alike within a run), and waits
until the SMTP sink has them all; the envelope sender of every delivered message
must be the SRS0 address the daemon's own lookup gives (checked, not timed).
Rounds alternate PostSRSd, srsd, then srsd, PostSRSd (the order flips every round),
and each prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

import lookups  # noqa: E402  (a sibling script in bench/)

ALIAS = "forward-me@fwd.example"
TARGET = "someone@remote.example"


def send(port: int, senders: list[str], clients: int) -> None:
    """One message per sender, *clients* SMTP sessions in parallel."""
    chunks = [senders[i::clients] for i in range(clients)]
    errors: list[BaseException] = []

    def worker(chunk: list[str]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.orig.example", timeout=120) as client:
                for sender in chunk:
                    body = f"From: {sender}\r\nTo: {ALIAS}\r\nSubject: bench\r\n\r\n" + "forwarded text\r\n" * 60
                    client.sendmail(sender, [ALIAS], body.encode())
        except BaseException as exc:  # shown below: a failed client must not look fast
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"SMTP client failed: {errors[0]!r}")


def wait_for(sink, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.messages) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(sink.messages)} of {count} messages arrived")
        time.sleep(0.02)


def clear(sink) -> None:
    with sink._changed:
        sink._messages.clear()


def run(instance, sink, server: lookups.Server, senders: list[str], clients: int) -> float:
    """Messages/s of one run; checks every delivered envelope sender against the
    daemon's own forward lookup."""
    clear(sink)
    started = time.monotonic()
    send(instance.smtpd_port, senders, clients)
    wait_for(sink, len(senders), 600)
    rate = len(senders) / (time.monotonic() - started)
    delivered = {m.mail_from for m in sink.messages}
    sample = senders[:: max(1, len(senders) // 50)]
    expected = lookups.ask(server.forward_port, sample)
    for sender, answer in zip(sample, expected, strict=True):
        assert answer.startswith("200 SRS0="), (server.name, sender, answer)
        assert answer[4:] in delivered, f"{server.name}: {sender} did not leave as {answer[4:]}"
    if not all(s.startswith("SRS0=") for s in delivered):
        raise RuntimeError(f"{server.name}: a message left without an SRS sender")
    return rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--srsd", default="l2", help="srsd layout (bench/lookups.py --srsd), default l2")
    args = p.parse_args()
    if os.geteuid() != 0 or not os.access(lookups.POSTSRSD, os.X_OK) or not shutil.which("postfix"):
        return print("needs root, postfix and /usr/sbin/postsrsd (bash .ci/install)") or 2

    from tests.e2e.postfix_instance import PostfixInstance
    from tests.e2e.smtp_sink import SmtpSink

    workdir = Path(tempfile.mkdtemp(prefix="srsd-bench-postfix-"))
    secrets_path = workdir / "secrets"
    secrets_path.write_bytes(secrets.token_urlsafe(24).encode() + b"\n")
    servers, instances = [], []
    sink = SmtpSink().start()
    try:
        servers = [lookups.start_postsrsd(workdir, secrets_path), lookups.start_srsd(workdir, secrets_path, args.srsd)]
        for server in servers:
            maps = (
                f"sender_canonical_maps = tcp:127.0.0.1:{server.forward_port}\n"
                "sender_canonical_classes = envelope_sender\n"
                f"recipient_canonical_maps = tcp:127.0.0.1:{server.reverse_port}\n"
                "recipient_canonical_classes = envelope_recipient,header_recipient\n"
            )
            instance = PostfixInstance(
                relay_port=sink.port,
                local_domains=["fwd.example"],
                virtual_aliases={ALIAS: TARGET},
                extra_main_cf=maps,
                label=f"bench-{server.name.replace(' ', '-')}",
            )
            instances.append(instance.start())
            run(instance, sink, server, ["warm@up.example"], 1)  # processes and connections up
        print(
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
            f"{args.messages} forwarded messages per run, {args.clients} SMTP clients"
        )
        rates: dict[str, list[float]] = {s.name: [] for s in servers}
        ratios = []
        serial = 0
        for number in range(1, args.rounds + 1):
            pairs = list(zip(servers, instances, strict=True))
            # A B, then B A: neither side always runs right after the other's queue drained.
            for server, instance in pairs if number % 2 else pairs[::-1]:
                senders = [f"user{serial + i}@orig{(serial + i) % 97}.example" for i in range(args.messages)]
                serial += args.messages
                rates[server.name].append(run(instance, sink, server, senders, args.clients))
            base, mine = (rates[s.name][-1] for s in servers)
            ratios.append(mine / base)
            print(
                f"  round {number}: PostSRSd {base:.0f} msgs/s, {servers[1].name} {mine:.0f} msgs/s ({ratios[-1]:.2f}x)"
            )
        print("\n| path | Postfix + PostSRSd | Postfix + srsd | ratio (median of pairs, range) |")
        print("|---|---|---|---|")
        base, mine = (lookups.median(rates[s.name]) for s in servers)
        print(
            f"| {args.messages} msgs, {args.clients} SMTP clients | {base:.0f} msgs/s | {mine:.0f} msgs/s "
            f"({servers[1].name}) | {lookups.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
        return 0
    finally:
        for instance in instances:
            instance.stop()
        for server in servers:
            server.stop()
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
