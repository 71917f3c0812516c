"""The processes serving the parent's endpoints: ``--workers N``, the lookup and policy processes.

The first process binds every endpoint, then starts the others: N-1 copies of
itself (``srsd serve --workers N``) for the endpoints Twisted serves (milter; policy
with ``[daemon] policy_processes = 0``, the lookups with ``lookup_processes = 0``),
the lookup processes for tcp_table and socketmap and the policy processes for
policy (both :mod:`srsd.lookup_loop`, on uvloop). The parent accepts
every connection of an endpoint that several processes serve and hands it to the one
with the fewest (:mod:`srsd.handoff`); children bind nothing. The parent relays SIGHUP,
restarts a child that dies, and stops them when it stops; a child whose parent is gone
stops itself.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from srsd.handoff import Dealer

__all__ = [
    "default_workers",
    "MAX_DEFAULT_WORKERS",
    "LOOKUP_PROCESS",
    "POLICY_PROCESS",
    "WORKER",
    "WorkerPool",
    "parse_inherit",
    "stop_once_on_sigterm",
    "watch_parent",
    "tell_parent",
]

log = Logger(namespace="srsd.workers")

#: the kinds of child (the log's and /metrics' names for them)
WORKER, LOOKUP_PROCESS, POLICY_PROCESS = "worker", "lookup process", "policy process"


#: the most processes :func:`default_workers` gives (each has its own SPF result and DNS
#: caches and ~60 MB; an admin who wants more says ``[daemon] workers``)
MAX_DEFAULT_WORKERS = 4


def default_workers(serves_policy: bool, cpus: int | None = None) -> int:
    """The Twisted processes ``srsd serve`` runs when neither ``--workers`` nor
    ``[daemon] workers`` says: one per CPU this process may run on (*cpus*, default
    ``os.sched_getaffinity``), at most :data:`MAX_DEFAULT_WORKERS`, when they serve
    the policy endpoint (*serves_policy*: ``[daemon] policy_processes = 0``), else 1.

    Why: a cold SPF check costs ~1 ms of CPU in Python and a busy host's smtpd processes
    keep one policy connection each, so one process is the bound (docs/performance.md:
    0.46-0.58x policyd-spf's checks/s at 8 connections on 2 cores with 1 process, ~1.06x
    with 2). The milter alone gains nothing from a second process where Postfix takes
    the other core (docs/performance.md, DKIM milter), and by default the lookups and
    the policy endpoint have processes of their own (``[daemon] lookup_processes``,
    ``policy_processes``).
    """
    if not serves_policy:
        return 1
    if cpus is None:
        cpus = len(os.sched_getaffinity(0))
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def parse_inherit(text: str) -> dict[str, tuple[str, int]]:
    """``name=deal:N,report=fd:N`` -> {name: ("deal", N) or ("fd", N)}: the channel
    an endpoint's connections arrive on (:mod:`srsd.handoff`), or a descriptor
    (``report``: :mod:`srsd.metrics_workers`).

    :raises ValueError: on bad syntax.
    """
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        kind, _, number = value.partition(":")
        if kind not in ("fd", "deal"):
            raise ValueError(f"bad --inherit item {item!r}")
        out[name] = (kind, int(number))
    return out


_PR_SET_PDEATHSIG = 1  # prctl(2), <linux/prctl.h>
_PARENT_ENV = "SRSD_PARENT_PID"  # set by WorkerPool._spawn: the pid the child must outlive


def _die_with_parent() -> None:
    """Ask Linux for a SIGTERM the moment the parent dies (prctl(2) PR_SET_PDEATHSIG),
    so a SIGKILLed parent's children stop serving its sockets at once instead of
    answering on orphaned connections beside a restarted parent.
    Elsewhere, or if prctl fails, the once-a-second poll of :func:`watch_parent` stands."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def stop_once_on_sigterm(reactor: Any) -> None:
    """SIGTERM and SIGINT stop the reactor, once: systemd's stop signals every process of
    the unit and the parent relays it too, and the reactors' own handlers (Twisted's and
    the asyncio one's) raise ReactorNotRunning on the second, logged as critical.
    Installed once the reactor runs (over Twisted's), in every process of ``srsd serve``."""
    stopping = []

    def stop() -> None:
        if not stopping:
            stopping.append(True)
            reactor.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: reactor.callFromThread(stop))


