"""Where srsd's log lines go: stderr (the journal under systemd) or syslog (``[log]``).

* ``target = "stderr"`` (default): ``TIME srsd[PID] LEVEL: text``. Under systemd
  (``$JOURNAL_STREAM`` set) the time is left to the journal and each line starts with
  its syslog priority (``<6>``, sd-daemon(3)), so ``journalctl -p warning`` works.
* ``target = "syslog"``: ``srsd[PID]: text`` to ``log.syslog_socket`` (``/dev/log``)
  with facility ``log.facility`` (``mail``, beside Postfix's own lines), through
  Python's :class:`logging.handlers.SysLogHandler`. A thread sends them (a
  :class:`~logging.handlers.QueueListener`), so a stalled syslog daemon never stalls
  the reactor; past :data:`QUEUE_LINES` lines waiting, new ones are dropped and counted.

:class:`LogOutput` is the one observer (:data:`OUTPUT`); :func:`setup_logging` installs
it at start (stderr, before the configuration is read), ``srsd serve`` points it at syslog
when configured (:meth:`LogOutput.use_syslog`), and :func:`set_log_level` follows reloads.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys
from time import gmtime, strftime
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

__all__ = ["LogOutput", "SyslogSender", "setup_logging", "set_log_level", "debugging", "OUTPUT", "QUEUE_LINES"]

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
#: twisted level -> (syslog priority for the journal prefix, Python logging level)
_PRIORITY = {
    LogLevel.debug: (7, logging.DEBUG),
    LogLevel.info: (6, logging.INFO),
    LogLevel.warn: (4, logging.WARNING),
    LogLevel.error: (3, logging.ERROR),
    LogLevel.critical: (2, logging.CRITICAL),
}
#: syslog lines waiting for the sender thread before new ones are dropped
QUEUE_LINES = 10000

_level_filter = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Never waits: a full queue drops the line (and counts it)."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class SyslogSender:
    """Lines to a syslog socket from a thread of its own.

    :param socket_path: the unix socket (``/dev/log``).
    :param facility: a :attr:`SysLogHandler.facility_names` name (``mail``).
    :raises OSError: the socket cannot be reached.
    """

    def __init__(self, socket_path: str, facility: str) -> None:
        handler = logging.handlers.SysLogHandler(address=socket_path, facility=facility)
        sock = getattr(handler, "socket", None)
        if sock is None or sock.fileno() < 0:
            # SysLogHandler would retry at every line and lose them all: refuse at start.
            handler.close()
            raise OSError(f"no syslog socket to connect to at {socket_path}")
        handler.append_nul = False
        handler.setFormatter(logging.Formatter("srsd[%(process)d]: %(message)s"))
        self.handler = handler
        self.queue: queue.Queue[Any] = queue.Queue(QUEUE_LINES)
        self.enqueuer = _DroppingQueueHandler(self.queue)
        self.listener = logging.handlers.QueueListener(self.queue, handler)
        self.listener.start()

    def send(self, level: int, text: str) -> None:
        record = logging.LogRecord("srsd", level, "", 0, text, None, None)
        self.enqueuer.enqueue(record)

    def close(self) -> None:
        """Send what is queued and stop the thread."""
        self.listener.stop()
        self.handler.close()


@implementer(ILogObserver)
class LogOutput:
    """The observer writing every event that passes the level filter to the target."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.journald = bool(os.environ.get("JOURNAL_STREAM"))
        self.syslog: SyslogSender | None = None

    def __call__(self, event: dict) -> None:
        text = formatEvent(event)
        if event.get("log_failure") is not None:
            text += "\n" + event["log_failure"].getTraceback()
        level = event.get("log_level", LogLevel.info)
        priority, py_level = _PRIORITY.get(level, (6, logging.INFO))
        if self.syslog is not None:
            self.syslog.send(py_level, text.replace("\n", "\n    "))
            return
        prefix = f"srsd[{os.getpid()}] {level.name}: "
        if self.journald:
            lines = text.split("\n")
            self.stream.write("".join(f"<{priority}>{prefix if i == 0 else '    '}{line}\n"
                                      for i, line in enumerate(lines)))  # fmt: skip
        else:
            prefix = strftime("%Y-%m-%dT%H:%M:%SZ ", gmtime(event.get("log_time", 0))) + prefix
            self.stream.write(prefix + text.replace("\n", "\n    ") + "\n")
        self.stream.flush()

    def use_syslog(self, socket_path: str, facility: str) -> None:
        """Send to syslog from now on. :raises OSError: the socket cannot be reached."""
        sender = SyslogSender(socket_path, facility)
        old, self.syslog = self.syslog, sender
        if old is not None:
            old.close()

    def close(self) -> None:
        """Flush and stop the syslog thread (at exit)."""
        if self.syslog is not None:
            sender, self.syslog = self.syslog, None
            sender.close()


#: the one output, installed by :func:`setup_logging`
OUTPUT = LogOutput()


def setup_logging(stream: Any = None) -> LogOutput:
    """Start logging every event at the configured level (info until :func:`set_log_level`)
    to stderr (or *stream*)."""
    if stream is not None:
        OUTPUT.stream = stream
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(OUTPUT, [_level_filter])], redirectStandardIO=False)
    return OUTPUT


_debugging = False


def debugging() -> bool:
    """True when debug events are logged: a hot path skips building the ones it would
    only have filtered out (a Twisted event costs its dict and the observer chain)."""
    return _debugging


def set_log_level(name: str) -> None:
    """Log events at *name* (debug, info, warn, error) and above."""
    global _debugging
    level = _LEVELS[name]
    _debugging = level <= LogLevel.debug
    _level_filter.setLogLevelForNamespace("", level)
    # Twisted's own per-port and per-factory chatter only when debugging.
    quiet = LogLevel.warn if name == "info" else level
    for namespace in ("twisted", "log_legacy"):
        _level_filter.setLogLevelForNamespace(namespace, quiet)
