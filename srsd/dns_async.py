"""srsd's resolver on the reactor, for the SPF checks: the answers
:class:`srsd.dns.Resolver` gives, without a thread and at a fraction of its CPU.

Each lookup builds its query and reads the reply with :mod:`srsd.dns_wire` (dnspython
reads the replies that module leaves to it), sends it through the Twisted reactor -- UDP
first, TCP when the answer comes back truncated (RFC 1035 4.2.2, RFC 7766) -- and keeps
the reading for its TTL. The servers, the timeout and the cache size are those of the
:class:`~srsd.dns.Resolver` it wraps; the cache is its own (dnspython's keeps dnspython's
objects, for the blocking DKIM key lookups).

Why not ``twisted.names``: its cache keeps no negative answers, and its reading of a reply
would differ from the blocking path's (message parser, CNAME handling); why not
``dns.asyncresolver``: it runs on asyncio, and srsd's policy and milter processes run the
Twisted epoll reactor; and dnspython's reading costs ~200 µs a reply (docs/performance.md).

One UDP socket per address family serves every query of the process, answers matched by
(server, id); a source port per query would cost a socket and a reactor registration
each. The nameservers srsd is pointed at are its own (usually on loopback), not the
internet's: an off-path spoofer must still guess the 16-bit id and the port.
"""

from __future__ import annotations

import collections
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.message
import dns.nameserver
import dns.query
import dns.resolver
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone

from srsd.dns import DNSTemporaryError, Resolver
from srsd.dns_wire import Reading, Unusual, qname_wire, query_wire, read_reply, read_with_dnspython

__all__ = ["AsyncResolver", "Exchange", "ReactorExchange", "askable", "reading_records"]

#: ``exchange(wire, address, port, tcp, timeout)``: the reply's wire bytes (a Deferred);
#: fails with ``dns.exception.Timeout`` or ``OSError``
Exchange = Callable[[bytes, str, int, bool, float], defer.Deferred]


class _UDPQueries(protocol.DatagramProtocol):
    """One UDP socket; each reply goes to the query waiting for its (server, id)."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, int, int], tuple[defer.Deferred, Any]] = {}

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802 (Twisted's name)
        if len(datagram) < 2:
            return
        waiter = self.waiting.pop((addr[0], addr[1], (datagram[0] << 8) | datagram[1]), None)
        if waiter is not None:
            waiter[1].cancel()
            waiter[0].callback(datagram)

    def expire(self, key: tuple[str, int, int], seconds: float) -> None:
        waiter = self.waiting.pop(key, None)
        if waiter is not None:
            waiter[0].errback(dns.exception.Timeout(timeout=seconds))


class _TCPQuery(protocol.Protocol):
    """One query over TCP: the request with its 2-byte length, the first reply back."""

    def __init__(self, wire: bytes, done: defer.Deferred) -> None:
        self.wire, self.done, self.buffer = wire, done, b""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(struct.pack("!H", len(self.wire)) + self.wire)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        if len(self.buffer) >= 2:
            (size,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) >= 2 + size and not self.done.called:
                self.done.callback(self.buffer[2 : 2 + size])
                self.transport.loseConnection()

    def connectionLost(self, reason: Any = ConnectionDone) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(EOFError("the nameserver closed the TCP connection before its answer"))


class ReactorExchange:
    """The :data:`Exchange` over the reactor's UDP and TCP.

    :param reactor: an ``IReactorUDP``/``IReactorTCP``/``IReactorTime`` provider.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._udp: dict[str, _UDPQueries] = {}

    def __call__(self, wire: bytes, address: str, port: int, tcp: bool, timeout: float) -> defer.Deferred:
        if tcp:
            return self._tcp(wire, address, port).addTimeout(max(0.001, timeout), self.reactor,
                                                              onTimeoutCancel=_timed_out)  # fmt: skip
        return self._datagram(wire, address, port, max(0.001, timeout))

    def _datagram(self, wire: bytes, address: str, port: int, timeout: float) -> defer.Deferred:
        family = "inet6" if ":" in address else "inet"
        queries = self._udp.get(family)
        if queries is None:
            queries = self._udp[family] = _UDPQueries()
            self.reactor.listenUDP(0, queries, interface="::" if family == "inet6" else "0.0.0.0")
        key = (address, port, (wire[0] << 8) | wire[1])
        if key in queries.waiting:  # the same id to the same server in flight: a new id
            return defer.fail(_IdInUse())
        try:  # the socket's own sendto: Port.write re-checks the address (~9 µs a query)
            queries.transport.socket.sendto(wire, (address, port))
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            pass  # as a datagram lost: the query's timeout asks again
        except OSError as exc:
            return defer.fail(exc)
        d: defer.Deferred = defer.Deferred()
        queries.waiting[key] = (d, self.reactor.callLater(timeout, queries.expire, key, timeout))
        return d

    def _tcp(self, wire: bytes, address: str, port: int) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred(lambda _d: connector.disconnect())
        factory = protocol.ClientFactory.forProtocol(lambda: _TCPQuery(wire, done))
        factory.clientConnectionFailed = lambda _c, reason: (
            done.called or done.errback(ConnectionRefusedError(str(reason.value)))
        )
        connector = self.reactor.connectTCP(address, port, factory)
        return done


