"""srsd's milter protocol through a real Postfix (smtpd_milters, non_smtpd_milters).

The milter is a small test server (tests/e2e/milter_server.py: MilterFactory with a
handler that inserts ``X-Test: <queue id> <sender> <recipients> ...`` at index 0),
listening where the shipped snippet postfix-snippets/main.cf.milter points Postfix:
a unix socket relative to the queue directory, or (the snippet with that one
address changed) loopback TCP. Then: the header arrives at the top of the relayed
message, two messages share one SMTP session, local submission goes through
non_smtpd_milters, and with the milter gone Postfix answers 4xx and relays nothing.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.srsd_daemon import REPO_ROOT, environment, free_port

from .postfix_instance import SNIPPETS_DIR, PostfixInstance, find_tool
from .smtp_sink import SmtpSink

SNIPPET = "main.cf.milter"
SNIPPET_SOCKET = "unix:srsd/milter.sock"  # relative to the queue directory
READY = "milter ready"
SENDER = "alice@client.example"
RECIPIENT = "bob@remote.example"
_QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


def render_snippet(address: str) -> str:
    """The shipped snippet, with *address* instead of its unix socket if given."""
    text = (SNIPPETS_DIR / SNIPPET).read_text()
    active = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for setting in (
        f"smtpd_milters = {SNIPPET_SOCKET}",
        f"non_smtpd_milters = {SNIPPET_SOCKET}",
        "milter_protocol = 6",
        "milter_default_action = tempfail",
    ):
        assert setting in active, f"{SNIPPET} does not set {setting!r}"
    return text.replace(SNIPPET_SOCKET, address)


class MilterProcess:
    """tests/e2e/milter_server.py in a subprocess, serving *endpoint*."""

    def __init__(self, endpoint: str, log_path: Path) -> None:
        self.endpoint = endpoint
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> MilterProcess:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.milter_server", self.endpoint],
                cwd=REPO_ROOT,
                env=environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(READY) > self.starts:
                self.starts += 1
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"test milter did not start on {self.endpoint}\n{self.diagnostics()}")

    starts = 0

    def kill(self) -> None:
        """SIGKILL: no goodbye to Postfix, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)  # our own child, by PID
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        return f"--- test milter on {self.endpoint} ---\n{self.log_text()[-4000:]}"


class Stack:
    def __init__(self, postfix: PostfixInstance, milter: MilterProcess, sink: SmtpSink) -> None:
        self.postfix = postfix
        self.milter = milter
        self.sink = sink

    def diagnostics(self) -> str:
        return "\n".join((self.milter.diagnostics(), self.postfix.diagnostics(), self.sink.diagnostics()))


@pytest.fixture(scope="module", params=["unix", "tcp"])
def stack(request, sink, tmp_path_factory):
    transport = request.param
    port = free_port()
    postfix = PostfixInstance(
        relay_port=sink.port,
        local_domains=["fwd.example"],
        virtual_aliases={},
        extra_main_cf=render_snippet(SNIPPET_SOCKET if transport == "unix" else f"inet:127.0.0.1:{port}"),
        label=f"milter-{transport}",
    )
    if transport == "unix":
        socket_dir = postfix.queue_dir / "srsd"
        socket_dir.mkdir(mode=0o755)
        endpoint = f"unix:{socket_dir / 'milter.sock'}:mode=666"
    else:
        endpoint = f"tcp:{port}:interface=127.0.0.1"
    milter = MilterProcess(endpoint, tmp_path_factory.mktemp("milter") / "milter.log")
    try:
        milter.start()
        postfix.start()
        yield Stack(postfix, milter, sink)
    finally:
        postfix.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))
        milter.stop()


def new_marker() -> str:
    return f"srsd-milter-{uuid.uuid4().hex}"


def message(marker: str) -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@client.example>\r\n\r\nBody of {marker}.\r\n"
    ).encode("ascii")


def send(client: smtplib.SMTP, marker: str) -> str:
    """One message on an open session; every step must succeed. Returns the queue ID."""
    assert client.mail(SENDER)[0] == 250
    assert client.rcpt(RECIPIENT)[0] == 250
    code, text = client.data(message(marker))
    assert code == 250, (code, text)
    match = _QUEUED.search(text.decode())
    assert match, text
    return match.group(1)


def received(stack: Stack, marker: str):
    try:
        return stack.sink.wait_for(marker, timeout=10)
    except AssertionError:
        stack.postfix.flush()
        return stack.sink.wait_for(marker, timeout=10)


def header_lines(data: bytes) -> list[str]:
    return data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")


