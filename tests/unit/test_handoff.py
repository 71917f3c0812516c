"""srsd.handoff's choices over real socket pairs (the reactor a stand-in that records
readers): fewest first, closes counted before each choice, a child gone or full skipped,
and a connection no one takes closed, not kept. tests/daemon/test_handoff.py runs the
same through srsd's processes."""

from __future__ import annotations

import socket

import pytest

from srsd.handoff import Dealer, received, tell_closed


class _Reactor:
    def __init__(self) -> None:
        self.readers: set = set()

    def addReader(self, reader) -> None:  # noqa: N802
        self.readers.add(reader)

    def removeReader(self, reader) -> None:  # noqa: N802
        self.readers.discard(reader)

    def addSystemEventTrigger(self, *args) -> None:  # noqa: N802
        pass

    def adoptStreamConnection(self, fd, family, factory):  # noqa: N802 (the part serve_connection uses)
        return factory.buildProtocol(None)


class _Port:
    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)

    def stopReading(self) -> None:  # noqa: N802
        pass

    def stopListening(self) -> None:  # noqa: N802
        self.socket.close()


@pytest.fixture
def dealt():
    port = _Port()
    dealer = Dealer(_Reactor(), {"tcp_forward": port})
    clients = []

    def connect() -> socket.socket:
        client = socket.create_connection(port.socket.getsockname())
        clients.append(client)
        connection, _ = port.socket.accept()
        dealer.deal("tcp_forward", connection)
        return client

    yield dealer, connect
    for client in clients:
        client.close()
    dealer.stop()


def _two_children(dealer: Dealer, ready: tuple[str, ...] = ("a", "b")) -> tuple[socket.socket, socket.socket]:
    """Children "a" and "b" serving tcp_forward (their channel ends), *ready* marked ready."""
    a = dealer.add("a", ["tcp_forward"], "lookup process 1")
    b = dealer.add("b", ["tcp_forward"], "lookup process 2")
    for key in ready:
        dealer.ready(key)
    return a, b


def _take(channel: socket.socket) -> list[int]:
    channel.setblocking(False)
    fds = [fd for name, fd in received(channel) or [] if name == "tcp_forward"]
    return fds


def test_fewest_first_and_closes_counted(dealt):
    dealer, connect = dealt
    a, b = _two_children(dealer)
    for _ in range(4):
        connect()
    got_a, got_b = _take(a), _take(b)
    assert (len(got_a), len(got_b)) == (2, 2)
    assert dealer.counts() == {("tcp_forward", "lookup process 1"): 2, ("tcp_forward", "lookup process 2"): 2}
    for fd in got_a:  # a's two close, and it says so
        socket.socket(fileno=fd).close()
        tell_closed(a, "tcp_forward")
    connect()
    connect()
    assert (len(_take(a)), len(_take(b))) == (2, 0)  # read before the choice: no reactor turn needed
    for fd in got_b:
        socket.socket(fileno=fd).close()


def test_a_child_not_ready_gets_connections_last(dealt):
    dealer, connect = dealt
    a, b = _two_children(dealer, ready=("b",))
    for _ in range(3):
        connect()
    assert (len(_take(a)), len(_take(b))) == (0, 3)


def test_a_gone_child_is_skipped_and_an_untaken_connection_closed(dealt):
    dealer, connect = dealt
    a, b = _two_children(dealer)
    a.close()  # the child died; the pool has not heard yet
    connect()
    connect()
    assert len(_take(b)) == 2
    b.close()
    client = connect()  # no one takes it: the client sees it closed, not a hang
    client.settimeout(5)
    assert client.recv(1) == b""


def test_channel_eof_is_none():
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child.setblocking(False)
    assert list(received(child)) == []
    parent.close()
    assert received(child) is None
    child.close()


class _Broken:
    def buildProtocol(self, addr):  # noqa: N802
        raise RuntimeError("a bug in the protocol's start")


def test_a_failing_connection_does_not_stop_the_accepting():
    """Twisted drops a reader whose doRead raises: one connection's failure must not
    leave the parent deaf on that endpoint."""
    port = _Port()
    port.factory = _Broken()
    dealer = Dealer(_Reactor(), {"tcp_forward": port}, local=frozenset({"tcp_forward"}))
    (acceptor,) = dealer._acceptors
    port.socket.setblocking(False)  # as Twisted's port leaves it: doRead accepts until none waits
    clients = [socket.create_connection(port.socket.getsockname()) for _ in range(2)]
    acceptor.doRead()  # both accepted, both fail, nothing raised
    for client in clients:
        client.settimeout(5)
        assert client.recv(1) == b""
        client.close()
    dealer.stop()
