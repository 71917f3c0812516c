"""A forwarding host on loopback, and batches of mail through it, counted.

:class:`ForwardingStack`: the SMTP sink (the rest of the world), ``srsd serve`` on fixed
loopback ports (so a restart comes back where Postfix looks) with the lookup endpoints
and the DKIM milter on a unix socket, and a private Postfix with one canonical-map
snippet (``main.cf.tcp_table`` or ``main.cf.socketmap``) and ``main.cf.milter``, both as
shipped (ports changed); the milter is optional. Mail is forwarded three ways: to a
virtual alias (cleanup expands it when smtpd receives the message), to an aliases(5)
entry, which local(8) forwards through cleanup again once the message is queued, and
to another aliases(5) entry whose mail smtpd puts on hold (access(5) ``HOLD``) until
:meth:`ForwardingStack.release_held`: mail already accepted that needs srsd again
when it is delivered, at a moment the test chooses.

:class:`Batch` submits N messages from a few SMTP clients that behave like a sending
MTA: a 4xx (or a dropped connection) is retried after a pause, a 5xx is a refusal
(what the sender would bounce). :meth:`Batch.count` then checks every message at the
sink: delivered, envelope sender rewritten to SRS0, DKIM-signed, no bounce.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import smtplib
import socket
import threading
import time
import uuid
from pathlib import Path

from tests.e2e.postfix_instance import PostfixInstance, render_snippet
from tests.e2e.smtp_sink import ReceivedMessage, SmtpSink, header_values
from tests.faults.measure import Outcome, peak_rss_kb
from tests.srsd_daemon import SrsdDaemon, free_port, run_cli, srs0_pattern, tcp_endpoint

SRS_DOMAIN = "fwd.example"
LOCAL_DOMAINS = ["fwd.example", "local.example"]
VIRTUAL_ALIAS, VIRTUAL_TARGET = "fwd-virtual@fwd.example", "v-target@remote.example"
LOCAL_ALIAS, LOCAL_TARGET = "fwd-local@fwd.example", "l-target@remote.example"
HELD_ALIAS, HELD_TARGET = "fwd-held@fwd.example", "h-target@remote.example"
#: (recipient, where it arrives at the sink)
VIRTUAL = (VIRTUAL_ALIAS, VIRTUAL_TARGET)
LOCAL = (LOCAL_ALIAS, LOCAL_TARGET)
HELD = (HELD_ALIAS, HELD_TARGET)
SNIPPETS = {"tcp_table": "main.cf.tcp_table", "socketmap": "main.cf.socketmap"}
MILTER_SOCKET_DIR = "srsd"  # in the queue directory, as main.cf.milter names it
SELECTOR = "f1"
_QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


class ForwardingStack:
    """Sink, srsd and Postfix for one canonical-map *protocol*; see the module docstring.

    :param workdir: for srsd's files and the DKIM key.
    :param milter: srsd's DKIM milter in the stack (``main.cf.milter``).
    :param policy: srsd's policy service in the stack (``main.cf.policy``, whose
        smtpd_recipient_restrictions replace the HOLD one: no HELD route then). Postfix's
        mynetworks excludes the test client, so that the policy service is asked.
    :param srsd_sections: extra srsd config sections (``dns``, ``spf``, ``limits``, ...).
    :param workers: srsd's ``--workers``.
    """

    def __init__(
        self,
        workdir: Path,
        protocol: str,
        *,
        milter: bool = True,
        policy: bool = False,
        srsd_sections: dict | None = None,
        workers: int = 1,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.protocol = protocol
        self.milter = milter
        self.sink = SmtpSink()
        ports = {name: free_port() for name in ("tcp_forward", "tcp_reverse", "socketmap")}
        self.lookup_ports = dict(ports)
        main_cf = [render_snippet(SNIPPETS[protocol], ports)]
        if policy:
            ports["policy"] = free_port()
            main_cf.append(render_snippet("main.cf.policy", ports, required=("smtpd_recipient_restrictions",)))
        else:
            holds = workdir / "hold-recipients"
            holds.write_text(f"{HELD_ALIAS} HOLD\n")
            main_cf.append(f"smtpd_recipient_restrictions = check_recipient_access texthash:{holds}")
        if milter:
            main_cf.append(render_snippet("main.cf.milter", {}, required=("smtpd_milters", "milter_default_action")))
        self.postfix = PostfixInstance(
            relay_port=self.sink.port,
            local_domains=LOCAL_DOMAINS,
            virtual_aliases={VIRTUAL_ALIAS: VIRTUAL_TARGET},
            aliases={alias.partition("@")[0]: target for alias, target in (LOCAL, HELD)},
            extra_main_cf="\n".join(main_cf),
            label=f"faults-{protocol}",
            mynetworks="192.0.2.0/24" if policy else "127.0.0.0/8",
        )
        # main.cf.milter's layout: <queue>/srsd, group postfix, set-group-ID.
        socket_dir = self.postfix.queue_dir / MILTER_SOCKET_DIR
        socket_dir.mkdir()
        shutil.chown(socket_dir, user="root", group="postfix")
        socket_dir.chmod(0o2750)
        key_dir = workdir / "dkim"
        key_dir.mkdir()
        run_cli("dkim-keygen", "--domain", SRS_DOMAIN, "--selector", SELECTOR, "--out", str(key_dir), check=True)
        sections = {
            "dns": {"nameservers": ["127.0.0.1:9"]},  # local mail is only signed: no lookups
            "dkim": {"selector": SELECTOR, "key_file": str(key_dir / f"{SELECTOR}.private")},
        }
        listen = {name: tcp_endpoint(port) for name, port in ports.items()}
        if milter:
            listen["milter"] = f"unix:{socket_dir / 'milter.sock'}:mode=660"
        self.srsd = SrsdDaemon(
            workdir,
            srs={"domain": SRS_DOMAIN, "local_domains": LOCAL_DOMAINS},
            endpoints=(),
            listen=listen,
            sections=sections | (srsd_sections or {}),
            workers=workers,
            probe=True,
        )

    def start(self) -> ForwardingStack:
        self.sink.start()
        self.srsd.start()
        self.postfix.start()
        return self

    def stop(self) -> int | None:
        """Stop all three; srsd's exit status (None if it was not running)."""
        self.postfix.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))
        code = self.srsd.stop()
        self.sink.stop()
        return code

    def wait_lookups_refused(self, timeout: float = 10.0) -> None:
        """Poll until no process answers on any lookup port: a killed srsd's lookup
        processes are gone too (they stop with their parent), so the outage is real."""
        deadline = time.monotonic() + timeout
        for name, port in self.lookup_ports.items():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except ConnectionRefusedError:
                    break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} (port {port}) still answers {timeout} s after srsd was killed")
                time.sleep(0.02)

    def release_held(self) -> None:
        """Release the held mail (``postsuper -H ALL``) and have it delivered now."""
        self.postfix._run("postsuper", "-H", "ALL", timeout=20)
        self.postfix.flush()

    def diagnostics(self) -> str:
        return "\n".join((self.srsd.diagnostics(), self.postfix.diagnostics(), self.sink.diagnostics()))


