"""Hostile clients of srsd's endpoints: slowloris, idle floods, clients that never
read their replies, 10 MB lines, huge length fields.

Everything here is a plain socket client on loopback, started and closed by the
caller; nothing is left running. Sockets of a flood are non-blocking, driven from
the calling thread.
"""

from __future__ import annotations

import contextlib
import re
import resource
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.protocols import milter_wire as w

#: what each endpoint is fed by a trickling client: a request that never ends
#: within the attack (under the request limits, so srsd keeps buffering it)
TRICKLE = {
    "tcp_forward": b"get trickle" + b"a" * 3000,
    "tcp_reverse": b"get SRS0=trickle" + b"b" * 3000,
    "socketmap": b"4000:forward " + b"c" * 3987 + b",",
    "policy": b"request=smtpd_access_policy\nsender=" + b"d" * 3000,
    "milter": struct.pack("!I", 60001) + b"O" + b"\0" * 60000,
}


def raise_open_files(needed: int) -> None:
    """Let this (client) process hold *needed* descriptors: soft RLIMIT_NOFILE up to
    the hard limit. :raises AssertionError: the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise AssertionError(f"the fault tests need {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connect(address: tuple[int, object], rcvbuf: int = 0) -> socket.socket:
    """A blocking connection to (family, address); *rcvbuf*: a small receive buffer
    (set before connecting, so the window is small from the start)."""
    family, addr = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(addr)
    return sock


@contextlib.contextmanager
def connections(addresses: list[tuple[int, object]]) -> Iterator[list[socket.socket]]:
    """One non-blocking connection to each of *addresses* (repeat an address for
    several), closed at the end of the block. They are opened in bursts smaller
    than a listen backlog (Twisted's is 50): a SYN to a full accept queue is
    dropped, and the client's retry comes a second later."""
    raise_open_files(len(addresses) + 256)
    socks: list[socket.socket] = []
    try:
        for i, address in enumerate(addresses):
            if i % 25 == 24:
                time.sleep(0.01)
            socks.append(connect(address))
            socks[-1].setblocking(False)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def trickle(socks: list[socket.socket], payloads: list[bytes], duration: float, interval: float) -> int:
    """Send each socket the next byte of its payload every *interval* s for *duration* s
    (slowloris); returns the bytes sent. A socket the server closed is left alone."""
    positions = [0] * len(socks)
    alive = [True] * len(socks)
    sent = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for i, sock in enumerate(socks):
            if not alive[i] or positions[i] >= len(payloads[i]):
                continue
            try:
                sent += sock.send(payloads[i][positions[i] : positions[i] + 1], socket.MSG_DONTWAIT)
                positions[i] += 1
            except BlockingIOError:
                pass
            except OSError:
                alive[i] = False
        time.sleep(interval)
    return sent


@dataclass
class Unread:
    """A client that sent requests without reading a reply."""

    sock: socket.socket
    request_size: int
    bytes_sent: int
    blocked: bool  # the server stopped reading from it

    @property
    def requests_sent(self) -> int:
        return self.bytes_sent // self.request_size


def never_read(
    address: tuple[int, object],
    request: bytes,
    max_bytes: int,
    *,
    preamble: bytes = b"",
    block_wait: float = 1.5,
) -> Unread:
    """Send *request* over and over on a new connection without reading, until
    *max_bytes* are sent or no byte could be sent for *block_wait* s (the server
    stopped reading: back-pressure). *preamble* goes first (its replies are read)."""
    sock = connect(address, rcvbuf=4096)
    if preamble:
        sock.sendall(preamble)
    sock.setblocking(False)
    batch = request * max(1, 65536 // len(request))
    sent = 0
    view = memoryview(b"")
    blocked = False
    while sent < max_bytes:
        if not view:
            view = memoryview(batch)
        _, writable, _ = select.select([], [sock], [], block_wait)
        if not writable:
            blocked = True
            break
        try:
            n = sock.send(view)
        except BlockingIOError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            break  # the server closed it (reset: blocked stays False)
        sent += n
        view = view[n:]
    return Unread(sock, len(request), sent, blocked)


#: a complete reply, per endpoint kind, for counting what a never-reading client gets
REPLY = {
    "tcp": re.compile(rb"(?:200|400|500) [^\n]*\n"),
    "socketmap": re.compile(rb"(\d{1,7}):"),
    "policy": re.compile(rb"action=[^\n]*\n\n"),
}


def drain(sock: socket.socket, kind: str, expected: int, timeout: float = 60.0) -> tuple[int, list[bytes]]:
    """Read replies from *sock* until *expected* arrived, the server closed, or
    *timeout* s passed with nothing new; returns (count, the distinct replies seen,
    at most 5)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    buffer = b""
    count = 0
    seen: list[bytes] = []
    while count < expected:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        buffer += chunk
        pos = 0
        while True:
            if kind == "milter":
                if len(buffer) - pos < 4:
                    break
                (length,) = struct.unpack_from("!I", buffer, pos)
                if len(buffer) - pos < 4 + length:
                    break
                reply, pos = buffer[pos : pos + 4 + length], pos + 4 + length
            elif kind == "socketmap":
                m = REPLY[kind].match(buffer, pos)
                if not m or len(buffer) <= m.end() + int(m.group(1)):
                    break
                end = m.end() + int(m.group(1)) + 1
                reply, pos = buffer[pos:end], end
            else:
                m = REPLY[kind].match(buffer, pos)
                if not m:
                    break
                reply, pos = m.group(0), m.end()
            count += 1
            if reply not in seen and len(seen) < 5:
                seen.append(reply)
        buffer = buffer[pos:]
    return count, seen


def milter_negotiation(protocol: int = 0) -> bytes:
    """OPTNEG as an MTA that wants a reply to every event (no SMFIP_NR_* flags)."""
    return w.optneg(protocol=protocol)


def read_available(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """What the server sends on *sock* until it closes or goes quiet for *timeout* s."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the server closed *sock* (EOF or reset) within *timeout* s."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def send_huge(sock: socket.socket, head: bytes, size: int, filler: bytes, tail: bytes) -> int:
    """*head*, then *size* bytes of *filler*, then *tail*, in 64 KiB writes; returns
    the bytes sent (fewer if the server closed the connection)."""
    block = filler * (65536 // len(filler))
    sent = 0
    try:
        sock.sendall(head)
        sent += len(head)
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            sock.sendall(piece)
            sent += len(piece)
            left -= len(piece)
        sock.sendall(tail)
        sent += len(tail)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


__all__ = [
    "TRICKLE",
    "Unread",
    "closed_by_server",
    "connect",
    "connections",
    "drain",
    "milter_negotiation",
    "never_read",
    "raise_open_files",
    "read_available",
    "send_huge",
    "trickle",
]
