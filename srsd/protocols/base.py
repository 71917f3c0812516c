"""What every wire adapter shares (client limit, idle timeout, TCP_NODELAY), and
what every request/reply protocol adds (tcp_table, socketmap, policy): ordered
replies and error containment.

A request is answered at once or through a Deferred (slow decisions such as
SPF-aware rewriting, SPF checks). Postfix may pipeline requests on one connection,
so replies are written strictly in request order: a fast answer queues behind a
slow one (:class:`RequestProtocol`). A decision that raises or fails is answered
with the protocol's temporary failure and logged; the connection goes on.
Back-pressure: a client that sends requests and does not read the replies gets
no more of its requests read once more than 64 KiB of replies wait for it
(Twisted's transport ``bufferSize``), or more than :data:`MAX_PENDING` replies
wait for a slow answer ahead of them; reading resumes as they go out. Without it
srsd read on and buffered replies without bound (tests/faults/hostile.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITCPTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from srsd.answer_cache import AnswerCache
from srsd.log_limit import LimitedLog
from srsd.metrics import endpoint_stats, lookup_outcomes
from srsd.rewrite import TEMP, Answer
from srsd.transport_write import writer

__all__ = [
    "EndpointFactory",
    "EndpointProtocol",
    "RequestFactory",
    "RequestProtocol",
    "Lookup",
    "LookupFactory",
    "LookupProtocol",
    "LineBuffer",
    "MAX_PENDING",
]

#: (map name, key) -> Answer | Deferred[Answer]
Lookup = Callable[[str, str], "Answer | Deferred[Answer]"]

log = Logger(namespace="srsd.protocol")
limited = LimitedLog(log)  # a connection flood must not flood the log too
_LOOKUPS = lookup_outcomes()  # (map, outcome) counts: a cache hit adds to the one it replays

#: replies a connection may have waiting behind a slow one before srsd stops reading
#: its requests (Postfix sends one request and waits for its answer)
MAX_PENDING = 1000


class LineBuffer:
    """Newline framing with a length limit, for the line-based protocols.

    An over-long line is reported once, as soon as it passes the limit, and the
    rest of it is dropped up to its newline, so the stream stays in step.
    """

    def __init__(self) -> None:
        self.partial = b""
        self.discarding = False  # inside an over-long line, until its newline

    def feed(self, data: bytes, limit: int) -> tuple[list[bytes], int]:
        """Complete lines in *data* (without newlines), and the byte count of an
        unfinished line that just passed *limit* (0 if none)."""
        buffer = self.partial + data if self.partial else data
        lines = buffer.split(b"\n")
        self.partial = lines.pop()
        if self.discarding and lines:
            lines.pop(0)  # the tail of the over-long line, already reported
            self.discarding = False
        overflow = 0
        if not self.discarding and len(self.partial) > limit:
            overflow = len(self.partial)
            self.discarding = True
        if self.discarding:
            self.partial = b""
        return lines, overflow


class EndpointFactory(protocol.Factory):
    """What every listening endpoint has: a name, a client limit, an idle sweeper.

    :param name: the endpoint's name for logs (``tcp_forward``, ``socketmap``, ``milter``).
    :param max_connections: concurrent clients served; beyond it a new client gets
        the protocol's temporary failure and is closed.
    :param idle_timeout: seconds of silence before a client is closed (0 = never).
    """

    protocol: type[EndpointProtocol]
    noisy = False  # no "Starting factory" lines

    def __init__(self, name: str, *, max_connections: int = 1000, idle_timeout: float = 1800) -> None:
        self.name = name
        self.stats = endpoint_stats(name)  # request durations and errors (srsd.metrics)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[EndpointProtocol] = set()
        self._sweeper: LoopingCall | None = None

    def startFactory(self) -> None:  # noqa: N802 (Twisted's name)
        if self.idle_timeout > 0:
            self._sweeper = LoopingCall(self.close_idle)
            self._sweeper.start(min(60.0, self.idle_timeout), now=False)

    def stopFactory(self) -> None:  # noqa: N802
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()

    def close_idle(self) -> None:
        """Close clients silent for longer than ``idle_timeout`` seconds.

        Aborted, not closed: loseConnection() first writes what is buffered, which
        never happens for a client that stopped reading, so such a client kept its
        slot (and max_connections counted it) for ever.
        """
        cutoff = time.monotonic() - self.idle_timeout
        for conn in [c for c in self.connections if c.last_active < cutoff]:
            abort = getattr(conn.transport, "abortConnection", None)
            (abort or conn.transport.loseConnection)()


@implementer(IPushProducer)
class EndpointProtocol(protocol.Protocol):
    """One client of an :class:`EndpointFactory`: counted against its limit
    (``overloaded`` is set on the one too many), TCP_NODELAY on TCP, and
    ``last_active`` for the idle sweeper (subclasses update it on traffic).

    It is its own transport's producer: the transport pauses it when more than
    its ``bufferSize`` of replies is unwritten, and reading stops until they are
    written (:meth:`hold_reading`).
    """

    factory: EndpointFactory
    overloaded = False
    _read_closed = False

    def __init__(self) -> None:
        self.last_active = time.monotonic()
        self._holds: set[str] = set()  # why reading is paused

    def connectionMade(self) -> None:  # noqa: N802
        factory = self.factory
        if len(factory.connections) >= factory.max_connections:
            self.overloaded = True
            factory.stats.error("overload")
            limited.warn(
                "overload",
                "{endpoint}: {n} clients connected (limits.max_connections); answering TEMP and closing a new one",
                endpoint=factory.name,
                n=len(factory.connections),
            )
        factory.connections.add(self)
        if ITCPTransport.providedBy(self.transport):
            # Small request/reply pairs: Nagle + delayed ACK would cost ~40 ms each.
            self.transport.setTcpNoDelay(True)
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.factory.connections.discard(self)

    def hold_reading(self, reason: str, hold: bool) -> None:
        """Stop reading requests while any *reason* holds; read again once none does."""
        if hold:
            self._holds.add(reason)
            if not self.transport.disconnecting:
                self.transport.pauseProducing()
        elif reason in self._holds:
            self._holds.discard(reason)
            if not self._holds and not self._read_closed:
                self.transport.resumeProducing()

    # IPushProducer, called by our own transport
    def pauseProducing(self) -> None:  # noqa: N802
        self.hold_reading("replies unwritten", True)

    def resumeProducing(self) -> None:  # noqa: N802
        if self.transport.disconnecting:
            # loseConnection() waits for a registered producer: let it close now.
            self.transport.unregisterProducer()
        else:
            self.hold_reading("replies unwritten", False)

    def stopProducing(self) -> None:  # noqa: N802
        pass


class RequestFactory(EndpointFactory):
    """Shared state of one request/reply endpoint (tcp_table, socketmap, policy).

    :param name: the endpoint's name for logs (``tcp_forward``, ``socketmap``, ``policy``).
    :param max_request_bytes: longest request accepted (bytes).
    :param max_connections: concurrent clients served; beyond it every request is
        answered with a temporary failure and the connection closed.
    :param idle_timeout: seconds of silence before a client is closed (0 = never).
    """

    protocol: type[RequestProtocol]

    def __init__(
        self, name: str, *, max_request_bytes: int = 4096, max_connections: int = 1000, idle_timeout: float = 1800
    ) -> None:
        super().__init__(name, max_connections=max_connections, idle_timeout=idle_timeout)
        self.max_request_bytes = max_request_bytes


@implementer(IHalfCloseableProtocol)
class RequestProtocol(EndpointProtocol):
    """Base of the request/reply adapters: subclasses parse requests, answer each
    with :meth:`answer` and write the answers with :meth:`send`.

    A client that half-closes (``nc -N``, ``socat``) still gets every answer;
    the connection closes once they are written.
    """

    factory: RequestFactory
    _read_closed = False

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[list[Any]] = deque()  # pending [bytes | None] slots

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self.write_reply = writer(self.transport)

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self._read_closed = True
        if not self._queue:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802
        self.transport.loseConnection()

    # -- answering --------------------------------------------------------------

    def describe(self, args: tuple) -> str:
        """What a request was, for the log line of a failed decision."""
        return "request"

    #: subclasses: the reply when srsd cannot decide (an error inside, overload)
    temporary_failure: Callable[[], bytes]

    def answer(self, decide: Callable[..., Any], args: tuple, encode: Callable[[Any], bytes]) -> bytes | Deferred:
        """``encode(decide(*args))``, now or when its Deferred fires; never raises:
        a decision that raises or fails is logged and answered with
        :meth:`temporary_failure`. Its duration and failures are counted (srsd.metrics)."""
        started = perf_counter()
        try:
            result = decide(*args)
        except Exception:
            self.factory.stats.error("internal_error")
            log.failure("{endpoint}: {what} failed", endpoint=self.factory.name, what=self.describe(args))
            return self.temporary_failure()
        # type() first: isinstance(x, Deferred) is slow (Deferred's metaclass is ABCMeta).
        if type(result) is Deferred or isinstance(result, Deferred):
            result.addCallbacks(encode, self._failed, errbackArgs=(args,))
            return result.addCallback(self.factory.stats.since_later, started)
        self.factory.stats.since(started)
        return encode(result)

    def _failed(self, failure: Any, args: tuple) -> bytes:
        self.factory.stats.error("internal_error")
        log.failure("{endpoint}: {what} failed", failure, endpoint=self.factory.name, what=self.describe(args))
        return self.temporary_failure()

    def send(self, replies: list[bytes | Deferred]) -> None:
        """Write *replies* in order; Deferred ones hold back those after them."""
        self.last_active = time.monotonic()
        if not self._queue and all(type(r) is bytes for r in replies):
            self.write_reply(b"".join(replies))  # the common, synchronous case
        else:
            for reply in replies:
                slot: list[Any] = [reply]
                self._queue.append(slot)
                if isinstance(reply, Deferred):
                    slot[0] = None
                    reply.addCallback(self._fill, slot)
            self._flush()
            if len(self._queue) > MAX_PENDING:
                self.hold_reading("replies pending", True)
        if self.overloaded and replies:
            self.transport.loseConnection()

    def _fill(self, data: bytes, slot: list[Any]) -> None:
        slot[0] = data
        self._flush()

    def _flush(self) -> None:
        out = []
        while self._queue and self._queue[0][0] is not None:
            out.append(self._queue.popleft()[0])
        if out:
            self.write_reply(b"".join(out))
            if len(self._queue) <= MAX_PENDING // 2:
                self.hold_reading("replies pending", False)
        if self._read_closed and not self._queue:
            self.transport.loseConnection()


class LookupFactory(RequestFactory):
    """A lookup endpoint (tcp_table, socketmap): a :data:`Lookup` and the limits.

    :param lookup: the decision function, called as ``lookup(map_name, key)``; it
        reads the current configuration itself, so a reload needs no new factory.
    :param cache: where replies that hold for the rest of the day are kept, keyed
        by request bytes (None: none are); whoever changes the answers (a reload)
        clears it.
    :param cacheable: ``cacheable(map_name, answer)``: when *answer*, returned at
        once by *lookup*, holds for the rest of the day, the (map, outcome) its
        replays count as, else None (:meth:`srsd.srs_maps.SRSMaps.cacheable`).
    :param limits: see :class:`RequestFactory`.
    """

    protocol: type[LookupProtocol]

    def __init__(
        self,
        lookup: Lookup,
        name: str,
        *,
        cache: AnswerCache | None = None,
        cacheable: Callable[[str, Answer], tuple[str, str] | None] | None = None,
        **limits: Any,
    ) -> None:
        super().__init__(name, **limits)
        self.lookup = lookup
        self.cache = cache if cacheable is not None else None
        self.cacheable = cacheable


class LookupProtocol(RequestProtocol):
    """A lookup adapter: :meth:`run_lookup` asks the factory's lookup, subclasses
    define :meth:`encode` (an Answer as one complete reply on their wire)."""

    factory: LookupFactory

    #: subclasses: Answer -> one complete reply on their wire
    encode: Callable[[Answer], bytes]

    def describe(self, args: tuple) -> str:
        map_name, key = args
        return f"lookup {map_name} {key!r}"

    def temporary_failure(self) -> bytes:
        return self.encode(Answer(TEMP, "internal error"))

    def run_lookup(self, map_name: str, key: str, request: bytes | None = None) -> bytes | Deferred:
        """Run one lookup; never raises: a failure inside becomes TEMP.

        :param request: the whole request as it arrived, when it was alone in its
            read: the reply is cached under it when the answer holds for the day.
        """
        if self.overloaded:
            return self.encode(Answer(TEMP, "server busy, try again"))
        factory = self.factory
        started = perf_counter()
        try:
            answer = factory.lookup(map_name, key)
        except Exception:
            return self._failed(Failure(), (map_name, key))
        # type() first: isinstance(x, Deferred) is slow (Deferred's metaclass is ABCMeta).
        if type(answer) is not Answer and isinstance(answer, Deferred):
            answer.addCallback(factory.stats.since_later, started)
            return answer.addCallbacks(self.encode, self._failed, errbackArgs=((map_name, key),))
        reply = self.encode(answer)
        factory.stats.since(started)
        if request is not None and factory.cache is not None:
            outcome = factory.cacheable(map_name, answer)
            if outcome is not None:
                factory.cache.put(request, reply, outcome)
        return reply

    def cached(self, request: bytes) -> bytes | None:
        """The cached reply to *request*, or None (nothing cached, or this connection
        is not at a request boundary: see :meth:`at_boundary`). A hit is counted as
        the lookup it replays (its outcome) and in the endpoint's fastest latency
        bucket: it costs a dictionary lookup, far below the first bucket."""
        cache = self.factory.cache
        if cache is None:
            return None
        entry = cache.entries.get(request)
        if entry is None or time.time() >= cache.until or self._queue or self.overloaded or not self.at_boundary():
            return None
        self.last_active = time.monotonic()
        _LOOKUPS[entry[1]] += 1
        self.factory.stats.counts[0] += 1
        return entry[0]

    def at_boundary(self) -> bool:
        """Subclasses: nothing of an earlier request is buffered."""
        return False
