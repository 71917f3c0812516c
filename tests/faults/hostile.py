"""Hostile clients against every endpoint of one ``srsd serve``, while a normal client
asks each endpoint in turn (:class:`tests.faults.clients.ProbeLoop`).

Each function runs one attack and returns its :class:`Outcome`: the attack's inputs,
the normal client's answer times and failures, srsd's peak RSS over the attack.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.faults import attacks
from tests.faults.clients import ENDPOINTS, NormalClient, ProbeLoop, policy_request, read_policy_action
from tests.faults.measure import Outcome, open_fds, process_tree, reset_tree_peak_rss, tree_peak_rss_kb
from tests.lookup_clients import SocketmapClient, TcpTableClient, netstring
from tests.protocols import milter_wire as w
from tests.srsd_daemon import SrsdDaemon, srs0_pattern

TEN_MB = 10 * 1024 * 1024


def hostile_srsd(workdir: Path, *, max_connections: int = 1000, open_files: int | None = None) -> SrsdDaemon:
    """srsd with all five endpoints on loopback TCP (not started). The milter does not
    sign (no dkim.selector): the attacks are about the protocol, not the crypto.
    DNS points at a closed port: nothing here needs it. The policy service answers
    DUNNO to the normal client (127.0.0.1, skipped) and an X-Comment header that
    repeats the sender to 127.0.0.2 (a whitelisted relay): big replies, no DNS.

    One lookup process (``[daemon] lookup_processes = 1``): limits.max_connections
    counts per process, so with one the limit a test drives is exact.

    :param open_files: srsd's soft RLIMIT_NOFILE at start (None: inherited).
    """
    return SrsdDaemon(
        workdir,
        endpoints=ENDPOINTS,
        sections={
            "limits": {"max_connections": max_connections},
            "daemon": {"lookup_processes": 1},
            "dns": {"nameservers": ["127.0.0.1:9"]},
            "policy": {"skip_networks": ["127.0.0.1/32"], "whitelist_networks": ["127.0.0.0/8"]},
        },
        open_files=open_files,
    )


class _Watch:
    """srsd's peak RSS over a block (VmHWM reset at its start; the whole process tree:
    the lookup processes hold the lookup endpoints' clients) and the normal client."""

    def __init__(self, srsd: SrsdDaemon, outcome: Outcome, endpoints: tuple[str, ...] = ENDPOINTS) -> None:
        self.srsd = srsd
        self.outcome = outcome
        self.probe = ProbeLoop(NormalClient(srsd), outcome, endpoints)

    def __enter__(self) -> _Watch:
        reset_tree_peak_rss(self.srsd.pid)
        self.outcome.start_rss_kb = tree_peak_rss_kb(self.srsd.pid)
        self.probe.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.probe.__exit__()
        self.outcome.peak_rss_kb = tree_peak_rss_kb(self.srsd.pid)
        self.srsd.assert_running()


def _spread(srsd: SrsdDaemon, count: int, endpoints: tuple[str, ...] = ENDPOINTS) -> list[str]:
    return [endpoints[i % len(endpoints)] for i in range(count)]


def slowloris(srsd: SrsdDaemon, connections: int = 300, duration: float = 5.0, interval: float = 0.2) -> Outcome:
    """*connections* clients spread over the endpoints, each sending one byte of a
    request that never completes every *interval* s, for *duration* s."""
    outcome = Outcome("slowloris", unit="connections trickling bytes", inputs=connections)
    names = _spread(srsd, connections)
    with _Watch(srsd, outcome), attacks.connections([srsd.address(n) for n in names]) as socks:
        sent = attacks.trickle(socks, [attacks.TRICKLE[n] for n in names], duration, interval)
        still_open = sum(1 for s in socks if not _closed_now(s))
    outcome.answers = sum(len(lat) for lat in outcome.latencies.values())
    outcome.notes.append(f"{sent} bytes trickled in {duration:.0f} s; {still_open} of {connections} still open")
    return outcome


