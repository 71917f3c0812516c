"""A real Twisted reactor on a thread of its own, for tests that drive reactor-side code
(srsd.dns_async, SPFChecker's checks) from plain pytest functions.

The reactor is a fresh ``EPollReactor`` instance, never installed as the process's global
one (in-process tests of fake-reactor code keep theirs), run without signal handlers;
:meth:`ReactorThread.call` runs a function on it and waits for its result (a Deferred's
included).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.epollreactor import EPollReactor
from twisted.python import failure

from srsd.dns import Resolver
from srsd.dns_async import AsyncResolver, reading_records
from srsd.dns_wire import Reading

__all__ = ["ReactorResolver", "ReactorThread"]


class ReactorThread:
    def __init__(self) -> None:
        self.reactor = EPollReactor()
        self._thread = threading.Thread(target=self.reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
        self._thread.start()

    def call(self, f: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
        """``f(*args, **kwargs)`` on the reactor thread; its result (a Deferred's, waited for).

        :raises TimeoutError: no result within *timeout* seconds (a Deferred that never fires
            fails its test instead of hanging the suite).
        :raises Exception: what *f* raised or its Deferred failed with.
        """
        done: queue.Queue = queue.Queue()

        def start() -> None:
            d = defer.maybeDeferred(f, *args, **kwargs)
            d.addBoth(done.put)

        self.reactor.callFromThread(start)
        try:
            result = done.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{getattr(f, '__name__', f)} gave no result in {timeout:g} s") from None
        if isinstance(result, failure.Failure):
            result.raiseException()
        return result

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(10)


class ReactorResolver:
    """:class:`srsd.dns.Resolver`'s blocking interface over an :class:`AsyncResolver` on a
    :class:`ReactorThread` (the test's thread waits): the resolver tests run unchanged over
    both. ``resolve`` gives the :class:`~srsd.dns_wire.Reading` of an answer (None for
    NODATA and NXDOMAIN); the TTL of answers and NODATA is tracked as Resolver does."""

    def __init__(self, resolver: Resolver, loop: ReactorThread) -> None:
        self.resolver = AsyncResolver(resolver, loop.reactor)
        self.timeout = self.resolver.timeout
        self.loop = loop
        self._ttl: float | None = None

    def start_ttl_tracking(self) -> None:
        self._ttl = None

    def tracked_ttl(self) -> float | None:
        return self._ttl

    def reading(self, name: str, qtype: str, timeout: float | None = None) -> Reading:
        reading = self.loop.call(self.resolver.lookup, name, qtype, timeout)
        if reading.kind != "nxdomain":
            remaining = max(0.0, reading.expires - time.time())
            self._ttl = remaining if self._ttl is None else min(self._ttl, remaining)
        return reading

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list:
        return reading_records(self.reading(name, qtype, timeout), name)

    def resolve(self, name: str, qtype: str, timeout: float | None = None) -> Reading | None:
        reading = self.reading(name, qtype, timeout)
        return reading if reading.kind == "answer" else None
