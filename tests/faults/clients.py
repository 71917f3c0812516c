"""Well-behaved clients of every srsd endpoint, timed: what Postfix does, while a fault
is under way.

:class:`NormalClient` makes one request on a new connection to an endpoint and checks
its answer (a forward lookup is SRS0, a reverse gives the original sender back, the
policy service answers DUNNO to the local client, the milter lets a message pass).
:class:`ProbeLoop` does that on every endpoint in turn, in a thread, for as long as a
fault lasts, and records each answer time and each failure in an Outcome.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import uuid

from tests.faults.measure import Outcome
from tests.lookup_clients import IO_TIMEOUT, SocketmapClient, TcpTableClient
from tests.protocols import milter_wire as w
from tests.srsd_daemon import SrsdDaemon, srs0_pattern

#: endpoints a NormalClient knows how to use
ENDPOINTS = ("tcp_forward", "tcp_reverse", "socketmap", "policy", "milter")


class ProbeFailure(AssertionError):
    pass


def policy_request(
    sender: str, recipient: str, client_address: str = "127.0.0.1", instance: str | None = None
) -> bytes:
    """An smtpd_access_policy request at RCPT, as Postfix 3.7 sends it (abridged).

    :param instance: the message's ``instance`` (None: a new one; ``""``: none, so
        every request is decided on its own).
    """
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": client_address,
        "client_name": "unknown",
        "helo_name": "client.test",
        "sender": sender,
        "recipient": recipient,
        "instance": uuid.uuid4().hex[:12] if instance is None else instance,
    }
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


def read_policy_action(sock: socket.socket) -> str:
    """The next ``action=...`` reply on *sock* (one request's answer)."""
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ProbeFailure(f"policy service closed the connection; got {data!r}")
        data += chunk
    match = re.fullmatch(rb"action=([^\n]+)\n\n", data)
    if not match:
        raise ProbeFailure(f"not one policy reply: {data[:200]!r}")
    return match.group(1).decode("utf-8", "replace")


def milter_message(queue_id: str) -> bytes:
    """A whole milter session for one small message from the local host, as Postfix
    sends it once srsd has negotiated (no replies before end-of-message)."""
    events = w.message_events(
        queue_id,
        "probe@local.example",
        ["someone@remote.example"],
        [("From", " probe@local.example"), ("To", " someone@remote.example"), ("Subject", f" probe {queue_id}")],
        [b"probe\r\n"],
    )
    return w.macros(b"C", w.CONNECT_MACROS) + w.connect(address="127.0.0.1") + events


def read_milter_replies(sock: socket.socket, until: str) -> list[tuple[str, bytes]]:
    """Milter replies from *sock* until one whose command is in *until*."""
    data = b""
    while True:
        if len(data) >= 4:
            complete, pos = [], 0
            while len(data) - pos >= 4:
                (length,) = struct.unpack_from("!I", data, pos)
                if len(data) - pos < 4 + length:
                    break
                complete.append((chr(data[pos + 4]), data[pos + 5 : pos + 4 + length]))
                pos += 4 + length
            if complete and complete[-1][0] in until:
                return complete
        chunk = sock.recv(65536)
        if not chunk:
            raise ProbeFailure(f"milter closed the connection; got {data[:200]!r}")
        data += chunk


class NormalClient:
    """One checked request per call on a new connection to one of *srsd*'s endpoints.

    :param policy_action: the prefix of the policy service's expected action for a
        request from 127.0.0.1 (with the default skip_networks: ``DUNNO``).
    """

    def __init__(self, srsd: SrsdDaemon, policy_action: str = "DUNNO") -> None:
        self.srsd = srsd
        self.policy_action = policy_action
        self._serial = 0
        self._reverse = {}  # an SRS address minted per protocol, and its original sender

    def _sender(self) -> str:
        self._serial += 1
        return f"normal{self._serial}-{uuid.uuid4().hex[:6]}@remote.example"

    def check(self, endpoint: str) -> float:
        """Seconds from connecting to a checked answer on *endpoint*.

        :raises ProbeFailure: a wrong answer, a closed connection or a timeout.
        """
        started = time.monotonic()
        try:
            getattr(self, "_" + endpoint)()
        except ProbeFailure:
            raise
        except (OSError, AssertionError) as exc:
            raise ProbeFailure(f"{endpoint}: {exc!r}") from None
        return time.monotonic() - started

    def _forward(self, client: TcpTableClient | SocketmapClient) -> str:
        sender = self._sender()
        with client:
            status, text = client.lookup("forward", sender)
        if status != "found" or not srs0_pattern(sender).match(text):
            raise ProbeFailure(f"forward {sender}: {status} {text!r}")
        return text

    def _tcp_forward(self) -> None:
        self._forward(self.srsd.tcp_table("forward"))

    def _socketmap(self) -> None:
        self._forward(self.srsd.socketmap())

    def _tcp_reverse(self) -> None:
        if "tcp" not in self._reverse:
            status, srs = self.srsd.lookup("tcp_table", "forward", "bounce-me@remote.example")
            self._reverse["tcp"] = srs
        srs = self._reverse["tcp"]
        with self.srsd.tcp_table("reverse") as client:
            status, text = client.lookup("reverse", srs)
        if (status, text) != ("found", "bounce-me@remote.example"):
            raise ProbeFailure(f"reverse {srs}: {status} {text!r}")

    def _policy(self) -> None:
        with self.srsd.connect("policy") as sock:
            sock.sendall(policy_request(self._sender(), "someone@local.example"))
            action = read_policy_action(sock)
        if not action.startswith(self.policy_action):
            raise ProbeFailure(f"policy: action={action!r}, expected {self.policy_action!r}...")

    def _milter(self) -> None:
        with self.srsd.connect("milter") as sock:
            sock.sendall(w.optneg())
            negotiated = read_milter_replies(sock, "O")
            if negotiated[-1][0] != "O":
                raise ProbeFailure(f"milter negotiation: {negotiated!r}")
            sock.sendall(milter_message(f"P{self._serial}"))
            replies = read_milter_replies(sock, "cat")
            sock.sendall(w.QUIT)
        if replies[-1][0] != "c":
            raise ProbeFailure(f"milter: message not passed on: {replies!r}")


class ProbeLoop:
    """A thread asking every endpoint in *endpoints* in turn until stopped; each answer
    time goes to ``outcome.latency("normal client ENDPOINT")``, each failure to
    ``outcome.fail``."""

    def __init__(
        self,
        client: NormalClient,
        outcome: Outcome,
        endpoints: tuple[str, ...] = ENDPOINTS,
        pause: float = 0.02,
    ) -> None:
        self.client = client
        self.outcome = outcome
        self.endpoints = endpoints
        self.pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-loop", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for endpoint in self.endpoints:
                try:
                    seconds = self.client.check(endpoint)
                except ProbeFailure as exc:
                    self.outcome.fail(f"normal client: {exc}")
                else:
                    self.outcome.latency(f"normal client {endpoint}").add(seconds)
            self._stop.wait(self.pause)

    def __enter__(self) -> ProbeLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(IO_TIMEOUT * 3)
