"""Hostile or broken clients against a real ``srsd serve``.

Each misbehaving client must get the protocol-correct reply (see the docstrings
of srsd/protocols/tcp_table.py and socketmap.py) while a well-behaved client on
another connection is served meanwhile and afterwards, and the daemon logs no
traceback.
"""

from __future__ import annotations

import itertools
import socket
import struct

import pytest

from tests.lookup_clients import ConnectionClosed, netstring
from tests.srsd_daemon import srs0_pattern

_serial = itertools.count()


class Bystander:
    """A well-behaved client on each protocol, connected before the trouble starts."""

    def __init__(self, srsd) -> None:
        self.srsd = srsd
        self.tcp = srsd.tcp_table("forward")
        self.sm = srsd.socketmap()

    def check(self) -> None:
        """Both connections and a brand-new one on each protocol are served."""
        for client, map_name in ((self.tcp, "forward"), (self.sm, "forward")):
            sender = f"bystander{next(_serial)}@remote.example"
            status, text = client.lookup(map_name, sender)
            assert status == "found" and srs0_pattern(sender).match(text), (status, text)
        for protocol in ("tcp_table", "socketmap"):
            sender = f"newcomer{next(_serial)}@remote.example"
            status, text = self.srsd.lookup(protocol, "forward", sender)
            assert status == "found" and srs0_pattern(sender).match(text), (protocol, status, text)

    def close(self) -> None:
        self.tcp.close()
        self.sm.close()


@pytest.fixture
def bystander(srsd):
    before = len(srsd.log_text())
    watcher = Bystander(srsd)
    watcher.check()
    yield watcher
    watcher.check()  # afterwards
    watcher.close()
    assert srsd.running(), srsd.diagnostics()
    new_log = srsd.log_text()[before:]
    for bad in ("Traceback", "Unhandled Error", "critical:"):
        assert bad not in new_log, f"srsd logged {bad!r}:\n{new_log}"


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashing client would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _assert_tcp_open_and_working(client) -> None:
    sender = f"after{next(_serial)}@remote.example"
    status, text = client.lookup("forward", sender)
    assert status == "found" and srs0_pattern(sender).match(text), (status, text)


# -- tcp_table ----------------------------------------------------------------------


def test_tcp_binary_junk(srsd, bystander):
    junk_lines = [bytes(b for b in range(256) if b != 0x0A), b"\x00\xff\xfe\r", b"\x1b[2J\x07", b"", b"\xc3\x28 x"]
    with srsd.tcp_table("forward") as client:
        client.send(b"\n".join(junk_lines) + b"\n")
        bystander.check()  # meanwhile
        for line in junk_lines:
            status, text = client.read()
            assert status == "notfound", (line, status, text)
        assert client.nothing_pending()
        _assert_tcp_open_and_working(client)


def test_tcp_binary_key_is_answered_well_formed(srsd, bystander):
    with srsd.tcp_table("forward") as client:
        client.send(b"get \x00\x01\xff\xfe@\x80.example\n")
        raw = client.read_raw()
        assert raw[:4] in (b"200 ", b"500 "), raw
        _assert_tcp_open_and_working(client)


def test_tcp_100kb_line_without_newline(srsd, bystander):
    limit = 4096  # limits.max_request_bytes default
    with srsd.tcp_table("forward") as client:
        client.send(b"get " + b"a" * 100_000)
        status, text = client.read()  # answered once it is over the limit, still unfinished
        assert status == "notfound" and str(limit) in text, (status, text)
        bystander.check()  # meanwhile, with the long line still open
        client.send(b"b" * 1000)
        assert client.nothing_pending(), "more than one answer for one over-long request"
        client.send(b"\n")
        assert client.nothing_pending(), "the end of the over-long request was answered again"
        _assert_tcp_open_and_working(client)


def test_tcp_long_line_in_one_write_with_newline(srsd, bystander):
    with srsd.tcp_table("forward") as client:
        client.send(b"get " + b"a" * 100_000 + b"@remote.example\nget x@remote.example\n")
        assert client.read()[0] == "notfound"
        status, text = client.read()
        assert status == "found" and srs0_pattern("x@remote.example").match(text), (status, text)
        assert client.nothing_pending()


