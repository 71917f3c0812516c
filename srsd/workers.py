"""Several processes sharing the listening sockets (``srsd serve --workers N``).

The first process binds every endpoint, then starts N-1 copies of itself. TCP
endpoints are bound by every process with SO_REUSEPORT, so the kernel spreads
connections evenly over per-process accept queues; unix and systemd-activated
sockets (which SO_REUSEPORT does not cover) are inherited as file descriptors
and accepted from one shared queue. The parent relays SIGHUP, restarts a worker that dies, and
stops them when it stops; a worker whose parent is gone stops itself.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import endpoints, protocol, tcp, unix
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["adopt", "listen_reuseport", "reuseport_endpoint", "WorkerPool", "parse_inherit", "watch_parent"]

log = Logger(namespace="srsd.workers")


class _AdoptedUnixPort(unix.Port):
    """A unix socket inherited from the parent: its path, mode and removal are the
    parent's business (Twisted's Port would chmod it to 0666 and unlink it on close)."""

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 (Twisted's name)
        tcp.Port.connectionLost(self, reason)


def adopt(reactor: Any, fd: int, description: str, factory: Any) -> Any:
    """Serve *factory* on the inherited listening socket *fd*."""
    with socket.socket(fileno=os.dup(fd)) as probe:
        family = probe.family
        path = probe.getsockname() if family == socket.AF_UNIX else None
    if family == socket.AF_UNIX:
        port = _AdoptedUnixPort._fromListeningDescriptor(reactor, fd, factory)
        if path and not path.startswith("\0"):
            port.mode = stat.S_IMODE(os.stat(path).st_mode)  # keep the parent's mode=
        port.startListening()
    else:
        port = reactor.adoptStreamPort(fd, family, factory)
    # shutdown() on a listening socket stops it in every process sharing it:
    # a worker that stops must only close its own descriptor.
    port._shouldShutdown = False
    os.close(fd)  # the port holds its own duplicate
    return port


def listen_reuseport(reactor: Any, endpoint: Any, factory: Any, port: int | None = None) -> Any:
    """Listen on a TCP endpoint with its own SO_REUSEPORT socket.

    Every process binding the same address with SO_REUSEPORT gets its own accept
    queue and the kernel spreads new connections across them by hash. One shared
    socket instead lets whichever process wakes first take a burst of
    connections (bench/README.md: 8/0 splits of 8 Postfix connections).

    :param endpoint: a TCP4ServerEndpoint or TCP6ServerEndpoint (its port,
        interface and backlog are used; Twisted has no public accessor for them).
    :param port: the port to bind instead of the endpoint's (a worker binding the
        parent's actual port when the config says 0).
    :raises OSError: the bind failed.
    """
    family = socket.AF_INET6 if isinstance(endpoint, endpoints.TCP6ServerEndpoint) else socket.AF_INET
    interface = endpoint._interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, endpoint._port if port is None else port))
        sock.listen(endpoint._backlog)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()  # the port holds its own duplicate


def reuseport_endpoint(reactor: Any, description: str) -> Any:
    """The endpoint for *description* when it is plain TCP (SO_REUSEPORT-able), else None."""
    endpoint = endpoints.serverFromString(reactor, description)
    if isinstance(endpoint, endpoints.TCP4ServerEndpoint | endpoints.TCP6ServerEndpoint):
        return endpoint
    return None


def parse_inherit(text: str) -> dict[str, tuple[str, int]]:
    """``name=fd:N,name=port:N`` -> {name: ("fd", N) or ("port", N)}: a listening
    socket to adopt, or a TCP port to bind with SO_REUSEPORT.

    :raises ValueError: on bad syntax.
    """
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        kind, _, number = value.partition(":")
        if kind not in ("fd", "port"):
            raise ValueError(f"bad --inherit item {item!r}")
        out[name] = (kind, int(number))
    return out


def watch_parent(reactor: Any) -> LoopingCall:
    """Stop this worker's reactor once the parent process is gone."""
    parent = os.getppid()

    def check() -> None:
        if os.getppid() != parent:
            log.warn("parent process gone; worker stopping")
            reactor.stop()

    loop = LoopingCall(check)
    loop.start(1.0, now=False)
    return loop


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.pool.ended(self.index, reason)


class WorkerPool:
    """Start and keep N-1 workers alive that serve the parent's listening ports.

    :param argv: the ``srsd serve`` arguments (config path etc.) for a worker.
    :param ports: {endpoint name: listening port object} from the parent.
    :param reuseport: endpoint names the workers bind themselves (SO_REUSEPORT);
        the others are inherited as file descriptors.
    :param report_fd: a descriptor each worker inherits to report its metrics on
        (``report=fd:N``, :mod:`srsd.metrics_workers`).
    :param on_ended: called with the pid of each worker that ended.
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: list[str],
        ports: dict[str, Any],
        reuseport: frozenset[str] = frozenset(),
        report_fd: int | None = None,
        on_ended: Callable[[int], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.report_fd = report_fd
        self.on_ended = on_ended
        self.count = count
        self.argv = argv
        self.fds = {name: port.fileno() for name, port in ports.items() if name not in reuseport}
        self.tcp_ports = {name: port.getHost().port for name, port in ports.items() if name in reuseport}
        self.processes: dict[int, Any] = {}
        self.stopping = False

    def start(self) -> None:
        for index in range(1, self.count):
            self._spawn(index)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def _spawn(self, index: int) -> None:
        inherit = ",".join(
            [f"{name}=fd:{fd}" for name, fd in self.fds.items()]
            + [f"{name}=port:{port}" for name, port in self.tcp_ports.items()]
            + ([f"report=fd:{self.report_fd}"] if self.report_fd is not None else [])
        )
        args = [sys.executable, "-m", "srsd", "serve", *self.argv, "--inherit", inherit]
        child_fds: dict[int, Any] = {0: 0, 1: 1, 2: 2}
        child_fds.update({fd: fd for fd in self.fds.values()})
        if self.report_fd is not None:
            child_fds[self.report_fd] = self.report_fd
        # A SIGHUP relayed while the worker is still starting up would kill it (the default
        # action): it starts with SIGHUP blocked and unblocks it once its handler is set (serve).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            self.processes[index] = self.reactor.spawnProcess(
                _WorkerProcess(self, index), sys.executable, args, env=os.environ, childFDs=child_fds
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        log.info("worker {index} started (pid {pid})", index=index, pid=self.processes[index].pid)

    def ended(self, index: int, reason: Any) -> None:
        process = self.processes.pop(index, None)
        if process is not None and self.on_ended is not None:
            self.on_ended(process.pid)
        if self.stopping:
            return
        log.error("worker {index} ended ({reason}); restarting it in 1 s", index=index, reason=reason.getErrorMessage())
        self.reactor.callLater(1.0, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.processes:
            self._spawn(index)

    def signal_all(self, signum: int) -> None:
        for proc in list(self.processes.values()):
            try:
                proc.signalProcess(signum)
            except Exception:  # already gone
                pass

    def stop(self) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)
