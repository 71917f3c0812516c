"""Connections handed to the process serving the fewest: the parent accepts, the children serve.

Where several processes serve one endpoint (``--workers N`` for policy and milter, the
lookup processes for tcp_table and socketmap), the parent accepts every connection and
passes it (``SCM_RIGHTS`` over a ``SOCK_SEQPACKET`` socket pair, unix(7)) to the process
that holds the fewest open connections of that endpoint; each process tells the parent,
on the same channel, when one of them closes.

Why not the kernel's spreading: Postfix keeps its table, policy and milter connections
open for minutes, so however the first connections fall, they stay. SO_REUSEPORT hashes
each connection to a process (docs/performance.md: 8 connections split 5/3 over two
processes, cold SPF checks 1.15x policyd-spf against 1.59x at 4/4; 0/1/6/0/1 over five
lookup processes), and one accept queue shared by all lets whichever wakes first take a
burst (bench/README.md: 8/0). Dealt by count, every split is even, for unix and
systemd-activated sockets as for TCP, and no child binds a socket of its own (no
SO_REUSEPORT uid rule after ``[daemon] user``).

The channel's messages: parent -> child, the endpoint's name with one descriptor;
child -> parent, the endpoint's name once that connection has closed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from srsd.log_limit import LimitedLog

__all__ = ["Dealer", "Receiver", "channel_pair", "received", "tell_closed"]

log = Logger(namespace="srsd.handoff")
limited = LimitedLog(log)  # an accept storm must not flood the log

#: connections accepted per readiness of a listening socket, before the reactor's other work
ACCEPTS_PER_WAKEUP = 64
_NAME_BYTES = 64  # endpoint names are short ("tcp_forward", "socketmap", "milter")


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(parent's end, child's end) of a new channel: non-blocking on the parent's side,
    the child's end inheritable (the child sets its own mode, :func:`received`)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent.setblocking(False)
    child.set_inheritable(True)
    return parent, child


def received(channel: socket.socket) -> Iterator[tuple[str, int]] | None:
    """The connections waiting on a child's *channel* (non-blocking): an iterator of
    (endpoint name, descriptor); None once the parent's end is closed (EOF).

    A message without a descriptor is skipped; every descriptor given is the caller's
    to serve or close."""
    out = []
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(channel, _NAME_BYTES, 1)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:  # ECONNRESET: the parent is gone
            return None if not out else iter(out)
        if not message and not fds:
            return None if not out else iter(out)
        name = message.decode("ascii", "replace")
        out.extend((name, fd) for fd in fds)
    return iter(out)


def tell_closed(channel: socket.socket, name: str) -> None:
    """Tell the parent that one connection of endpoint *name* has closed. A message
    that cannot go (the parent gone, its end full) is dropped: the parent then counts
    this process as busier than it is, which costs balance, not mail."""
    try:
        channel.send(name.encode("ascii"))
    except OSError:
        pass


class _Seat:
    """One process an endpoint's connections go to: a child's channel, or the parent
    itself (``channel`` None, serving through ``factory``)."""

    __slots__ = ("key", "label", "channel", "factory", "open", "ready", "serial", "reader")

    def __init__(self, key: Hashable, label: str, channel: socket.socket | None, factory: Any = None) -> None:
        self.key = key
        self.label = label
        self.channel = channel
        self.factory = factory
        self.open: dict[str, int] = {}  # endpoint name -> connections open there
        self.ready = channel is None  # a child is ready once it says so (WorkerPool)
        self.serial = 0  # when it last got a connection: ties go to the longest idle
        self.reader: _ClosedReader | None = None  # the parent's reader on the channel


class _Acceptor:
    """The reactor's reader on one listening socket whose Twisted port no longer reads
    it (an IReadDescriptor)."""

    def __init__(self, dealer: Dealer, name: str, port: Any) -> None:
        self.dealer = dealer
        self.name = name
        self.port = port
        self.socket = port.socket

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        return f"srsd.handoff.{self.name}"

    def doRead(self) -> None:  # noqa: N802
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                connection, _address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS, ECONNABORTED: the next wake-up tries again
                limited.warn("accept", "{name}: cannot accept a connection: {error}", name=self.name, error=exc)
                return
            try:
                self.dealer.deal(self.name, connection)
            except Exception:  # a bug must not cost the endpoint: Twisted drops a reader that raises
                connection.close()
                log.failure("{name}: a new connection could not be handed over; closed it", name=self.name)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        pass  # the port closes the socket (Dealer.stop)


class Dealer:
    """The parent's side: accept on each dealt endpoint and pass the connection on.

    :param reactor: the parent's reactor.
    :param ports: {endpoint name: Twisted listening port} of the endpoints dealt; the
        dealer reads their sockets instead of the ports (``stopReading``) and closes the
        ports when the reactor stops.
    :param local: the endpoints the parent serves too, with the port's own factory
        (the parent is one of ``--workers N``); the others go to children only.
    """

    def __init__(self, reactor: Any, ports: dict[str, Any], local: frozenset[str] = frozenset()) -> None:
        self.reactor = reactor
        self.ports = ports
        self._seats: dict[str, list[_Seat]] = {name: [] for name in ports}
        self._children: dict[Hashable, _Seat] = {}
        self._serial = 0
        self._acceptors = [_Acceptor(self, name, port) for name, port in ports.items()]
        for name in local:
            self._seats[name].append(_Seat("parent", "parent", None, ports[name].factory))

    def start(self) -> None:
        for acceptor in self._acceptors:
            acceptor.port.stopReading()
            self.reactor.addReader(acceptor)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def stop(self) -> defer.Deferred:
        """Stop accepting and close the ports; :returns: a Deferred firing once they are
        closed (a shutdown trigger: the reactor waits for it)."""
        closing = []
        for acceptor in self._acceptors:
            self.reactor.removeReader(acceptor)
            closing.append(defer.maybeDeferred(acceptor.port.stopListening))  # (a unix path removed)
        for seat in list(self._children.values()):
            self.remove(seat.key)
        return defer.gatherResults(closing)

    def add(self, key: Hashable, names: list[str], label: str) -> socket.socket:
        """Open a channel to a child about to start, serving endpoints *names*
        (*label*: the child in :meth:`counts`, ``lookup process 1``).

        :returns: the child's end, for the child to inherit (close it here once the
            child is spawned). Connections dealt before the child reads them wait in the
            channel; those of a child not yet ready go to ready ones first.
        """
        parent_end, child_end = channel_pair()
        seat = self._children[key] = _Seat(key, label, parent_end)
        for name in names:
            seat.open[name] = 0
            self._seats[name].append(seat)
        seat.reader = _ClosedReader(self, seat)
        self.reactor.addReader(seat.reader)
        return child_end

    def ready(self, key: Hashable) -> None:
        """The child *key* serves: it gets its share from now on."""
        seat = self._children.get(key)
        if seat is not None:
            seat.ready = True

    def remove(self, key: Hashable) -> None:
        """The child *key* is gone: no more connections go to it."""
        seat = self._children.pop(key, None)
        if seat is None:
            return
        for seats in self._seats.values():
            if seat in seats:
                seats.remove(seat)
        self.reactor.removeReader(seat.reader)
        seat.channel.close()

    def counts(self) -> dict[tuple[str, str], int]:
        """{(endpoint name, process label): connections handed there and still open}
        (``srsd_connections_handed`` on /metrics)."""
        return {(name, seat.label): seat.open.get(name, 0) for name, seats in self._seats.items() for seat in seats}

    def deal(self, name: str, connection: socket.socket) -> None:
        """Give *connection* (just accepted on endpoint *name*) to the ready process
        with the fewest of that endpoint's connections; if no channel takes it (every
        child gone or not reading), close it: the client retries, as after any lost
        connection, and Postfix answers the mail with a temporary failure meanwhile."""
        for seat in self._children.values():
            seat.reader.doRead()  # the closes told so far count: one recv a child, at each new connection
        seats = sorted(self._seats[name], key=lambda s: (not s.ready, s.open.get(name, 0), s.serial))
        # accept() on a non-blocking socket gives a blocking one (Python's rule); the flag
        # belongs to the open file, so it travels with the descriptor to the child.
        connection.setblocking(False)
        with connection:
            for seat in seats:
                self._serial += 1
                seat.serial = self._serial
                if seat.channel is None:
                    if self._serve_here(seat, name, connection):
                        return
                    continue
                try:
                    socket.send_fds(seat.channel, [name.encode("ascii")], [connection.fileno()])
                except OSError:  # its end is full (a stuck child) or gone: the next one
                    continue
                seat.open[name] = seat.open.get(name, 0) + 1
                return
            limited.warn("handoff", "{name}: no process took a new connection; closed it", name=name)

    def _serve_here(self, seat: _Seat, name: str, connection: socket.socket) -> bool:
        try:
            transport = serve_connection(
                self.reactor, connection.fileno(), seat.factory, lambda: self.closed(seat, name)
            )
        except OSError:  # the client already gone (getpeername fails): nothing to serve
            return True
        if transport is not None:
            seat.open[name] = seat.open.get(name, 0) + 1
        return True

    def closed(self, seat: _Seat, name: str) -> None:
        """One of *seat*'s connections of endpoint *name* has closed."""
        if seat.open.get(name, 0) > 0:
            seat.open[name] -= 1


