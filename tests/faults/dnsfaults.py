"""DNS down (closed port, silent, answering garbage) under SPF-aware rewriting and the
policy service, with mail through Postfix meanwhile.

The stack (:class:`tests.faults.mailflow.ForwardingStack` with ``policy=True``): srsd's
tcp_table maps with ``[spf] aware = true`` for egress 127.0.0.1, and its policy service
in smtpd_recipient_restrictions (``main.cf.policy``); ``[dns] nameservers`` is a
:class:`tests.faults.faultdns.FaultyDNS`. Expected, whatever the DNS does:

* a forward lookup is answered within ``spf.decision_budget`` (+0.25 s, the grace of a
  check past its budget, docs/design.md) and rewrites the sender (temperror: SRS is
  always safe);
* the policy service answers within ``spf.check_budget``: ``PREPEND Received-SPF:
  TempError`` by default, ``DEFER_IF_PERMIT 4.7.24`` with ``policy.temperror_defer``;
  through Postfix that is a Received-SPF header on delivered mail, or a 450 at RCPT.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.smtp_sink import header_values
from tests.faults.clients import policy_request, read_policy_action
from tests.faults.faultdns import FaultyDNS
from tests.faults.mailflow import VIRTUAL, Batch, ForwardingStack
from tests.faults.measure import Outcome, peak_rss_kb, reset_peak_rss
from tests.lookup_clients import netstring
from tests.srsd_daemon import srs0_pattern

#: answers may come this much after a budget (srsd.spf: a check still running 0.25 s
#: past its budget answers temperror) before they count as late in the report
GRACE = 0.25


@dataclass(frozen=True)
class Budgets:
    """srsd's time limits for the run (seconds): ``[dns] timeout``,
    ``[spf] decision_budget``, ``[spf] check_budget``."""

    dns_timeout: float = 2.0
    decision: float = 2.0
    check: float = 10.0

    def sections(self, dns: FaultyDNS, **policy: object) -> dict[str, dict]:
        return {
            "dns": {"nameservers": [dns.address], "timeout": self.dns_timeout},
            "spf": {
                "aware": True,
                "egress_ips": ["127.0.0.1"],
                "decision_budget": self.decision,
                "check_budget": self.check,
            },
            # the test client is 127.0.0.1: an ordinary outside client here
            "policy": {"skip_networks": [], **policy},
        }


def dns_stack(workdir: Path, dns: FaultyDNS, budgets: Budgets) -> ForwardingStack:
    return ForwardingStack(workdir, "tcp_table", milter=False, policy=True, srsd_sections=budgets.sections(dns))


def _fresh(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@d{uuid.uuid4().hex[:12]}.example"


def _in_threads(count: int, threads: int, work) -> None:
    """Call ``work(i)`` for i in range(count) from *threads* threads."""
    lock = threading.Lock()
    todo = iter(range(count))

    def run() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            work(i)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)


def dns_outage(
    stack: ForwardingStack,
    dns: FaultyDNS,
    mode: str,
    budgets: Budgets,
    *,
    lookups: int = 24,
    policy_requests: int = 8,
    messages: int = 6,
    threads: int = 8,
) -> Outcome:
    """One DNS failure *mode*: SPF-aware forward lookups of never-seen domains, policy
    requests in both configurations, and mail through Postfix; see the module docstring."""
    srsd = stack.srsd
    outcome = Outcome(f"DNS {mode}", unit="lookups, policy requests and messages")
    srsd.reload(budgets.sections(dns))
    dns.set_mode(mode)
    reset_peak_rss(srsd.pid)
    outcome.start_rss_kb = peak_rss_kb(srsd.pid)
    queries_before = dns.queries

    def forward(i: int) -> None:
        sender = _fresh(f"fwd{i}")
        protocol = "tcp_table" if i % 2 else "socketmap"
        started = time.monotonic()
        try:
            status, text = srsd.lookup(protocol, "forward", sender)
        except (OSError, AssertionError) as exc:
            outcome.fail(f"forward {sender}: {exc!r}")
            return
        outcome.latency(f"SRS forward (decision budget {budgets.decision} s)").add(time.monotonic() - started)
        if status == "found" and srs0_pattern(sender).match(text):
            outcome.answers += 1
        else:
            outcome.fail(f"forward {sender}: {status} {text!r}, expected rewritten")

    outcome.inputs += lookups
    _in_threads(lookups, threads, forward)

    for defer, expected in ((False, "PREPEND Received-SPF: TempError "), (True, "DEFER_IF_PERMIT 4.7.24 ")):
        srsd.reload(budgets.sections(dns, temperror_defer=defer))
        name = f"policy, temperror_defer={str(defer).lower()} (check budget {budgets.check} s)"

        def ask(i: int, name: str = name, expected: str = expected) -> None:
            started = time.monotonic()
            try:
                with srsd.connect("policy") as sock:
                    sock.sendall(policy_request(_fresh(f"pol{i}"), "fwd-virtual@fwd.example"))
                    action = read_policy_action(sock)
            except (OSError, AssertionError) as exc:
                outcome.fail(f"{name}: {exc!r}")
                return
            outcome.latency(name).add(time.monotonic() - started)
            if action.startswith(expected):
                outcome.answers += 1
            else:
                outcome.fail(f"{name}: action={action!r}, expected {expected!r}...")

        outcome.inputs += policy_requests
        _in_threads(policy_requests, threads, ask)

    # Through Postfix: with temperror_defer the client gets 450 at RCPT ...
    outcome.inputs += 1
    with stack.postfix.smtp() as client:
        client.mail(_fresh("deferred"))
        code, text = client.rcpt(VIRTUAL[0])
    if code == 450 and text.decode().startswith("4.7.24 "):
        outcome.answers += 1
    else:
        outcome.fail(f"RCPT with temperror_defer: {code} {text!r}, expected 450 4.7.24")
    # ... and by default the mail is accepted, marked TempError, forwarded rewritten.
    srsd.reload(budgets.sections(dns))
    batch = Batch(stack, messages, routes=(VIRTUAL,), clients=min(messages, threads)).start()
    batch.join()
    batch.wait_delivered(60)
    mail = batch.count(Outcome("mail"))
    outcome.inputs += mail.inputs
    outcome.answers += mail.answers - mail.failures
    for error in mail.errors:
        outcome.fail(error)
    if mail.lost:
        outcome.fail(f"{mail.lost} messages lost")
    for message in stack.sink.messages:
        if batch.run.encode() in message.data:
            spf = header_values(message.data, "Received-SPF")
            if len(spf) != 1 or not spf[0].startswith("TempError "):
                outcome.fail(f"{message}: Received-SPF {spf}")
    outcome.peak_rss_kb = peak_rss_kb(srsd.pid)
    outcome.notes.append(f"{dns.queries - queries_before} DNS queries reached the {mode} server")
    outcome.notes.append(f"mail: {mail.inputs} messages through Postfix, {mail.answers} delivered; " + mail.notes[0])
    late = _late(outcome, budgets)
    if late:
        outcome.notes.append(f"answers past their budget + {GRACE} s: {late}")
    dns.set_mode("closed")
    return outcome


def _late(outcome: Outcome, budgets: Budgets) -> dict[str, int]:
    late = {}
    for name, latencies in outcome.latencies.items():
        budget = budgets.decision if name.startswith("SRS") else budgets.check
        over = sum(1 for v in latencies.values if v > budget + GRACE)
        if over:
            late[name] = over
    return late


def pipelined_during_outage(stack: ForwardingStack, dns: FaultyDNS, budgets: Budgets, count: int) -> Outcome:
    """*count* forward lookups of never-seen domains pipelined on one socketmap
    connection while DNS is silent: the first ones wait for their SPF checks (up to
    the decision budget), the rest queue behind them in request order, each answered
    rewritten; srsd stops reading past MAX_PENDING waiting replies, so its memory
    stays bounded."""
    srsd = stack.srsd
    outcome = Outcome("pipelined forward lookups with DNS silent", inputs=count)
    srsd.reload(budgets.sections(dns))
    dns.set_mode("silent")
    reset_peak_rss(srsd.pid)
    outcome.start_rss_kb = peak_rss_kb(srsd.pid)
    senders = [_fresh(f"pipe{i}") for i in range(count)]
    started = time.monotonic()
    with srsd.socketmap() as client:
        client.sock.settimeout(max(60.0, budgets.decision * 10))
        sender_thread = threading.Thread(
            target=lambda: client.send(b"".join(netstring(b"forward " + s.encode()) for s in senders)), daemon=True
        )
        sender_thread.start()
        for sender in senders:
            try:
                status, text = client.read()
            except (OSError, AssertionError) as exc:
                outcome.fail(f"reply for {sender}: {exc!r}")
                break
            if status == "found" and srs0_pattern(sender).match(text):
                outcome.answers += 1
            else:
                outcome.fail(f"{sender}: {status} {text!r}")
        sender_thread.join(30)
    outcome.peak_rss_kb = peak_rss_kb(srsd.pid)
    outcome.notes.append(f"all answered in order in {time.monotonic() - started:.1f} s")
    dns.set_mode("closed")
    return outcome
