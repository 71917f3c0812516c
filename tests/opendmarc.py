"""OpenDMARC 1.4.2 (Debian opendmarc) as a second independent DMARC evaluator for tests.

:class:`OpenDMARC` runs the real ``opendmarc`` milter on a free loopback port and
:meth:`OpenDMARC.evaluate` hands it one message over the milter protocol, as an MTA
would (the MTA side is tests/protocols/milter_wire.py, honouring what the filter asks
for at negotiation: skipped events, events without a reply), and returns the
``dmarc=`` result of the Authentication-Results field it adds.

SPF and DKIM results reach OpenDMARC the way it documents: an Authentication-Results
field of a ``TrustedAuthservIDs`` host in the message (``relay.test``).

OpenDMARC resolves only through ``/etc/resolv.conf`` (libresolv: port 53, no option for
another server), so it runs in a private mount namespace (``unshare -m``) where that
file is a bind mount naming a loopback DNS server on port 53 of an address of its own
(127.0.53.N); nothing else on the machine sees either. The zone is the test's.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import authres
import authres.dmarc

from tests.dnsserver import DNSServer
from tests.protocols import milter_wire as w
from tests.srsd_daemon import free_port

# libmilter's SMFIP_* bits (mfapi.h): events the filter does not want / does not answer
_SKIP = {b"C": 0x1, b"H": 0x2, b"M": 0x4, b"R": 0x8, b"B": 0x10, b"L": 0x20, b"N": 0x40, b"T": 0x200}
_NO_REPLY = {b"C": 0x1000, b"H": 0x2000, b"M": 0x4000, b"R": 0x8000, b"T": 0x10000, b"L": 0x80, b"N": 0x40000,
             b"B": 0x80000}  # fmt: skip
_FINAL = set("acrtyd")  # accept, continue, reject, tempfail, reply code, discard

CONFIG = """\
Socket inet:{port}@127.0.0.1
AuthservID opendmarc.test
TrustedAuthservIDs relay.test
SPFSelfValidate false
SPFIgnoreResults false
PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat
RejectFailures false
Syslog false
FailureReports false
RequiredHeaders false
"""


@dataclass(frozen=True)
class OpenDMARCResult:
    result: str  # pass, fail, none, temperror, permerror
    comment: str  # e.g. "p=reject dis=none": p= is the policy it applied (sp for a subdomain)
    header_from: str
    field: str  # the whole Authentication-Results value

    @property
    def policy(self) -> str | None:
        found = re.search(r"\bp=(\w+)", self.comment)
        return found.group(1).lower() if found else None


def available() -> bool:
    return shutil.which("opendmarc") is not None and shutil.which("unshare") is not None


def require() -> None:
    """OpenDMARC is a required test tool (.ci/install): a missing one fails, never skips."""
    assert available(), "opendmarc not installed (apt-get install opendmarc)"


class OpenDMARC:
    """The opendmarc milter and its private DNS server, started by :meth:`start`."""

    def __init__(self, workdir: Path, zone: dict) -> None:
        self.workdir = workdir
        self.zone = zone
        self.port = 0
        self.dns: DNSServer | None = None
        self.process: subprocess.Popen | None = None

    def start(self) -> OpenDMARC:
        self.dns = self._dns_on_port_53()
        self.port = free_port()
        (self.workdir / "opendmarc.conf").write_text(CONFIG.format(port=self.port))
        (self.workdir / "resolv.conf").write_text(f"nameserver {self.dns.host}\noptions timeout:2 attempts:1\n")
        script = 'mount --bind "$1/resolv.conf" /etc/resolv.conf && exec opendmarc -f -l -c "$1/opendmarc.conf"'
        self.process = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(self.workdir)],
            stdout=(self.workdir / "opendmarc.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"opendmarc exited: {self.log()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"opendmarc did not listen on {self.port}: {self.log()}")

    def _dns_on_port_53(self) -> DNSServer:
        for n in range(2, 250):
            server = DNSServer(self.zone, host=f"127.0.53.{n}", port=53)
            try:
                return server.start()
            except (OSError, RuntimeError):
                continue
        raise AssertionError("no 127.0.53.N address with port 53 free")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None
        if self.dns is not None:
            self.dns.stop()
            self.dns = None

    def log(self) -> str:
        path = self.workdir / "opendmarc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnostics(self) -> str:
        return f"opendmarc on {self.port}, log:\n{self.log()}"

    def evaluate(self, header_from: str, mail_from: str, results: list[str], queue_id: str) -> OpenDMARCResult:
        """One message from 192.0.2.1 with ``From: <x@header_from>``, envelope sender
        *mail_from* and ``Authentication-Results: relay.test; <results>``."""
        headers = [
            ("Authentication-Results", " relay.test; " + "; ".join(results or ["none"])),
            ("From", f" <x@{header_from}>"),
            ("To", " <y@fwd.example.com>"),
            ("Subject", " DMARC cross-check"),
            ("Date", " Wed, 02 Dec 2026 12:00:00 +0000"),
            ("Message-ID", f" <{queue_id}@{header_from}>"),
        ]
        events: list[bytes] = [
            w.macros(b"C", w.CONNECT_MACROS), w.connect("mail.sender.test", "192.0.2.1"),
            w.macros(b"H", {}), w.helo("mail.sender.test"),
            w.macros(b"M", {"i": queue_id, "{mail_addr}": mail_from}), w.mail(f"<{mail_from}>"),
            w.macros(b"R", {"i": queue_id}), w.rcpt("<y@fwd.example.com>"),
            w.macros(b"T", {"i": queue_id}), w.DATA,
        ]  # fmt: skip
        for name, value in headers:
            events += [w.macros(b"L", {"i": queue_id}), w.header(name, value)]
        events += [w.macros(b"N", {"i": queue_id}), w.EOH, w.macros(b"E", {"i": queue_id}), w.body(b"hello\r\n")]
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(w.optneg())
            ((_, payload),) = self._read(sock, lambda got: len(got) == 1)
            _version, _actions, protocol = struct.unpack_from("!III", payload)
            for event in events:
                command = event[4:5]
                if command != b"D" and protocol & _SKIP.get(command, 0):
                    continue  # the filter asked not to see it
                sock.sendall(event)
                if command != b"D" and not protocol & _NO_REPLY.get(command, 0):
                    self._read(sock, lambda got: len(got) == 1)
            sock.sendall(w.macros(b"E", {"i": queue_id}) + w.EOB)
            replies = self._read(sock, lambda got: bool(got) and got[-1][0] in _FINAL)
            sock.sendall(w.QUIT)
        for command, payload in replies:
            found = self._header(payload[4:] if command == "i" else payload) if command in "hi" else None
            if found is not None:
                return found
        raise AssertionError(f"opendmarc added no Authentication-Results: {replies!r}\n{self.log()}")

    @staticmethod
    def _header(payload: bytes) -> OpenDMARCResult | None:
        """The dmarc= result of an added header field (name NUL value NUL), if it is one."""
        name, value, _ = payload.split(b"\0")
        if name.decode().lower() != "authentication-results":
            return None
        text = value.decode("utf-8", "replace")
        parsed = authres.FeatureContext(authres.dmarc).parse("Authentication-Results: " + " ".join(text.split()))
        for result in parsed.results:
            if result.method == "dmarc":
                comment = re.search(r"dmarc=\w+\s*\(([^)]*)\)", text)  # authres drops result comments
                return OpenDMARCResult(
                    result.result, comment.group(1) if comment else "", result.header_from or "", text
                )
        return None

    @staticmethod
    def _read(sock: socket.socket, done: Callable[[list[tuple[str, bytes]]], bool]) -> list[tuple[str, bytes]]:
        """Replies until *done* says they are complete (a partial packet waits for more)."""
        data = b""
        while True:
            try:
                got = w.replies(data)
            except AssertionError:
                got = []
            if got and done(got):
                return got
            chunk = sock.recv(65536)
            assert chunk, f"opendmarc closed the connection after {data!r}"
            data += chunk
