"""The processes on uvloop: srsd's lookup and policy endpoints served apart from the rest.

``srsd serve`` hands the connections of its tcp_table and socketmap endpoints to ``[daemon]
lookup_processes`` processes of their own, and those of its policy endpoint to ``[daemon]
policy_processes`` others (:mod:`srsd.workers` starts both; :mod:`srsd.handoff` hands the
connections over). Each runs the same adapters (:mod:`srsd.protocols.tcp_table`,
``socketmap``, ``policy``) and the same :class:`~srsd.service.Daemon` decisions, on an
asyncio loop from uvloop (libuv) instead of Twisted's epoll reactor:

* per event, Twisted runs ~50 000 instructions of Python around a request
  (``doPoll``, ``callWithLogger``, ``doRead``, the write buffer and its second pass;
  docs/performance.md) where uvloop calls ``data_received`` straight from C and its
  ``write()`` sends at once: a lookup costs half as many instructions;
* the milter's DKIM work stays in the Twisted process(es), and the policy service's
  SPF checks in processes apart from the lookups': a burst of checks never queues a
  lookup behind it in one loop;
* several processes use both cores and hold their share of the CPU on a busy
  machine.

Twisted still runs in each of these processes, on top of the same loop
(``twisted.internet.asyncioreactor``), for whatever answers later through a Deferred
(SPF checks and their DNS queries, SPF-aware rewriting, stores): the adapters queue such replies in order as they do
under Twisted. :class:`LookupBridge` is the only glue: an asyncio protocol that
drives one Twisted-style adapter through a minimal transport.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["LookupBridge", "LookupReceiver", "serve_lookups", "new_loop"]

log = Logger(namespace="srsd.lookups")


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop (libuv: its C callbacks reach the protocol directly)."""
    import uvloop

    return uvloop.new_event_loop()