def signed(message: ReceivedMessage) -> bool:
    """Whether *message* carries a DKIM-Signature of the SRS domain."""
    return any(f"d={SRS_DOMAIN};" in v.replace(" ", "") for v in header_values(message.data, "DKIM-Signature"))


def compose(marker: str, sender: str, recipient: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {marker}\r\nMessage-ID: <{marker}@client.test>\r\n"
        f"\r\nFault test message {marker}.\r\n"
    ).encode("ascii")


class Batch:
    """*count* messages, each from its own sender, to the *routes* in turn (VIRTUAL,
    LOCAL, HELD), submitted by *clients* SMTP clients in threads; 4xx and dropped
    connections are retried every *retry_pause* s until *deadline* s after :meth:`start`.

    ``accepted`` counts messages Postfix took (250 after DATA); ``temp_replies`` the
    4xx replies by their first 9 characters (``451 4.3.0``); ``refused`` messages a
    5xx turned away.
    """

    def __init__(
        self,
        stack: ForwardingStack,
        count: int,
        *,
        routes: tuple[tuple[str, str], ...] = (VIRTUAL, LOCAL),
        clients: int = 8,
        retry_pause: float = 0.5,
        deadline: float = 300,
    ) -> None:
        self.stack = stack
        self.run = uuid.uuid4().hex[:8]
        self.messages: dict[str, tuple[str, str, str]] = {}  # marker -> (sender, recipient, at the sink)
        for i in range(count):
            recipient, target = routes[i % len(routes)]
            self.messages[f"fault-{self.run}-{i}"] = (f"s{i}-{self.run}@orig{i % 7}.example", recipient, target)
        self.clients = clients
        self.retry_pause = retry_pause
        self.deadline = deadline
        self.accepted: dict[str, str] = {}  # marker -> queue id
        self.refused: dict[str, str] = {}  # marker -> the 5xx reply
        self.temp_replies: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._todo = collections.deque(self.messages)
        self._threads = [threading.Thread(target=self._submit, daemon=True) for _ in range(clients)]
        self.started = 0.0
        self._log_start = 0

    def start(self) -> Batch:
        self.started = time.monotonic()
        self._log_start = len(self.stack.postfix.maillog_text())
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self._threads:
            thread.join(self.deadline + 60)

    def wait_accepted(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.accepted)} of {count} messages accepted in {timeout} s")
            time.sleep(0.01)

    def _next(self) -> str | None:
        with self._lock:
            return self._todo.popleft() if self._todo else None

    def _submit(self) -> None:
        while (marker := self._next()) is not None:
            while True:
                outcome = self._send(marker)
                if outcome == "done" or time.monotonic() - self.started > self.deadline:
                    break
                time.sleep(self.retry_pause)

    def _send(self, marker: str) -> str:
        """One SMTP transaction: "done" (accepted or refused) or "retry"."""
        sender, recipient, _ = self.messages[marker]
        try:
            with self.stack.postfix.smtp() as client:
                for command, arg in (("mail", sender), ("rcpt", recipient)):
                    code, text = getattr(client, command)(arg)
                    if code != 250:
                        return self._refusal(marker, code, text)
                code, text = client.data(compose(marker, sender, recipient))
                if code != 250:
                    return self._refusal(marker, code, text)
        except (smtplib.SMTPException, OSError) as exc:
            with self._lock:
                self.temp_replies[f"connection: {type(exc).__name__}"] += 1
            return "retry"
        match = _QUEUED.search(text.decode("ascii", "replace"))
        with self._lock:
            self.accepted[marker] = match.group(1) if match else "?"
        return "done"

    def _refusal(self, marker: str, code: int, text: bytes) -> str:
        reply = f"{code} {text.decode('ascii', 'replace')}"
        with self._lock:
            if 400 <= code < 500:
                self.temp_replies[reply[:9]] += 1
                return "retry"
            self.refused[marker] = reply
        return "done"

    # -- the count ---------------------------------------------------------------

    def wait_delivered(self, timeout: float) -> float:
        """Wait (one ``postqueue -f`` first) until every accepted message is at the sink;
        returns the seconds it took."""
        started = time.monotonic()
        self.stack.postfix.flush()
        deadline = started + timeout
        while time.monotonic() < deadline and self._missing():
            time.sleep(0.1)
        return time.monotonic() - started

    def _at_sink(self) -> dict[str, list[ReceivedMessage]]:
        found: dict[str, list[ReceivedMessage]] = collections.defaultdict(list)
        for message in self.stack.sink.messages:
            subject = header_values(message.data, "Subject")
            if subject and subject[0] in self.messages:
                found[subject[0]].append(message)
        return found

    def _missing(self) -> list[str]:
        at_sink = self._at_sink()
        return [m for m in self.messages if m not in at_sink]

    def count(self, outcome: Outcome) -> Outcome:
        """Fill *outcome* with this batch's figures: every message must have reached the
        sink, its envelope sender SRS0-rewritten, signed (with the milter); nothing
        bounced."""
        at_sink = self._at_sink()
        outcome.unit = "messages"
        outcome.inputs = len(self.messages)
        outcome.answers = len(at_sink)
        outcome.lost = len(self.messages) - len(at_sink)
        for marker in self.refused:
            outcome.fail(f"{marker} refused: {self.refused[marker]}")
        for marker, copies in at_sink.items():
            sender, _, target = self.messages[marker]
            for message in copies:
                if message.rcpt_tos != (target,) or not srs0_pattern(sender).match(message.mail_from):
                    outcome.fail(f"{marker}: delivered as {message}")
                elif self.stack.milter and not signed(message):
                    outcome.fail(f"{marker}: not signed by {SRS_DOMAIN}")
            if len(copies) > 1:
                outcome.notes.append(f"{marker} delivered {len(copies)} times")
        bounces = [m for m in self.stack.sink.messages if m.mail_from == "" and self.run.encode() in m.data]
        for bounce in bounces:
            outcome.fail(f"bounce: {bounce}")
        log = self.stack.postfix.maillog_text()[self._log_start :]  # since this batch began
        temp = dict(self.temp_replies.most_common(4))
        outcome.notes.append(f"SMTP temporary refusals (retried): {sum(self.temp_replies.values())} {temp}")
        # A delivery that fails for a while shows as the message entering the active queue again.
        activations = collections.Counter(re.findall(r"qmgr\[\d+\]: ([0-9A-F]+): from=.*\(queue active\)", log))
        retried = sum(1 for n in activations.values() if n > 1)
        outcome.counts |= {
            "temp_refusals": sum(self.temp_replies.values()),
            "retried": retried,
            "bounced": log.count("status=bounced"),
        }
        outcome.notes.append(
            f"Postfix: {retried} queued messages retried, {log.count('status=deferred')} deliveries logged deferred, "
            f"{log.count('status=bounced')} bounced"
        )
        return outcome