@pytest.mark.parametrize("key", [b"a%zz@remote.example", b"a%4@remote.example", b"abc%", b"%%41@x.example", b"%g0"])
def test_tcp_bad_percent_escape(srsd, bystander, key):
    with srsd.tcp_table("forward") as client:
        client.send(b"get " + key + b"\n")
        bystander.check()
        status, text = client.read()
        assert status == "notfound", (status, text)
        _assert_tcp_open_and_working(client)


@pytest.mark.parametrize(
    "line",
    [
        b"put user@remote.example SRS0=x",
        b"foo bar",
        b"GET user@remote.example",
        b"get",
        b"getuser@remote.example",
        b"delete user@remote.example",
        b" get user@remote.example",
    ],
)
def test_tcp_unknown_command(srsd, bystander, line):
    with srsd.tcp_table("forward") as client:
        client.send(line + b"\n")
        status, text = client.read()
        assert status == "notfound", (line, status, text)
        assert client.nothing_pending()
        _assert_tcp_open_and_working(client)


@pytest.mark.parametrize(
    ("endpoint", "partial"),
    [
        ("tcp_forward", b"get user@rem"),
        ("tcp_forward", b"get user@remote.example\n" * 100),
        ("tcp_reverse", b"get SRS0=abcd=AB=orig.example=carol@fwd.ex"),
        ("socketmap", b"40:forward user@"),
        ("socketmap", b"4"),
        ("socketmap", netstring(b"forward user@remote.example") * 100),
    ],
)
def test_abrupt_disconnect_mid_request(srsd, bystander, endpoint, partial):
    for _ in range(5):
        sock = srsd.connect(endpoint)
        sock.sendall(partial)
        _reset(sock)
    bystander.check()


def test_half_closed_client_still_gets_answers(srsd, bystander):
    """Postfix never half-closes, but an admin's ``printf 'get a@b.example\\n' | socat - TCP:...``
    (or ``nc -N``) does: the answer to what was sent before the FIN must still arrive."""
    for attempt in range(20):  # a race: it fails most of the time, not always
        sock = srsd.connect("tcp_forward")
        try:
            sock.sendall(b"get user@remote.example\n")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        finally:
            sock.close()
        assert data.startswith(b"200 SRS0=") and data.endswith(b"\n"), f"attempt {attempt}: got {data!r}"


# -- socketmap ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        b"abc:forward x,",
        b":forward x,",
        b"-5:forward,",
        b"12345678:forward x,",
        b"\x00\xff\xfe\n",
        b"5:abcdeX",
        b"get user@remote.example\n",
        b" 5:hello,",
    ],
)
def test_socketmap_framing_error_is_perm_then_closed(srsd, bystander, junk):
    with srsd.socketmap() as client:
        client.send(junk)
        status, text = client.read()
        assert status == "perm", (junk, status, text)
        assert client.at_eof(), f"connection left open after a framing error; got {client.buffer!r}"


def test_socketmap_good_requests_before_junk_are_answered(srsd, bystander):
    with srsd.socketmap() as client:
        client.send(netstring(b"forward a@remote.example") + netstring(b"forward b@remote.example") + b"xyz:")
        assert client.read()[0] == "found"
        assert client.read()[0] == "found"
        assert client.read()[0] == "perm"
        assert client.at_eof()


@pytest.mark.parametrize("size", [4097, 5000, 100_000, 1_000_000])
def test_socketmap_oversize_netstring(srsd, bystander, size):
    payload = b"forward " + b"a" * (size - len(b"forward ") - len(b"@remote.example")) + b"@remote.example"
    assert len(payload) == size
    with srsd.socketmap() as client:
        client.send(b"%d:" % size + payload[:2000])
        status, text = client.read()  # answered as soon as the length is known
        assert status == "notfound", (status, text)
        bystander.check()  # meanwhile, mid-netstring
        client.send(payload[2000:] + b",")
        assert client.nothing_pending()
        sender = f"after{next(_serial)}@remote.example"
        status, text = client.lookup("forward", sender)
        assert status == "found" and srs0_pattern(sender).match(text), (status, text)