class _ClosedReader:
    """The parent's reader on one child's channel: the child's "closed" messages; EOF
    when the child is gone (the pool's ``ended`` then removes it)."""

    def __init__(self, dealer: Dealer, seat: _Seat) -> None:
        self.dealer = dealer
        self.seat = seat

    def fileno(self) -> int:
        return self.seat.channel.fileno()

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        return "srsd.handoff.channel"

    def doRead(self) -> Any:  # noqa: N802
        while True:
            try:
                message = self.seat.channel.recv(_NAME_BYTES)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                message = b""
            if not message:  # the child's end closed: stop reading it
                self.dealer.reactor.removeReader(self)
                return None
            self.dealer.closed(self.seat, message.decode("ascii", "replace"))

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        pass


def serve_connection(reactor: Any, fd: int, factory: Any, on_close: Callable[[], None]) -> Any:
    """Serve the connected, non-blocking socket *fd* with *factory* on a Twisted reactor
    (``adoptStreamConnection`` takes its own duplicate: *fd* stays the caller's).

    :param on_close: called once the connection is gone (not when the factory
        refused it: then None is returned and nothing is called).
    :returns: the transport, or None.
    """
    with socket.socket(fileno=os.dup(fd)) as probe:
        family = probe.family
    transport = reactor.adoptStreamConnection(fd, family, factory)
    if transport is None:
        return None
    lost = transport.connectionLost

    def connection_lost(reason: Any) -> None:
        try:
            lost(reason)
        finally:
            on_close()

    transport.connectionLost = connection_lost
    return transport


