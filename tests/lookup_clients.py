"""Small blocking clients for srsd's lookup protocols: Postfix's tcp_table(5) and
socketmap(5), on a connected socket (see :meth:`tests.srsd_daemon.SrsdDaemon.connect`);
and one policy request / one milter message for tests that drive every endpoint."""

from __future__ import annotations

import re
import socket
from typing import Any

from tests.protocols import milter_wire as w

IO_TIMEOUT = 5.0

_TCP_STATUS = {b"200": "found", b"500": "notfound", b"400": "temp"}
_SM_STATUS = {b"OK": "found", b"NOTFOUND": "notfound", b"TEMP": "temp", b"TIMEOUT": "temp", b"PERM": "perm"}


def tcp_quote(text: str) -> bytes:
    """Postfix's tcp_table key encoding: %XX for whitespace, ``%`` and non-ASCII."""
    return re.sub(rb"[\x00-\x20%\x7f-\xff]", lambda m: b"%%%02X" % m.group()[0], text.encode("utf-8"))


def tcp_unquote(data: bytes) -> bytes:
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes((int(m.group(1), 16),)), data)


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed(f"server closed the connection; unparsed bytes {self.buffer[:200]!r}")
        self.buffer += chunk

    def at_eof(self, timeout: float = IO_TIMEOUT) -> bool:
        """True when the server closed (or reset) the connection within *timeout* s
        and sent nothing more."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        if chunk:
            self.buffer += chunk
            return False
        return True

    def nothing_pending(self, wait: float = 0.2) -> bool:
        """True when no bytes arrive within *wait* s and the connection is open."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return not self.buffer
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        self.buffer += chunk
        return False


class ConnectionClosed(AssertionError):
    pass


class TcpTableClient(_Client):
    def read_raw(self) -> bytes:
        """One reply line including its newline."""
        while b"\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def read(self) -> tuple[str, str]:
        raw = self.read_raw()
        m = re.fullmatch(rb"(200|400|500) (\S*)\n", raw)
        assert m, f"malformed tcp_table reply {raw!r}"
        return _TCP_STATUS[m.group(1)], tcp_unquote(m.group(2)).decode("utf-8", "surrogateescape")

    def request(self, key: str) -> None:
        self.send(b"get " + tcp_quote(key) + b"\n")

    def lookup(self, map_name: str, key: str) -> tuple[str, str]:  # map_name: fixed by the endpoint
        self.request(key)
        return self.read()


class SocketmapClient(_Client):
    def read_raw(self) -> bytes:
        """One reply netstring's payload."""
        while True:
            m = re.match(rb"(\d{1,9}):", self.buffer)
            if m:
                end = m.end() + int(m.group(1))
                if len(self.buffer) > end:
                    assert self.buffer[end : end + 1] == b",", f"netstring without comma: {self.buffer[:200]!r}"
                    payload, self.buffer = self.buffer[m.end() : end], self.buffer[end + 1 :]
                    return payload
            elif self.buffer and not re.fullmatch(rb"\d{1,9}", self.buffer):
                raise AssertionError(f"malformed netstring from server: {self.buffer[:200]!r}")
            self._fill()

    def read(self) -> tuple[str, str]:
        payload = self.read_raw()
        status, sep, text = payload.partition(b" ")
        assert status in _SM_STATUS and sep, f"malformed socketmap reply {payload!r}"
        if status == b"NOTFOUND":
            assert text == b"", f"NOTFOUND with text {payload!r}"
        return _SM_STATUS[status], text.decode("utf-8", "surrogateescape")

    def request(self, map_name: str, key: str) -> None:
        self.send(netstring(f"{map_name} {key}".encode()))

    def lookup(self, map_name: str, key: str) -> tuple[str, str]:
        self.request(map_name, key)
        return self.read()


# -- policy and milter, one request each ---------------------------------------------------


def milter_message(sock: socket.socket, session: bytes, timeout: float = 20.0) -> list[tuple]:
    """Send one message's events; the replies up to its end-of-message verdict (after the
    header changes, a continue or accept)."""
    sock.sendall(session)
    sock.settimeout(timeout)
    out = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, f"milter closed the connection: {out!r}"
        out += chunk
        try:
            replies = w.describe(out)
        except AssertionError:  # a reply cut in two: read on
            continue
        changes = [i for i, r in enumerate(replies) if r[0] in "ihm"]
        if changes and replies[-1][0] in "ca" and len(replies) - 1 > changes[-1]:
            return replies


def policy_request(**attrs: str) -> bytes:
    """A Postfix policy request (SMTPD_POLICY_README) at RCPT, *attrs* on top of the defaults."""
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": "192.0.2.1",
        "helo_name": "mail.orig.example",
        "sender": "alice@orig.example",
        "recipient": "bob@local.example",
    }
    return b"".join(f"{k}={v}\n".encode() for k, v in (base | attrs).items()) + b"\n"
