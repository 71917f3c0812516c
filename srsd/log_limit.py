"""Rate limits for the decision lines, so a flood of junk cannot fill the disk.

Every decision line an admin asks about (a rewrite, a refusal, a policy verdict, a
milter message) is logged through :data:`LIMITER`: a token bucket per kind of line
(``log.rate_limit`` lines a second, bursts of ``log.burst``). A line past the limit
is counted, not formatted; every :data:`SUMMARY_INTERVAL` seconds each kind that lost
lines gets one ``N '<kind>' lines suppressed`` line (and the
``srsd_log_lines_suppressed_total`` metric). Lines srsd writes once (start, reload,
errors of its own) are not limited.

:class:`OncePerDay` remembers keys already logged today (UTC): a sender's SRS address
is the same all day (its timestamp counts days), so one line per sender and day
gives the whole mapping, however many messages follow.

Reactor thread only. :func:`tick` runs once a second (:mod:`srsd.service`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from srsd import metrics

__all__ = ["TokenBucket", "RateLimiter", "LimitedLog", "OncePerDay", "LIMITER", "once_per_day", "tick"]

#: seconds between two "lines suppressed" summaries of one kind
SUMMARY_INTERVAL = 10.0

log = Logger(namespace="srsd")


class TokenBucket:
    """*rate* tokens a second, at most *burst* saved up; each line takes one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1
        return True


class RateLimiter:
    """A :class:`TokenBucket` per kind of line, and the count of lines each left out.

    :param rate: lines a second per kind (0: no limit).
    :param burst: lines a kind may write at once after a quiet spell.
    :param clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, rate: float = 20.0, burst: int = 200, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._suppressed: dict[str, int] = {}
        self._since: dict[str, float] = {}

    def configure(self, rate: float, burst: int) -> None:
        """New limits (a reload); buckets start full."""
        if (rate, burst) != (self.rate, self.burst):
            self.rate, self.burst = rate, burst
            self._buckets.clear()

    def allow(self, kind: str) -> bool:
        """Whether a line of *kind* may be written now; if not, it is counted."""
        if not self.rate:
            return True
        now = self.clock()
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = TokenBucket(self.rate, self.burst, now)
        if bucket.take(now):
            return True
        if kind not in self._suppressed:
            self._suppressed[kind] = 0
            self._since[kind] = now
        self._suppressed[kind] += 1
        return False

    def summarize(self) -> None:
        """One line per kind whose suppressed lines are due for a summary."""
        now = self.clock()
        for kind in [k for k, since in self._since.items() if now - since >= SUMMARY_INTERVAL]:
            n = self._suppressed.pop(kind)
            since = self._since.pop(kind)
            metrics.count_suppressed(kind, n)
            log.warn(
                "log: {n} '{kind}' lines suppressed in the last {seconds:.0f} s (log.rate_limit = {rate:g} a second)",
                n=n,
                kind=kind,
                seconds=now - since,
                rate=self.rate,
            )


#: the rate limiter every decision line goes through (configured from [log] by the service)
LIMITER = RateLimiter()


class LimitedLog:
    """A :class:`twisted.logger.Logger` whose ``info``/``warn`` take the kind of line
    first and go through :data:`LIMITER`."""

    def __init__(self, logger: Logger, limiter: RateLimiter | None = None) -> None:
        self.logger = logger
        self.limiter = limiter

    # Positional-only: a line's own fields may be called "kind" too.
    def info(self, kind: str, fmt: str, /, **kwargs: Any) -> None:
        if (self.limiter or LIMITER).allow(kind):
            self.logger.info(fmt, **kwargs)

    def warn(self, kind: str, fmt: str, /, **kwargs: Any) -> None:
        if (self.limiter or LIMITER).allow(kind):
            self.logger.warn(fmt, **kwargs)


class OncePerDay:
    """Keys seen today (UTC day); at most *max_keys* remembered (then it starts over).

    ``key in once.keys`` is the fast test; :meth:`first` adds."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self.keys: set[Any] = set()
        self.day = int(time.time() // 86400)

    def first(self, key: Any) -> bool:
        """True the first time *key* is seen today."""
        if key in self.keys:
            return False
        if len(self.keys) >= self.max_keys:
            self.keys.clear()
        self.keys.add(key)
        return True

    def roll(self, now: float) -> None:
        """Forget every key when the UTC day of *now* (unix seconds) is a new one."""
        day = int(now // 86400)
        if day != self.day:
            self.day = day
            self.keys.clear()


_ONCE: list[OncePerDay] = []


def once_per_day(max_keys: int = 100_000) -> OncePerDay:
    """A new :class:`OncePerDay`, rolled over by :func:`tick`."""
    once = OncePerDay(max_keys)
    _ONCE.append(once)
    return once


def tick() -> None:
    """Once a second: summaries of suppressed lines, a new day for :class:`OncePerDay`."""
    LIMITER.summarize()
    now = time.time()
    for once in _ONCE:
        once.roll(now)