class _Transport:
    """What srsd's adapters use of a Twisted transport (write, loseConnection, the
    producer calls of their back-pressure), over an asyncio transport. ``write`` is
    the asyncio transport's own: it sends at once when nothing is buffered, and
    buffers the rest."""

    __slots__ = ("_transport", "write", "disconnecting", "connected", "producer")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.write = transport.write
        self.disconnecting = False
        self.connected = True
        self.producer: Any = None  # the adapter: told when replies back up (asyncio's write flow control)

    def registerProducer(self, producer: Any, streaming: bool) -> None:  # noqa: N802 (Twisted's name)
        self.producer = producer

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None

    def pauseProducing(self) -> None:  # noqa: N802 (the adapter stops its requests being read)
        self._transport.pause_reading()

    def resumeProducing(self) -> None:  # noqa: N802
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802 (Twisted's name)
        self.write(b"".join(data))

    def loseConnection(self) -> None:  # noqa: N802
        """Close once everything written is sent (as Twisted's loseConnection)."""
        self.disconnecting = True
        self._transport.close()

    def abortConnection(self) -> None:  # noqa: N802
        self._transport.abort()


class LookupBridge(asyncio.Protocol):
    """One connection of a lookup endpoint: an asyncio protocol driving the Twisted-style
    adapter that *factory* builds (a :class:`~srsd.protocols.base.LookupFactory`).

    The adapter's ``dataReceived`` is this protocol's ``data_received`` itself (no
    frame in between); end of input is the adapter's ``readConnectionLost`` (every
    answer still goes out: half-close as under Twisted); a client that does not read
    its answers stops being read until it does (asyncio's write flow control, handed
    to the adapter's back-pressure as Twisted's producer calls).
    """

    def __init__(self, factory: Any, on_close: Any = None) -> None:
        self.adapter = factory.buildProtocol(None)
        self.data_received = self.adapter.dataReceived  # type: ignore[method-assign]
        self._transport: asyncio.Transport | None = None
        self._on_close = on_close  # called once the connection is gone (the parent's count)

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self.adapter.makeConnection(_Transport(transport))

    def eof_received(self) -> bool:
        self.adapter.readConnectionLost()
        return True  # keep the writing half open for the answers still due

    def connection_lost(self, exc: Exception | None) -> None:
        self.adapter.transport.connected = False
        try:
            self.adapter.connectionLost(Failure(ConnectionLost(str(exc)) if exc else ConnectionDone()))
        finally:
            if self._on_close is not None:
                self._on_close()

    def pause_writing(self) -> None:
        producer = self.adapter.transport.producer
        if producer is not None:
            producer.pauseProducing()  # the adapter holds reading (srsd.protocols.base)

    def resume_writing(self) -> None:
        producer = self.adapter.transport.producer
        if producer is not None:
            producer.resumeProducing()


class LookupReceiver:
    """A lookup process's side of its channel (:mod:`srsd.handoff`): each connection
    the parent hands over is served by a :class:`LookupBridge` of its endpoint, and the
    parent is told when it closes.

    :param channel: the inherited end of the channel.
    :param factories: {endpoint name: started lookup factory}.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: socket.socket, factories: dict[str, Any]) -> None:
        self.loop = loop
        self.channel = channel
        channel.setblocking(False)
        self.factories = factories
        self._serving: set[asyncio.Task] = set()  # the loop holds tasks weakly

    def start(self) -> None:
        self.loop.add_reader(self.channel.fileno(), self._readable)

    def _readable(self) -> None:
        from srsd.handoff import received

        waiting = received(self.channel)
        if waiting is None:  # the parent is gone: watch_parent stops this process
            self.loop.remove_reader(self.channel.fileno())
            return
        for name, fd in waiting:
            task = self.loop.create_task(self._serve(name, socket.socket(fileno=fd)))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, name: str, connection: socket.socket) -> None:
        from srsd.handoff import tell_closed

        def closed() -> None:
            tell_closed(self.channel, name)

        factory = self.factories.get(name)
        if factory is None:
            connection.close()
            closed()
            return
        connection.setblocking(False)
        try:
            await self.loop.connect_accepted_socket(lambda: LookupBridge(factory, closed), connection)
        except OSError as exc:  # the client already gone
            log.warn("{name}: a connection handed over was gone: {error}", name=name, error=exc)
        except Exception:  # a bug in one connection's start: this connection only, with its traceback
            log.failure("{name}: a connection handed over could not be served; closed it", name=name)
        else:
            return
        connection.close()
        closed()


def serve_lookups(config_path: str | None, inherit: str, status_fd: int | None = None) -> int:
    """Run one lookup process until SIGTERM or its parent is gone (``srsd serve
    --lookups``, started by :class:`srsd.workers.WorkerPool`).

    :param inherit: ``name=deal:N`` for each lookup endpoint it serves: the channel
        its connections arrive on (:func:`srsd.workers.parse_inherit`).
    :param status_fd: the pipe to the parent (:func:`srsd.workers.tell_parent`): ``ready``
        once every endpoint is served and privileges are dropped, ``reloaded`` or
        ``refused`` after each SIGHUP.
    :returns: exit status: 0 after a clean stop, 1 when the configuration does not
        load, an endpoint cannot be served or the switch to ``[daemon] user`` fails.
    """
    loop = new_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    from srsd import log_limit
    from srsd.config import ConfigError
    from srsd.heap import settle_heap
    from srsd.metrics_workers import Reporter
    from srsd.privileges import target_account
    from srsd.service import Daemon, _switch_user, load, setup_logging, start_log_target
    from srsd.workers import parse_inherit, stop_once_on_sigterm, tell_parent, watch_parent

    setup_logging()
    try:
        config = load(config_path)
        account = target_account(config.daemon)
    except ConfigError as exc:
        log.critical("configuration error: {error}", error=exc)
        return 1
    if not start_log_target(config):
        return 1
    inherited = parse_inherit(inherit)
    report = inherited.pop("report", None)  # where this process's counts go (srsd.metrics_workers)
    daemon = Daemon(config, config_path, reactor, serves=frozenset(inherited))
    # Held until the process ends: the loop's reader does not keep them alive.
    dealt = daemon.handed_factories(inherited, "on uvloop")
    receivers = [LookupReceiver(loop, socket.socket(fileno=fd), factories) for fd, factories in dealt.items()]
    for receiver in receivers:
        receiver.start()
    if account is not None and not _switch_user(account, config_path, {}):
        return 1

    def on_sighup() -> None:
        d = daemon.reload_off_reactor(announce=False, hold_signer=True)
        d.addCallback(lambda ok: tell_parent(status_fd, "reloaded" if ok else "refused"))
        d.addErrback(lambda failure: log.failure("reload failed; keeping the running configuration", failure))

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(on_sighup))
    # SIGUSR1: the parent's word that every process has the new secrets (Daemon.promote)
    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(daemon.promote))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGUSR1})  # started with them blocked
    watch_parent(reactor)
    if report is not None:
        Reporter(report[1]).start(reactor)
    LoopingCall(log_limit.tick).start(1.0, now=False)
    settle_heap()  # before "ready": the parent may stop this process right after it
    tell_parent(status_fd, "ready")
    reactor.callWhenRunning(stop_once_on_sigterm, reactor)
    reactor.run()
    return 0
