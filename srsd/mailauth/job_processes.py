"""The milter's per-message jobs in processes of their own (``[dkim] processes``).

A thread pool (:mod:`srsd.workpool`) runs the crypto beside the reactor, but every
job's Python -- canonicalization, hashing, parsing, DMARC -- takes turns with the
reactor and the other jobs on one GIL: through Postfix the workers spent ~1.4x their
in-process CPU, and the reactor waited for the GIL behind them (docs/performance.md,
"DKIM milter"). Here each job runs in a child process (``python -m
srsd.mailauth.job_processes``), one at a time per child, so the jobs run on every core
and the reactor only moves bytes.

The protocol, one way per pipe: frames of a 4-byte big-endian length and a pickle.
The parent writes ``("context", (settings, table, resolver spec))`` when a child's
copy is older than the handler's, then ``("job", f, args)`` with ``f`` a module-level
function of :mod:`srsd.mailauth.handler`; the child answers ``(True, result)`` or
``(False, exception)``. The resolver, the settings and the signing table in a job's
arguments travel as references to the child's copy (a call of :func:`_context_object`),
so a job is its message and a few small values.

Nothing lost: a job past its deadline fails its caller with ``defer.TimeoutError``
(the child is busy until it answers, counted); a child that dies fails its job with
:class:`JobProcessDied` and is started again; more than ``4 * processes`` jobs in
flight fail at once with :class:`~srsd.workpool.PoolOverloaded`. The handler answers
all of these with ``dkim.on_error``.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.logger import Logger

from srsd.dns import Resolver
from srsd.transport_write import writer
from srsd.workpool import PoolOverloaded

__all__ = ["JobProcessDied", "JobProcesses", "main"]

log = Logger(namespace="srsd.mailauth")

_LENGTH = struct.Struct("!I")
#: the largest frame either side accepts (a message is at most Postfix's
#: message_size_limit, 10 MB by default, plus its fields)
MAX_FRAME = 256 * 1024 * 1024
#: seconds before a child that died is started again (a child that dies at once,
#: e.g. a broken install, must not spin)
RESTART_DELAY = 1.0
#: seconds a child may go on past its job's deadline before it is killed (and replaced):
#: its caller has had its answer; a child stuck for good must not hold its slot
KILL_AFTER = 5.0
#: signals a child ignores: the parent's to act on
_IGNORED = {signal.SIGHUP, signal.SIGINT}


class JobProcessDied(Exception):
    """The child running the job exited before answering."""


class _Pickler(pickle.Pickler):
    """Pickles the objects of *references* (by ``id``) as ``_context_object(name)``.

    ``reducer_override``, unlike ``persistent_id``, is not called for the str, bytes,
    int, tuple, list and dict that make up most of a job: ~5 Python calls a job instead
    of ~100 (a forwarded message's job pickles in ~12 µs instead of ~20).
    """

    def __init__(self, file: Any, references: dict[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.references = references

    def reducer_override(self, obj: Any) -> Any:
        name = self.references.get(id(obj))
        if name is None:
            return NotImplemented
        return _context_object, (name,)


def frame(obj: Any, references: dict[int, str] | None = None) -> bytes:
    """*obj* pickled behind its length; the objects of *references* as references."""
    if not references:  # pickle's C path alone, no Python call per object (an answer: ~16 µs, not ~37)
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return _LENGTH.pack(len(data)) + data
    buffer = io.BytesIO()
    buffer.write(b"\0\0\0\0")
    _Pickler(buffer, references).dump(obj)
    data = buffer.getbuffer()
    _LENGTH.pack_into(data, 0, len(data) - 4)
    return bytes(data)


# -- the child ---------------------------------------------------------------------------------------------


class _Context:
    """What a child's jobs refer to: the handler's settings and signing table, and a
    resolver of its own (its own caches)."""

    def __init__(self) -> None:
        self.settings: Any = None
        self.table: Any = None
        self.resolver: Any = None
        self.spec: tuple | None = None

    def update(self, settings: Any, table: Any, spec: tuple) -> None:
        self.settings, self.table = settings, table
        if spec != self.spec:
            self.resolver, self.spec = Resolver(*spec), spec


_CONTEXT = _Context()  # a child's: what the references in its jobs resolve to


def _context_object(name: str) -> Any:
    """The child's copy of the parent's object *name* (``resolver``, ``settings``, ``table``):
    what :class:`_Pickler`'s references unpickle as."""
    return getattr(_CONTEXT, name)


def _read_exactly(stream: Any, n: int) -> bytes | None:
    data = stream.read(n)  # a blocking buffered read: all n bytes, or fewer at the end
    return data if len(data) == n else None


def main() -> int:
    """A child: run the jobs its parent writes on stdin, answer on stdout, until stdin
    closes (the parent stopped or died)."""
    # SIGHUP and ^C are the parent's business (it reloads or stops, then closes our
    # stdin); they were blocked from the spawn until now (_spawn)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED)
    from srsd.mailauth import dkimpy_setup

    dkimpy_setup.install()
    # the answers go out on a copy of stdout; fd 1 itself becomes stderr, so a stray
    # print cannot break a frame
    stdin, stdout = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    context = _CONTEXT
    while (head := _read_exactly(stdin, 4)) is not None:
        (length,) = _LENGTH.unpack(head)
        data = _read_exactly(stdin, length) if length <= MAX_FRAME else None
        if data is None:
            return 1
        kind, *rest = pickle.loads(data)
        if kind == "context":
            context.update(*rest[0])
            continue
        f, args = rest
        try:
            answer = frame((True, f(*args)))
        except Exception as exc:  # the parent's Deferred fails with it
            answer = _failure_frame(exc)
        try:
            stdout.write(answer)
            stdout.flush()
        except BrokenPipeError:  # the parent stopped (or died) while this job ran
            return 0
    return 0


def _failure_frame(exc: Exception) -> bytes:
    try:
        return frame((False, exc))
    except Exception:  # an exception that does not pickle: its text
        return frame((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


# -- the parent ----------------------------------------------------------------------------------------------


class _Job:
    __slots__ = ("data", "deferred", "timeout", "child")

    def __init__(self, data: bytes, deferred: defer.Deferred) -> None:
        self.data, self.deferred, self.timeout = data, deferred, None
        self.child: _Child | None = None  # the child running it


class _Child(protocol.ProcessProtocol):
    """One child process: the job it runs (None: idle) and the context generation it holds."""

    def __init__(self, pool: JobProcesses) -> None:
        self.pool = pool
        self.job: _Job | None = None
        self.generation = -1
        self.buffer = bytearray()
        self.running = False
        self.exit_code: int | None = None  # once it ended (None: a signal, or still running)

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's name)
        self.running = True
        self.send = writer(self.transport.pipes[0])  # the child's stdin; sent now, not next pass

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = _LENGTH.unpack_from(self.buffer)
            if len(self.buffer) < 4 + length:
                return
            answer = bytes(memoryview(self.buffer)[4 : 4 + length])
            del self.buffer[: 4 + length]
            self._answered(answer)

    def _answered(self, data: bytes) -> None:
        job, self.job = self.job, None
        try:
            ok, value = pickle.loads(data)
        except Exception as exc:
            ok, value = False, exc
        self.pool.done(self, job, ok, value)

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.running = False
        self.exit_code = getattr(reason.value, "exitCode", None)
        job, self.job = self.job, None
        self.pool.ended(self, job, reason)


class JobProcesses:
    """Run :mod:`srsd.mailauth.handler`'s jobs in *processes* child processes.

    :param reactor: the reactor (``spawnProcess``, ``callLater``; results come back on
        its thread).
    :param processes: children (1..64); started on the first job or :meth:`start`.
    :param resolver: the handler's :class:`~srsd.dns.Resolver`: each child builds one
        like it (:attr:`~srsd.dns.Resolver.spec`), with caches of its own.
    """

    def __init__(self, reactor: Any, processes: int, resolver: Any) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.pending = 0  # jobs queued or running
        self._size = processes
        self._children: list[_Child] = []
        self._idle: deque[_Child] = deque()
        self._queue: deque[_Job] = deque()
        self._generation = 0
        self._context: tuple[Any, Any] | None = None
        self._context_frame = b""
        self._stopped = False
        self._draining = False  # stop once the jobs in flight are done
        self._trigger: Any = reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    @property
    def max_pending(self) -> int:
        return 4 * self._size

    def set_context(self, settings: Any, table: Any) -> None:
        """The settings and signing table the jobs refer to from now on (each child gets
        them before its next job)."""
        self._context = (settings, table)
        self._generation += 1
        self._context_frame = b""

    def start(self) -> None:
        """Start the children now (rather than on the first job)."""
        while len(self._children) < self._size and not self._stopped:
            self._spawn()

    def resize(self, processes: int) -> None:
        """*processes* children from now on (extra ones exit once idle)."""
        self._size = processes
        if self._children:
            self.start()
        while len(self._children) > self._size and self._idle:
            self._retire(self._idle.pop())

    def stop(self) -> None:
        """Close every child's stdin (each exits after its job); fail the queued jobs."""
        self._stopped = True
        if self._trigger is not None:
            self.reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        for child in list(self._children):
            self._retire(child)
        while self._queue:
            job = self._queue.popleft()
            self._fail(job, PoolOverloaded("the job processes are stopped"))

    def stop_when_done(self) -> None:
        """Take no more jobs; :meth:`stop` once those in flight are answered (a reload to
        ``processes = 0``: the messages under way finish here)."""
        self._draining = True
        if self.pending == 0:
            self.stop()

    def run_until(self, deadline: float, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """``f(*args)`` in a child by *deadline* (``time.monotonic()`` seconds).

        :returns: a Deferred with f's result; it fails with :class:`PoolOverloaded` (at
            once), ``defer.TimeoutError``, :class:`JobProcessDied`, or what f raised.
        """
        if self._stopped or self._draining:
            return defer.fail(PoolOverloaded("the job processes are stopped"))
        if self.pending >= self.max_pending:
            return defer.fail(PoolOverloaded(f"{self.pending} jobs in progress"))
        try:
            data = frame(("job", f, args), self._references())
        except Exception:
            return defer.fail()
        job = _Job(data, defer.Deferred(lambda d: self._cancel(job)))
        timeout = max(0.0, deadline - time.monotonic())
        job.timeout = self.reactor.callLater(timeout, self._timed_out, job, timeout)
        self.pending += 1
        self._queue.append(job)
        if not self._children:
            self.start()
        self._dispatch()
        return job.deferred

    def _references(self) -> dict[int, str]:
        settings, table = self._context or (None, None)
        refs = {id(self.resolver): "resolver"}
        if settings is not None:
            refs[id(settings)] = "settings"
            refs[id(table)] = "table"
        return refs

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            job = self._queue.popleft()
            if job.deferred.called:  # timed out or cancelled while queued
                self.pending -= 1
                continue
            child = self._idle.popleft()
            child.job, job.child = job, child
            if child.generation != self._generation:
                child.send(self._context_bytes())
                child.generation = self._generation
            child.send(job.data)

    def _context_bytes(self) -> bytes:
        if not self._context_frame:
            settings, table = self._context or (None, None)
            self._context_frame = frame(("context", (settings, table, self.resolver.spec)))
        return self._context_frame

    def _cancel(self, job: _Job) -> None:
        if job.timeout is not None and job.timeout.active():
            job.timeout.cancel()

    def _timed_out(self, job: _Job, seconds: float) -> None:
        if not job.deferred.called:
            job.deferred.errback(defer.TimeoutError(f"took more than {seconds:g} s"))
        if job.child is not None and job.child.job is job:
            self.reactor.callLater(KILL_AFTER, self._kill_if_stuck, job.child, job)

    def _kill_if_stuck(self, child: _Child, job: _Job) -> None:
        if child.job is job and child.running:
            log.warn("a DKIM job process is {s:g} s past its message's deadline: killed", s=KILL_AFTER)
            child.transport.signalProcess("KILL")

    def _fail(self, job: _Job, exc: Exception) -> None:
        self.pending -= 1
        self._cancel(job)
        if not job.deferred.called:
            job.deferred.errback(exc)

    def done(self, child: _Child, job: _Job | None, ok: bool, value: Any) -> None:
        """A child answered (reactor thread)."""
        if child in self._children:
            self._idle.append(child)
        if job is not None:
            self.pending -= 1
            self._cancel(job)
            if not job.deferred.called:
                if ok:
                    job.deferred.callback(value)
                else:
                    job.deferred.errback(value if isinstance(value, Exception) else RuntimeError(repr(value)))
        if len(self._children) > self._size and child in self._idle:
            self._idle.remove(child)
            self._retire(child)
        self._dispatch()
        if self._draining and self.pending == 0 and not self._stopped:
            self.stop()

    def ended(self, child: _Child, job: _Job | None, reason: Any) -> None:
        """A child exited: its job fails, and unless it was retired another takes its place."""
        retired = child not in self._children
        if not retired:
            self._children.remove(child)
        if child in self._idle:
            self._idle.remove(child)
        if job is not None:
            self._fail(job, JobProcessDied(f"the job process exited ({reason.getErrorMessage()})"))
        if retired or self._stopped:
            return
        log.warn("a DKIM job process exited ({why}); starting another", why=reason.getErrorMessage())
        self.reactor.callLater(RESTART_DELAY, self._replace)

    def _replace(self) -> None:
        if not self._stopped and len(self._children) < self._size:
            self._spawn()
            self._dispatch()

    def _spawn(self) -> None:
        child = _Child(self)
        argv = [sys.executable, "-m", "srsd.mailauth.job_processes"]
        # As srsd.workers starts its children: a SIGHUP (a reload signalled to the whole
        # group) before the child ignores it would kill it, so it starts with them blocked.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _IGNORED)
        try:
            self.reactor.spawnProcess(child, sys.executable, argv, env=os.environ, childFDs={0: "w", 1: "r", 2: 2})
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self._children.append(child)
        self._idle.append(child)

    def _retire(self, child: _Child) -> None:
        if child in self._children:
            self._children.remove(child)
        if child in self._idle:
            self._idle.remove(child)
        if child.running:
            child.transport.closeStdin()


if __name__ == "__main__":
    # as the module pickle names (srsd.mailauth.job_processes), not as __main__: a job's
    # references must reach the _CONTEXT that main() fills
    from srsd.mailauth import job_processes

    sys.exit(job_processes.main())
