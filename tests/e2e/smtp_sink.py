"""A minimal SMTP server on loopback that records every message it is given.

It stands in for "the rest of the Internet": the private Postfix relays all
non-local mail to it. Only what the tests need: HELO/EHLO, MAIL, RCPT, DATA,
RSET, NOOP, QUIT, no extensions beyond 8BITMIME, no TLS, no AUTH. Recipients in
``refused_recipients`` get 550 at RCPT, as a remote site's unknown user.
"""

from __future__ import annotations

import dataclasses
import email.message
import email.parser
import email.policy
import re
import socket
import socketserver
import threading
import time

_PATH = re.compile(rb"^(MAIL FROM|RCPT TO):\s*<([^>]*)>", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    helo: str

    @property
    def headers(self) -> email.message.EmailMessage:
        return email.parser.BytesParser(policy=email.policy.default).parsebytes(self.data, headersonly=True)

    def __str__(self) -> str:
        return f"MAIL FROM:<{self.mail_from}> RCPT TO:{list(self.rcpt_tos)} Subject: {self.headers.get('Subject')!r}"


def marked_message(marker: str, sender: str, recipients: list[str]) -> bytes:
    """A small test message (CRLF) whose Subject and Message-ID carry *marker*, the
    string the tests find it by; From: is *sender*, To: the *recipients*."""
    return (
        f"From: {sender}\r\n"
        f"To: {', '.join(recipients)}\r\n"
        f"Subject: {marker}\r\n"
        f"Message-ID: <{marker}@client.test>\r\n"
        "\r\n"
        f"Test message {marker}.\r\n"
    ).encode("ascii")


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """The header fields of message *data* as they arrived: (name, value) in order,
    values unfolded and stripped."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields = []
    for line in re.sub(r"\r\n(?=[ \t])", "", head).split("\r\n"):
        name, colon, value = line.partition(":")
        assert colon, f"not a header line: {line!r}"
        fields.append((name, value.strip()))
    return fields


def header_values(data: bytes, name: str) -> list[str]:
    """The values of every *name* field (case-insensitive), in order."""
    return [value for field, value in header_fields(data) if field.lower() == name.lower()]


class _SessionHandler(socketserver.StreamRequestHandler):
    timeout = 30
    server: _SinkServer

    def setup(self) -> None:
        super().setup()
        # Each reply line is its own write: without TCP_NODELAY, Nagle holds the second
        # line of a multi-line reply until the client's delayed ACK (~40 ms a message).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self.reply("220 sink.test ESMTP test sink")
        helo, mail_from, rcpts = "", None, []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            command = line.rstrip(b"\r\n")
            verb = command[:4].upper()
            if verb in (b"HELO", b"EHLO"):
                helo = command[5:].decode("ascii", "replace")
                mail_from, rcpts = None, []
                if verb == b"EHLO":
                    self.reply("250-sink.test")
                    self.reply("250 8BITMIME")
                else:
                    self.reply("250 sink.test")
            elif verb in (b"MAIL", b"RCPT"):
                match = _PATH.match(command)
                if not match:
                    self.reply("501 5.5.4 Syntax error in path")
                elif verb == b"MAIL":
                    mail_from, rcpts = match.group(2).decode("utf-8", "replace"), []
                    self.reply("250 2.1.0 Ok")
                elif mail_from is None:
                    self.reply("503 5.5.1 MAIL first")
                elif self.server.sink.refuses(address := match.group(2).decode("utf-8", "replace")):
                    self.reply(f"550 5.1.1 <{address}>: Recipient address rejected: User unknown")
                else:
                    rcpts.append(address)
                    self.reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                if mail_from is None or not rcpts:
                    self.reply("503 5.5.1 MAIL and RCPT first")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                data = self._read_data()
                if data is None:
                    return
                self.server.sink.record(ReceivedMessage(mail_from, tuple(rcpts), data, helo))
                self.reply("250 2.0.0 Ok: queued")
                mail_from, rcpts = None, []
            elif verb == b"RSET":
                mail_from, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == b"NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Command not implemented")

    def _read_data(self) -> bytes | None:
        lines = []
        while True:
            line = self.rfile.readline(1 << 20)
            if not line:
                return None
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)


class _SinkServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink
        super().__init__(("127.0.0.1", 0), _SessionHandler)


class SmtpSink:
    """Threaded SMTP sink on 127.0.0.1, on a port the kernel picks."""

    def __init__(self) -> None:
        self._messages: list[ReceivedMessage] = []
        #: RCPT TO addresses (lower case) answered 550, as a remote site refuses a user
        self.refused_recipients: set[str] = set()
        self._changed = threading.Condition()
        self._server = _SinkServer(self)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="smtp-sink", daemon=True)

    def start(self) -> SmtpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def refuses(self, recipient: str) -> bool:
        return recipient.lower() in self.refused_recipients

    def record(self, message: ReceivedMessage) -> None:
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._changed:
            return list(self._messages)

    def matching(self, marker: str) -> list[ReceivedMessage]:
        needle = marker.encode("ascii")
        return [m for m in self.messages if needle in m.data]

    def wait_for(self, marker: str, timeout: float = 15.0) -> ReceivedMessage:
        """The first message whose data contains `marker`; AssertionError at the deadline."""
        needle = marker.encode("ascii")
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self._messages:
                    if needle in message.data:
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "\n  ".join(str(m) for m in self._messages) or "(none)"
                    raise AssertionError(
                        f"sink got no message containing {marker!r} within {timeout:.0f} s; it has:\n  {seen}"
                    )
                self._changed.wait(remaining)

    def diagnostics(self) -> str:
        listing = "\n".join(str(m) for m in self.messages) or "(no messages)"
        return f"--- SMTP sink on 127.0.0.1:{self.port} received ---\n{listing}"