@pytest.mark.parametrize("payload", [b"nosuchmap user@remote.example", b"Forward user@remote.example", b"", b" x"])
def test_socketmap_unknown_map_name(srsd, bystander, payload):
    with srsd.socketmap() as client:
        client.send(netstring(payload))
        status, text = client.read()
        assert status == "perm", (payload, status, text)
        assert "forward" in text and "reverse" in text, text
        sender = f"after{next(_serial)}@remote.example"
        status, text = client.lookup("forward", sender)
        assert status == "found" and srs0_pattern(sender).match(text), "connection not usable after unknown map"


@pytest.mark.parametrize("payload", [b"forward", b"forward ", b"reverse", b"forward @", b"forward user@"])
def test_socketmap_empty_or_incomplete_key(srsd, bystander, payload):
    with srsd.socketmap() as client:
        client.send(netstring(payload))
        assert client.read()[0] == "notfound"


# -- pipelining -----------------------------------------------------------------------

N_PIPELINED = 1000


@pytest.mark.parametrize("protocol", ["tcp_table", "socketmap"])
def test_pipelined_1000(srsd, bystander, protocol):
    senders = [f"pipe{i}@remote.example" for i in range(N_PIPELINED)]
    if protocol == "tcp_table":
        client, requests = srsd.tcp_table("forward"), [b"get %s\n" % s.encode() for s in senders]
    else:
        client, requests = srsd.socketmap(), [netstring(b"forward " + s.encode()) for s in senders]
    with client:
        client.send(b"".join(requests))
        bystander.check()
        for sender in senders:
            status, text = client.read()
            assert status == "found" and srs0_pattern(sender).match(text), (sender, status, text)
        assert client.nothing_pending()


def test_pipelined_mixed_good_and_bad_keep_order(srsd, bystander):
    requests, expected = [], []
    for i in range(300):
        kind = i % 3
        if kind == 0:
            requests.append(b"get m%d@remote.example\n" % i)
            expected.append(("found", f"m{i}@remote.example"))
        elif kind == 1:
            requests.append(b"get bad%%z%d\n" % i)
            expected.append(("notfound", None))
        else:
            requests.append(b"get \n")
            expected.append(("notfound", None))
    with srsd.tcp_table("forward") as client:
        client.send(b"".join(requests))
        for want_status, sender in expected:
            status, text = client.read()
            assert status == want_status
            if sender:
                assert srs0_pattern(sender).match(text), (sender, text)


def test_client_that_never_reads(srsd, bystander):
    """A client that pipelines lots and never reads must not stall others."""
    sock = srsd.connect("tcp_forward")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2)
        try:
            for _ in range(50):
                sock.sendall(b"get someone@remote.example\n" * 2000)
        except (TimeoutError, ConnectionError):
            pass  # the server stopped reading from us: fine
        bystander.check()
    finally:
        _reset(sock)


def test_eof_after_error_is_not_a_traceback(srsd, bystander):
    with srsd.socketmap() as client:
        client.send(b"zz")
        try:
            status, _ = client.read()
        except ConnectionClosed:
            pytest.fail("closed without a PERM answer")
        assert status == "perm"


def test_many_concurrent_connections(srsd, bystander):
    tcp = [(srsd.tcp_table("forward"), f"tc{i}@remote.example") for i in range(100)]
    sm = [(srsd.socketmap(), f"sm{i}@remote.example") for i in range(100)]
    try:
        for client, sender in tcp:  # every request out before any reply is read
            client.request(sender)
        for client, sender in sm:
            client.request("forward", sender)
        bystander.check()
        for client, sender in tcp + sm:
            status, text = client.read()
            assert status == "found" and srs0_pattern(sender).match(text), (sender, status, text)
    finally:
        for client, _ in tcp + sm:
            client.close()