def _closed_now(sock: socket.socket) -> bool:
    """Whether the server closed non-blocking *sock* (nothing is read from it)."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def idle_flood(srsd: SrsdDaemon, connections: int = 1100, hold: float = 3.0) -> Outcome:
    """*connections* clients spread over the endpoints that connect and say nothing."""
    outcome = Outcome("idle connections", unit="idle connections", inputs=connections)
    with _Watch(srsd, outcome), attacks.connections([srsd.address(n) for n in _spread(srsd, connections)]):
        time.sleep(hold)
        fds = sum(open_fds(p) for p in process_tree(srsd.pid))
    outcome.answers = sum(len(lat) for lat in outcome.latencies.values())
    outcome.notes.append(f"srsd held {fds} file descriptors with them open")
    return outcome


def over_max_connections(srsd: SrsdDaemon, limit: int, extra: int = 50) -> Outcome:
    """*limit* (limits.max_connections) idle clients on tcp_forward, then *extra* more:
    each of those must get a temporary failure and be closed (docs/design.md,
    "Nothing lost"), while the first *limit* and every other endpoint are served."""
    outcome = Outcome("limits.max_connections", unit="connections over the limit", inputs=extra)
    others = tuple(e for e in ENDPOINTS if e != "tcp_forward")
    address = srsd.address("tcp_forward")
    with _Watch(srsd, outcome, others), attacks.connections([address] * limit) as held:
        time.sleep(0.5)  # srsd has accepted them all before the next ones come
        for _ in range(extra):
            try:
                with TcpTableClient(attacks.connect(address)) as client:
                    answer = client.lookup("forward", "over@remote.example")
                    closed = client.at_eof()
            except OSError as exc:
                outcome.fail(f"over the limit: {exc!r}")
                continue
            if answer[0] == "temp" and closed:
                outcome.answers += 1
            else:
                outcome.fail(f"over the limit: {answer} (closed: {closed})")
        for index in (0, limit // 2, limit - 1):  # the ones within the limit still work
            held[index].settimeout(10)
            client = TcpTableClient(held[index])
            status, text = client.lookup("forward", "held@remote.example")
            if status != "found" or not srs0_pattern("held@remote.example").match(text):
                outcome.fail(f"connection {index} within the limit: {status} {text!r}")
        fds = sum(open_fds(p) for p in process_tree(srsd.pid))
    outcome.notes.append(f"srsd held {fds} file descriptors at the limit")
    outcome.notes.append(f"srsd's soft RLIMIT_NOFILE: {_soft_nofile(srsd.pid)}")
    return outcome


def _soft_nofile(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


#: a sender whose SRS form is ~450 bytes: the kernel's socket buffers (~4 MiB) fill with fewer replies
_LONG_SENDER = b"s" * 400 + b"@remote.example"
LONG_FORWARD_REQUEST = b"get " + _LONG_SENDER + b"\n"
#: per endpoint: (reply kind for attacks.drain, one request, what goes first, replies to it)
_UNREAD = {
    "tcp_forward": ("tcp", LONG_FORWARD_REQUEST, b"", 0),
    "socketmap": ("socketmap", netstring(b"forward " + _LONG_SENDER), b"", 0),
    "policy": ("policy", policy_request("p" * 1000 + "@remote.example", "x@local.example", "127.0.0.2", ""), b"", 0),
    # every event answered: no SMFIP_NR_* flags offered; HELO again and again
    "milter": ("milter", w.helo("client.example"), attacks.milter_negotiation() + w.connect(), 2),
}
UNREAD_ENDPOINTS = tuple(_UNREAD)


def never_reading(srsd: SrsdDaemon, endpoint: str, max_bytes: int = 256 * 1024 * 1024) -> Outcome:
    """One client pipelining requests to *endpoint* without reading any reply, until
    srsd stops reading from it or *max_bytes* are sent; then it reads: every request
    sent must be answered. srsd must not buffer the replies without bound."""
    kind, request, preamble, preamble_replies = _UNREAD[endpoint]
    outcome = Outcome(f"never-reading client on {endpoint}", unit="requests pipelined, none read")
    with _Watch(srsd, outcome, tuple(e for e in ENDPOINTS if e != endpoint) + (endpoint,)):
        unread = attacks.never_read(srsd.address(endpoint), request, max_bytes, preamble=preamble)
        time.sleep(0.2)  # whatever srsd still does for it shows in its RSS
        rss_blocked = tree_peak_rss_kb(srsd.pid)
    outcome.inputs = unread.requests_sent
    with unread.sock:
        expected = unread.requests_sent + preamble_replies
        got, seen = attacks.drain(unread.sock, kind, expected)
    outcome.answers = max(0, got - preamble_replies)
    if got < expected:
        outcome.fail(f"{expected - got} of {expected} replies missing; replies seen: {seen!r}")
    how = "srsd stopped reading" if unread.blocked else "srsd kept reading"
    outcome.notes.append(
        f"{how} after {unread.bytes_sent / 1024:.0f} KiB sent; srsd peak RSS then {rss_blocked / 1024:.1f} MiB"
    )
    outcome.notes.append("replies: " + ", ".join(repr(r[:40]) for r in seen))
    return outcome


def huge_inputs(srsd: SrsdDaemon, size: int = TEN_MB) -> Outcome:
    """A *size*-byte line or payload, and length fields far over any limit, on each
    endpoint: each is answered per the protocol and what follows is served."""
    outcome = Outcome("huge lines and length fields", unit="inputs")
    with _Watch(srsd, outcome):
        for name, check in _huge_cases(srsd, size):
            outcome.inputs += 1
            try:
                problem = check()
            except (OSError, AssertionError) as exc:
                problem = repr(exc)
            if problem:
                outcome.fail(f"{name}: {problem}")
            else:
                outcome.answers += 1
    outcome.notes.append(f"{size / 1024 / 1024:.0f} MiB lines / payloads")
    return outcome


def _huge_cases(srsd: SrsdDaemon, size: int) -> Iterator[tuple[str, Callable[[], str]]]:
    def tcp_line(endpoint: str, map_name: str, answers_next) -> Callable[[], str]:
        def run() -> str:
            with TcpTableClient(srsd.connect(endpoint)) as client:
                attacks.send_huge(client.sock, b"get ", size, b"a", b"@remote.example\n")
                first = client.read()
                if first[0] != "notfound":
                    return f"over-long line answered {first}"
                status, text = client.lookup(map_name, "next@remote.example")
                if not answers_next(status, text):
                    return f"next request answered {status} {text!r}"
                return "" if client.nothing_pending() else "more than one answer for the over-long line"

        return run

    def rewritten(status: str, text: str) -> bool:
        return status == "found" and bool(srs0_pattern("next@remote.example").match(text))

    def not_srs(status: str, text: str) -> bool:
        return status == "notfound"

    def socketmap_in_range() -> str:
        with SocketmapClient(srsd.connect("socketmap")) as client:
            payload_size = 9_999_999
            attacks.send_huge(client.sock, b"%d:forward " % payload_size, payload_size - 8, b"e", b",")
            first = client.read()
            if first[0] != "notfound":
                return f"{payload_size}-byte netstring answered {first}"
            status, text = client.lookup("forward", "next@remote.example")
            return "" if status == "found" else f"next request answered {status} {text!r}"

    def closes_with(endpoint: str, data: bytes, check_reply, preamble: bytes = b"") -> Callable[[], str]:
        def run() -> str:
            with srsd.connect(endpoint) as sock:
                if preamble:
                    sock.sendall(preamble)
                    attacks.read_available(sock, timeout=0.5)
                try:
                    sock.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                reply = attacks.read_available(sock)
            return check_reply(reply)

        return run

    def perm(reply: bytes) -> str:
        return "" if b":PERM " in reply else f"not PERM and close: {reply[:80]!r}"

    def tempfail(reply: bytes) -> str:
        return "" if reply.endswith(w.pkt(b"t")) else f"not TEMPFAIL and close: {reply[:80]!r}"

    def policy_line() -> str:
        with srsd.connect("policy") as sock:
            attacks.send_huge(sock, b"request=smtpd_access_policy\nsender=", size, b"f", b"@x\n\n")
            first = read_policy_action(sock)
            sock.sendall(policy_request("next@remote.example", "x@local.example"))
            second = read_policy_action(sock)
        return "" if (first, second) == ("DUNNO", "DUNNO") else f"answered {first!r}, then {second!r}"

    negotiated = w.optneg() + w.macros(b"C", w.CONNECT_MACROS) + w.connect()
    yield from [
        ("tcp_forward 10 MB line", tcp_line("tcp_forward", "forward", rewritten)),
        ("tcp_reverse 10 MB line", tcp_line("tcp_reverse", "reverse", not_srs)),
        ("socketmap 9999999-byte netstring", socketmap_in_range),
        ("socketmap 20-digit length", closes_with("socketmap", b"99999999999999999999:forward x,", perm)),
        ("socketmap length 4294967296", closes_with("socketmap", b"4294967296:forward x,", perm)),
        ("policy 10 MB line", policy_line),
        ("milter length 2^32-1 first", closes_with("milter", b"\xff\xff\xff\xffO", tempfail)),
        ("milter length 2^32-1 after CONNECT", closes_with("milter", b"\xff\xff\xff\xffH", tempfail, negotiated)),
        ("milter header length 2^31", closes_with("milter", b"\x80\x00\x00\x00L", tempfail, negotiated)),
    ]