def sigkill_during_batch(stack: ForwardingStack, count: int, down: float, timeout: float = 180) -> Outcome:
    """SIGKILL srsd once a third of *count* messages are accepted; restart it *down* s
    later on the same sockets. The batch goes on meanwhile (a sender retries 4xx); the
    held third of it is released while srsd is down, so local(8) forwards it through
    srsd's maps then. After the restart and ``postqueue -f`` every message must reach
    the sink rewritten and signed; none bounced, none lost."""
    outcome = Outcome(f"srsd SIGKILLed during a batch ({stack.protocol}{' + milter' if stack.milter else ''})")
    batch = Batch(stack, count, routes=(VIRTUAL, LOCAL, HELD)).start()
    batch.wait_accepted(count // 3)
    before = peak_rss_kb(stack.srsd.pid)
    stack.srsd.kill()
    killed_at = len(batch.accepted)
    stack.wait_lookups_refused()
    down_since = time.monotonic()
    stack.release_held()  # delivered now, through cleanup's lookups: srsd is down
    time.sleep(max(0.0, down - (time.monotonic() - down_since)))
    stack.srsd.start()
    batch.join()
    stack.release_held()  # what was held after the first release
    took = batch.wait_delivered(timeout)
    batch.count(outcome)
    outcome.peak_rss_kb = max(before, peak_rss_kb(stack.srsd.pid))
    outcome.notes.insert(
        0,
        f"killed after {killed_at} accepted, down {down:.0f} s; all delivered {took:.1f} s after the batch "
        f"(postqueue -f), {time.monotonic() - batch.started:.0f} s after it began",
    )
    return outcome