class _IdInUse(Exception):
    pass


def _timed_out(_value: Any, seconds: float) -> None:
    raise dns.exception.Timeout(timeout=seconds)


class AsyncResolver:
    """SPF's DNS lookups as Deferreds, on the reactor thread, with a TTL cache of their own.

    :param resolver: whose nameservers, timeout and cache size are used (its dnspython cache
        serves the blocking lookups; this one keeps readings, :class:`~srsd.dns_wire.Reading`).
    :param reactor: for timeouts and back-off (and the transport, unless *exchange* is given).
    :param exchange: how a request reaches a nameserver (default: :class:`ReactorExchange`).

    What dnspython's resolver does, the same way: each server in turn, all of them again
    after a back-off of 0.1 s (doubling, at most 2 s) until the lookup's time is up; a server
    that answers SERVFAIL, REFUSED or a reply it cannot read is dropped for that lookup;
    a truncated UDP answer is asked again over TCP; answers, NODATA and NXDOMAIN are kept
    for their TTL (RFC 2308), NXDOMAIN for every type of the name.
    """

    def __init__(self, resolver: Resolver, reactor: Any, exchange: Exchange | None = None) -> None:
        inner = resolver.dnspython
        self.nameservers = [
            (ns, inner.port) if isinstance(ns, str) else (ns.answer_nameserver(), ns.answer_port())
            for ns in inner.nameservers
        ]
        self.reactor = reactor
        self.timeout = resolver.timeout
        self.exchange = exchange or ReactorExchange(reactor)
        self.cache_size = inner.cache.max_size if inner.cache is not None else 0
        self.cache: collections.OrderedDict[tuple[bytes, str | None], Reading] = collections.OrderedDict()

    def lookup(self, name: str, qtype: str, timeout: float | None = None) -> defer.Deferred:
        """*name*/*qtype* (``srsd.dns_wire.QTYPES``): a Deferred firing with a
        :class:`~srsd.dns_wire.Reading` (kind "answer", "nodata" or "nxdomain"; the
        asked name's records with owner None); a kept one fires at once.

        :param timeout: seconds for this lookup, capped at the resolver's own.
        :returns: fails with :class:`~srsd.dns.DNSTemporaryError` (timed out, or no server
            answered) or ``ValueError`` (*name* is not a DNS name).
        """
        d: defer.Deferred = defer.Deferred()
        self.ask(name, qtype, timeout, d.callback, d.errback)
        return d

    def ask(
        self,
        name: str,
        qtype: str,
        timeout: float | None,
        answered: Callable[[Reading], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """:meth:`lookup` with two callbacks instead of a Deferred (one fewer a query on the
        SPF checks' path): exactly one is called once, with the reading or the exception
        :meth:`lookup` would fail with -- at once for a kept reading or a refused name."""
        try:
            key = qname_wire(name).lower()
        except ValueError as exc:
            failed(exc)
            return
        cached = self._kept(key, qtype)
        if cached is not None:
            answered(cached)
            return
        lifetime = self.timeout if timeout is None else max(0.001, min(timeout, self.timeout))
        _Lookup(self, name, qtype, key, time.monotonic() + lifetime, answered, failed).run()

    def cached(self, name: str, qtype: str) -> Reading | None:
        """The kept reading of *name*/*qtype* that :meth:`lookup` would fire with at once,
        or None (also for a name :meth:`lookup` refuses: it says why)."""
        try:
            key = qname_wire(name).lower()
        except ValueError:
            return None
        return self._kept(key, qtype)

    def _kept(self, key: bytes, qtype: str) -> Reading | None:
        now = time.time()
        for cached in (self.cache.get((key, qtype)), self.cache.get((key, None))):
            if cached is not None:
                if cached.expires > now:
                    return cached
                self.cache.pop((key, qtype if cached.kind != "nxdomain" else None), None)
        return None

    def keep(self, key: bytes, qtype: str, reading: Reading) -> None:
        if self.cache_size <= 0 or reading.expires <= time.time():
            return
        slot = (key, None if reading.kind == "nxdomain" else qtype)
        self.cache[slot] = reading
        self.cache.move_to_end(slot)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)


class _Lookup:
    """One lookup: the servers in turn, each reply read by srsd.dns_wire (dnspython for the
    unusual ones)."""

    def __init__(
        self,
        owner: AsyncResolver,
        name: str,
        qtype: str,
        key: bytes,
        deadline: float,
        answered: Callable[[Reading], None],
        failed: Callable[[Exception], None],
    ) -> None:
        self.owner, self.name, self.qtype, self.key, self.deadline = owner, name, qtype, key, deadline
        self.answered, self.failed = answered, failed
        self.servers = list(owner.nameservers)
        self.turn: list[tuple[str, int]] = []
        self.rounds = 0
        self.backoff = 0.1
        self.errors: list[BaseException] = []

    def run(self) -> None:
        self._next()

    def _fail(self, text: str) -> None:
        if self.errors and all(isinstance(e, dns.message.ChainTooLong) for e in self.errors):
            self.answered(Reading("nxdomain"))  # a CNAME loop: no data (not kept)
            return
        self.failed(DNSTemporaryError(f"DNS {self.qtype} {self.name}: {text}"))

    def _next(self) -> None:
        """Ask the next server of this round; after the last, a new round after a back-off."""
        if not self.servers:
            self._fail("no nameserver answered")
            return
        if self.turn:
            self._send(self.turn.pop(0), False)
            return
        self.turn = list(self.servers)
        if not self.rounds:  # the first round starts at once
            self.rounds = 1
            self._send(self.turn.pop(0), False)
            return
        self.rounds += 1
        delay, self.backoff = self.backoff, min(self.backoff * 2, 2.0)
        if self.deadline - time.monotonic() <= delay:
            self._fail("timed out")
            return
        self.owner.reactor.callLater(delay, self._send, self.turn.pop(0), False)

    def _send(self, server: tuple[str, int], tcp: bool) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._fail("timed out")
            return
        qid = random.getrandbits(16)
        wire = query_wire(qid, self.name, self.qtype)  # the name passed qname_wire in lookup()
        d = self.owner.exchange(wire, server[0], server[1], tcp, remaining)
        d.addCallbacks(self._reply, self._failed, callbackArgs=(server, qid, tcp), errbackArgs=(server, tcp))

    def _reply(self, wire: bytes, server: tuple[str, int], qid: int, tcp: bool) -> None:
        try:
            try:
                reading = read_reply(wire, qid, self.name, self.qtype, tcp=tcp)
            except Unusual:
                reading = read_with_dnspython(wire, qid, self.name, self.qtype, tcp=tcp)
        except dns.message.Truncated:
            self._send(server, True)
            return
        except Exception as exc:  # a reply dnspython refuses too: drop the server
            self._drop(server, exc)
            return
        if reading.kind == "error":
            self._drop(server, dns.resolver.NoNameservers())
            return
        self.owner.keep(self.key, self.qtype, reading)
        self.answered(reading)

    def _failed(self, failure: Any, server: tuple[str, int], tcp: bool) -> None:
        if failure.check(_IdInUse):
            self.owner.reactor.callLater(0, self._send, server, tcp)
            return
        if failure.check(dns.exception.Timeout):
            self._next()  # dnspython keeps a server that timed out, for the next round
            return
        self._drop(server, failure.value)

    def _drop(self, server: tuple[str, int], error: BaseException) -> None:
        self.errors.append(error)
        if server in self.servers:
            self.servers.remove(server)
        self.turn = [s for s in self.turn if s != server]
        self._next()


def askable(name: str) -> bool:
    """Whether :meth:`AsyncResolver.ask` would ask for *name* (else it fails with ValueError)."""
    try:
        qname_wire(name)
    except ValueError:
        return False
    return True


def reading_records(reading: Reading, name: str) -> list:
    """*reading* (of a lookup of *name*) as :func:`srsd.dns.spf_records` gives an answer:
    ``[((owner, rtype), value), ...]``, the asked name's records under *name*; [] for
    NODATA and NXDOMAIN."""
    if reading.kind != "answer":
        return []
    asked = name.rstrip(".")
    return [((asked if owner is None else owner, rtype), value) for (owner, rtype), value in reading.records]
