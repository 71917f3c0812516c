"""The worker processes' counts, reported to the parent, which serves ``/metrics``.

Decided (docs/operations.md "Metrics"): the parent collects. Before it starts the
workers, the parent makes one unix datagram socket pair; every worker inherits one end
(``--inherit report=fd:N``) and sends its whole :meth:`~srsd.metrics.Tally.snapshot`
(cumulative counts, JSON, a few KB) every :data:`REPORT_INTERVAL` seconds and once when
it stops. The parent keeps each worker's latest snapshot and, when a worker ends, folds
its last one into the counts of ended workers, so totals never go back. A scrape shows
the parent's counts as they are and the workers' as of their last report (at most
:data:`REPORT_INTERVAL` s old); a worker killed outright loses at most that much.

Why not prometheus-client's multiprocess mode: it stores every value in a per-process
mmap file with a lock per increment (2.4-11 µs here, more than the lookup itself), it
is switched on by an environment variable read when prometheus_client is first
imported, needs a directory the unprivileged user can write and that is cleaned at
start, and a histogram with counts added in bulk would need its private attributes.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from srsd.metrics import TALLY, as_snapshot, merge_snapshots

__all__ = ["WorkerCounts", "Reporter", "REPORT_INTERVAL"]

REPORT_INTERVAL = 1.0  # seconds
_MAX_DATAGRAM = 1 << 20

log = Logger(namespace="srsd.metrics")


@implementer(IReadDescriptor)
class _Reader:
    def __init__(self, sock: socket.socket, received: Any) -> None:
        self.sock = sock
        self.received = received

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:  # noqa: N802 (Twisted's name)
        while True:
            try:
                data = self.sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            self.received(data)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        pass

    def logPrefix(self) -> str:  # noqa: N802
        return "srsd-worker-counts"


class WorkerCounts:
    """The parent's side: the socket pair, and the snapshots received."""

    def __init__(self) -> None:
        self._sock, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.latest: dict[int, dict[str, Any]] = {}
        self.ended: dict[str, Any] = {}  # the folded counts of workers that ended
        self._gone: set[int] = set()

    @property
    def child_fd(self) -> int:
        """The descriptor each worker inherits (kept open for workers started later)."""
        return self._child.fileno()

    def start(self, reactor: Any) -> None:
        reactor.addReader(_Reader(self._sock, self.received))

    def received(self, data: bytes) -> None:
        try:
            report = json.loads(data)
            pid = int(report["pid"])
            snapshot = report["snapshot"]
        except (ValueError, KeyError, TypeError):
            log.warn("a worker's metrics report is unreadable ({n} bytes); ignored", n=len(data))
            return
        if pid not in self._gone:
            self.latest[pid] = snapshot

    def retire(self, pid: int) -> None:
        """Worker *pid* ended: its last counts join those of the workers that ended."""
        self._gone.add(pid)
        last = self.latest.pop(pid, None)
        if last is not None:
            self.ended = as_snapshot(merge_snapshots([self.ended, last]))

    def snapshots(self) -> list[dict[str, Any]]:
        """Every worker's counts, for :class:`~srsd.metrics.TallyCollector`."""
        return [self.ended, *self.latest.values()]


class Reporter:
    """A worker's side: sends its counts over the inherited descriptor *fd*."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self._warned = False

    def start(self, reactor: Any) -> LoopingCall:
        loop = LoopingCall(self.send)
        loop.start(REPORT_INTERVAL, now=False)
        reactor.addSystemEventTrigger("before", "shutdown", self.send)
        return loop

    def send(self) -> None:
        data = json.dumps({"pid": os.getpid(), "snapshot": TALLY.snapshot()}).encode()
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # the parent is behind; the next report carries these counts too
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warn("cannot report metrics to the parent process: {error}", error=exc)
