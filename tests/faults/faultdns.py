"""A nameserver on a fixed loopback port that fails in one of three ways.

* ``closed``: nothing listens on the port (UDP queries draw ICMP port unreachable,
  TCP connections are refused);
* ``silent``: a UDP socket that reads every query and never answers (and a TCP
  listener that accepts and says nothing);
* ``garbage``: every query is answered, with bytes that are not a usable answer, in
  turn: random bytes, the query echoed with QR set but cut off in its question, a
  well-formed answer with another message ID, an answer with the TC bit (which sends
  the client to TCP, where it gets random bytes and a close), and an answer whose
  name is a compression pointer to itself.

:meth:`FaultyDNS.set_mode` switches between them without the port changing, so one
srsd (whose ``[dns] nameservers`` is fixed until a restart) sees all three.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading

from tests.srsd_daemon import free_port

MODES = ("closed", "silent", "garbage")


def _garbage_reply(query: bytes, serial: int) -> bytes:
    """The *serial*-th garbage reply to *query* (see the module docstring)."""
    if len(query) < 12:
        return os.urandom(64)
    (qid,) = struct.unpack_from("!H", query)
    flags = 0x8180  # QR, RD, RA, NOERROR
    kind = serial % 5
    if kind == 0:
        return os.urandom(1 + serial % 600)
    if kind == 1:
        return struct.pack("!HH", qid, flags) + query[4:12] + query[12:14]  # question cut off
    if kind == 2:
        return struct.pack("!HH", qid ^ 0x5A5A, flags) + query[4:]  # someone else's answer
    if kind == 3:
        return struct.pack("!HHHHHH", qid, flags | 0x0200, 1, 0, 0, 0) + query[12:]  # truncated: go to TCP
    # one answer record whose owner name points at itself
    answer = struct.pack("!HHHHHH", qid, flags, 1, 1, 0, 0) + query[12:]
    here = len(answer)
    return answer + struct.pack("!H", 0xC000 | here) + struct.pack("!HHIH", 16, 1, 300, 2) + b"\x01x"


class FaultyDNS:
    """See the module docstring. Threads and sockets are its own; :meth:`stop` ends them."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.mode = "closed"
        self.queries = 0  # UDP datagrams and TCP connections received
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self.stop()
        self.mode = mode
        if mode == "closed":
            return
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", self.port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", self.port))
        tcp.listen(64)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(udp, tcp, self._stop), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            assert self._thread is not None
            self._thread.join(5)
        self._stop = self._thread = None

    def _serve(self, udp: socket.socket, tcp: socket.socket, stop: threading.Event) -> None:
        held: list[socket.socket] = []  # silent mode: accepted TCP connections, never answered
        serial = 0
        try:
            while not stop.is_set():
                readable, _, _ = select.select([udp, tcp], [], [], 0.05)
                for sock in readable:
                    with self._lock:
                        self.queries += 1
                    serial += 1
                    if sock is udp:
                        query, peer = udp.recvfrom(4096)
                        if self.mode == "garbage":
                            udp.sendto(_garbage_reply(query, serial), peer)
                    else:
                        conn, _ = tcp.accept()
                        if self.mode == "garbage":
                            conn.sendall(os.urandom(2 + serial % 300))
                            conn.close()
                        else:
                            held.append(conn)
        finally:
            for sock in (udp, tcp, *held):
                sock.close()