class Receiver:
    """A Twisted child's reader on its channel: serves each connection handed over with
    the factory of its endpoint, and tells the parent when it closes.

    :param channel: the child's end (inherited descriptor).
    :param factories: {endpoint name: protocol factory} (each already started).
    """

    def __init__(self, reactor: Any, channel: socket.socket, factories: dict[str, Any]) -> None:
        self.reactor = reactor
        self.channel = channel
        channel.setblocking(False)
        self.factories = factories

    def start(self) -> None:
        self.reactor.addReader(self)

    def fileno(self) -> int:
        return self.channel.fileno()

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        return "srsd.handoff.receiver"

    def doRead(self) -> None:  # noqa: N802
        waiting = received(self.channel)
        if waiting is None:
            self.reactor.removeReader(self)  # the parent is gone: watch_parent stops this process
            return
        for name, fd in waiting:
            try:
                self._serve(name, fd)
            finally:
                os.close(fd)

    def _serve(self, name: str, fd: int) -> None:
        def closed() -> None:
            tell_closed(self.channel, name)

        factory = self.factories.get(name)
        try:
            served = factory is not None and serve_connection(self.reactor, fd, factory, closed) is not None
        except OSError as exc:  # the client already gone (getpeername fails)
            limited.warn("handoff", "{name}: a connection handed over was gone: {error}", name=name, error=exc)
            served = False
        except Exception:  # a bug in one connection's start must not stop the channel's reader
            log.failure("{name}: a connection handed over could not be served; closed it", name=name)
            served = False
        if not served:
            closed()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        pass