def test_header_inserted_at_the_top(stack):
    marker = new_marker()
    with stack.postfix.smtp() as client:
        queue_id = send(client, marker)
    got = received(stack, marker)
    lines = header_lines(got.data)
    assert lines[0] == f"X-Test: {queue_id} {SENDER} {RECIPIENT} helo=client.test client=127.0.0.1", lines
    assert sum(line.startswith("X-Test:") for line in lines) == 1
    assert lines[1].startswith("Received: from client.test")
    assert f"Subject: {marker}" in lines
    assert got.data.endswith(f"\r\n\r\nBody of {marker}.\r\n".encode())
    assert f"message {queue_id}: " in stack.milter.log_text()


def test_two_messages_in_one_session(stack):
    markers = [new_marker(), new_marker()]
    with stack.postfix.smtp() as client:
        queue_ids = [send(client, m) for m in markers]
    assert queue_ids[0] != queue_ids[1]
    for marker, queue_id in zip(markers, queue_ids, strict=True):
        assert header_lines(received(stack, marker).data)[0].startswith(f"X-Test: {queue_id} {SENDER} ")


def test_local_submission_goes_through_non_smtpd_milters(stack):
    marker = new_marker()
    result = subprocess.run(
        [find_tool("timeout"), "30", find_tool("sendmail"), "-C", str(stack.postfix.config_dir), "-f", SENDER, "-i"]
        + [RECIPIENT],
        input=message(marker),
        capture_output=True,
        timeout=40,
    )
    assert result.returncode == 0, result
    first = header_lines(received(stack, marker).data)[0]
    # pickup -> cleanup: Postfix presents local submission as client localhost/127.0.0.1, HELO localhost
    assert re.fullmatch(rf"X-Test: [0-9A-Za-z]+ {SENDER} {RECIPIENT} helo=localhost client=127\.0\.0\.1", first), first


def test_insert_index_and_delete_semantics(stack):
    """How Postfix applies SMFIR_INSHEADER / SMFIR_CHGHEADER (what srsd.mailauth relies on).

    Deletions count the fields as received (srsd sends them first, highest first).
    Each insertion applies to the header as it stands: Postfix's own Received: is
    field 0 (milters never see it) and earlier insertions count; index 0 goes above it.
    """
    marker = f"srsd-order-{uuid.uuid4().hex}"
    raw = (
        f"From: {SENDER}\r\nX-Del: 1\r\nTo: {RECIPIENT}\r\nX-Del: 2\r\nSubject: {marker}\r\nX-Del: 3\r\n\r\nbody\r\n"
    ).encode()
    with stack.postfix.smtp() as client:
        client.sendmail(SENDER, [RECIPIENT], raw)
    lines = header_lines(received(stack, marker).data)
    # the milter saw the fields as received, plus those cleanup added (no Received:)
    assert "headers From X-Del To X-Del Subject X-Del Message-Id Date;" in stack.milter.log_text()
    assert lines[:7] == [
        "X-Folded: line one",
        "\tline two",  # CRLF folding sent as LF on the milter wire, delivered as CRLF
        "X-B: second at 0",
        "X-One: at 1",
        "X-A: first at 0",
        "X-Three: at 3",
        "Received: from client.test (unknown [127.0.0.1])",
    ]
    fields = [line.split(":", 1)[0] for line in lines if not line.startswith(("\t", " "))]
    assert fields[6:] == ["From", "To", "X-Del", "Subject", "Message-Id", "Date"]
    assert "X-Del: 2" in lines


def _refused(stack: Stack, marker: str) -> int:
    """Try to send; the first reply that is not 2xx/3xx (or 250 if all passed)."""
    try:
        client = stack.postfix.smtp()
    except smtplib.SMTPConnectError as exc:
        return exc.smtp_code
    try:
        for code, _ in (client.mail(SENDER), client.rcpt(RECIPIENT)):
            if code >= 400:
                return code
        code, _ = client.data(message(marker))
        return code
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass


def test_milter_down_means_tempfail_then_recovery(stack):
    stack.milter.kill()
    marker = new_marker()
    code = _refused(stack, marker)
    assert 400 <= code < 500, f"Postfix answered {code} with the milter down"
    time.sleep(1)
    assert stack.sink.matching(marker) == [], "mail passed while the milter was down"
    stack.postfix.wait_for_maillog("milter")
    stack.milter.start()
    marker = new_marker()
    with stack.postfix.smtp() as client:
        queue_id = send(client, marker)
    assert header_lines(received(stack, marker).data)[0].startswith(f"X-Test: {queue_id} ")