def watch_parent(reactor: Any) -> LoopingCall:
    """Stop this worker's reactor once the parent process is gone: at once by the
    kernel's SIGTERM where Linux gives one (:func:`_die_with_parent`), else within a
    second by polling ``getppid()``."""
    _die_with_parent()
    # The parent's pid from the environment: a parent that died before prctl above is
    # seen by the first poll (getppid() is then init or a subreaper, not the parent).
    parent = int(os.environ.get(_PARENT_ENV) or os.getppid())

    def check() -> None:
        if os.getppid() != parent:
            log.warn("parent process gone; worker stopping")
            reactor.stop()

    loop = LoopingCall(check)
    loop.start(1.0, now=False)
    return loop


class _Child(protocol.ProcessProtocol):
    """One process of the pool, of a *kind*: ``worker``, ``lookup process`` or ``policy process``."""

    def __init__(self, pool: WorkerPool, index: int, kind: str) -> None:
        self.pool = pool
        self.index = index
        self.kind = kind
        self.ready = False  # serving: it said so on its status pipe
        self.reloaded: defer.Deferred | None = None  # fires when it reports a reload done

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        for word in data.split():
            if word == b"ready":
                self.ready = True
                self.pool.child_ready(self)
            elif word in (b"reloaded", b"refused"):
                waiting, self.reloaded = self.reloaded, None
                if waiting is not None and not waiting.called:  # (not timed out)
                    waiting.callback(word.decode())

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.pool.ended(self, reason)


class WorkerPool:
    """Start and keep alive the processes that serve the parent's endpoints: N-1
    workers (``--workers N``: Twisted processes like the parent, for every endpoint
    no other kind serves) and the processes on uvloop (:mod:`srsd.lookup_loop`): the
    lookup processes (``[daemon] lookup_processes``) and the policy processes
    (``[daemon] policy_processes``).

    Each child gets a channel from *dealer* for the endpoints it serves, and the
    connections the parent accepts on them (:class:`srsd.handoff.Dealer`).

    :param argv: the ``srsd serve`` arguments (config path etc.) for a child.
    :param ports: {endpoint name: listening port object} from the parent.
    :param dealer: hands the parent's connections to the children.
    :param apart: {kind: (processes, endpoint names)} of the uvloop kinds
        (``lookup process``, ``policy process``); a kind with 0 processes leaves its
        endpoints to the workers.
    :param report_fd: a descriptor each child inherits to report its metrics on
        (``report=fd:N``, :mod:`srsd.metrics_workers`).
    :param on_ended: called with the pid of each child that ended.
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: list[str],
        ports: dict[str, Any],
        dealer: Dealer,
        apart: dict[str, tuple[int, frozenset[str]]] | None = None,
        report_fd: int | None = None,
        on_ended: Callable[[int], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.argv = argv
        self.report_fd = report_fd
        self.on_ended = on_ended
        self.dealer = dealer
        apart = {kind: (n, names) for kind, (n, names) in (apart or {}).items() if n}
        elsewhere = frozenset().union(*(names for _, names in apart.values()))
        #: {kind: (processes, endpoint names in the parent's order)}
        self.kinds: dict[str, tuple[int, list[str]]] = {
            WORKER: (count - 1, [name for name in ports if name not in elsewhere]),
            **{kind: (n, [name for name in ports if name in names]) for kind, (n, names) in apart.items()},
        }
        self.processes: dict[tuple[str, int], Any] = {}
        self.children: dict[tuple[str, int], _Child] = {}
        self.stopping = False
        self._starting: set[tuple[str, int]] = set()
        #: fires once every child of the first start serves; fails when one ends before
        self.ready: defer.Deferred = defer.Deferred()

    def start(self) -> None:
        for kind, (n, names) in self.kinds.items():
            if names:
                self._starting |= {(kind, index) for index in range(1, n + 1)}
        for kind, index in sorted(self._starting):
            self._spawn(index, kind)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        if not self._starting:
            self.ready.callback(None)

    def reload(self, timeout: float = 10.0) -> defer.Deferred:
        """Relay SIGHUP to every child. :returns: a Deferred firing with the number of
        children that have not reported the reload done within *timeout* seconds (0:
        all did); a child still starting reads the new configuration as it starts."""
        waits = []
        for key, proc in list(self.processes.items()):
            child = self.children[key]
            if child.ready:
                child.reloaded = defer.Deferred()
                waits.append(child.reloaded.addTimeout(timeout, self.reactor).addErrback(lambda _: None))
            try:
                proc.signalProcess(signal.SIGHUP)
            except Exception:  # already gone
                pass
        done = defer.gatherResults(waits)
        return done.addCallback(lambda words: sum(word is None for word in words))

    def _spawn(self, index: int, kind: str) -> None:
        names = self.kinds[kind][1]
        # the child's end of the channel its connections come on
        channel = self.dealer.add((kind, index), names, f"{kind} {index}")
        inherit = {name: f"deal:{channel.fileno()}" for name in names}
        if self.report_fd is not None:
            inherit["report"] = f"fd:{self.report_fd}"
        items = ",".join(f"{name}={value}" for name, value in inherit.items())
        args = [sys.executable, "-m", "srsd", "serve", *self.argv, "--inherit", items]
        child_fds: dict[int, Any] = {0: 0, 1: 1, 2: 2, channel.fileno(): channel.fileno()}
        if self.report_fd is not None:
            child_fds[self.report_fd] = self.report_fd
        status_fd = max(child_fds) + 1
        child_fds[status_fd] = "r"  # the child's status pipe: "ready", "reloaded" (tell_parent)
        args += ["--status-fd", str(status_fd)] + (["--lookups"] if kind != WORKER else [])  # uvloop
        # A SIGHUP relayed while the child is still starting up would kill it (the default
        # action): it starts with SIGHUP blocked and unblocks it once its handler is set (serve).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGUSR1})
        try:
            child = self.children[(kind, index)] = _Child(self, index, kind)
            self.processes[(kind, index)] = self.reactor.spawnProcess(
                child, sys.executable, args, env=os.environ | {_PARENT_ENV: str(os.getpid())}, childFDs=child_fds
            )
        except BaseException:
            self.dealer.remove((kind, index))
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            channel.close()  # the child's end is the child's now
        pid = self.processes[(kind, index)].pid
        log.info("{what} {index} started (pid {pid})", what=kind, index=index, pid=pid)

    def child_ready(self, child: _Child) -> None:
        key = (child.kind, child.index)
        self.dealer.ready(key)
        if key in self._starting:
            self._starting.discard(key)
            if not self._starting and not self.ready.called:
                self.ready.callback(None)
        else:  # a restarted child: new connections go to it again
            log.info("{what} {index} serving again", what=child.kind, index=child.index)

    def ended(self, child: _Child, reason: Any) -> None:
        key = (child.kind, child.index)
        process = self.processes.pop(key, None)
        self.dealer.remove(key)  # its connections went with it; the next go elsewhere
        if process is not None and self.on_ended is not None:
            self.on_ended(process.pid)
        if child.reloaded is not None and not child.reloaded.called:
            child.reloaded.callback(None)  # gone: nothing to wait for
        child.reloaded = None
        if self.stopping:
            return
        what = child.kind
        if key in self._starting and not self.ready.called:
            self.ready.errback(RuntimeError(f"{what} {child.index} ended before serving ({reason.getErrorMessage()})"))
            return
        log.error("{what} {index} ended ({reason}); restarting it in 1 s", what=what, index=child.index,
                  reason=reason.getErrorMessage())  # fmt: skip
        self.reactor.callLater(1.0, self._respawn, child.index, child.kind)

    def _respawn(self, index: int, kind: str) -> None:
        if not self.stopping and (kind, index) not in self.processes:
            self._spawn(index, kind)

    def signal_all(self, signum: int) -> None:
        for proc in list(self.processes.values()):
            try:
                proc.signalProcess(signum)
            except Exception:  # already gone
                pass

    def stop(self) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)


def tell_parent(fd: int | None, word: str) -> None:
    """Write *word* (``ready``, ``reloaded``, ``refused``) to the status pipe *fd* that
    the parent gave this child (``--status-fd``; None: not a child)."""
    if fd is not None:
        try:
            os.write(fd, word.encode() + b"\n")
        except OSError:
            pass  # the parent is gone: watch_parent stops this process

