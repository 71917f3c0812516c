#!/usr/bin/env python3
"""Run ``srsd`` (one process) with benchmark-only changes patched in.

    python bench/srsd_variant.py VARIANT[+VARIANT...] serve -c CONFIG.toml
    SRSD_BENCH_VARIANT=VARIANT[+...] PYTHONPATH=bench/variant_site python -m srsd serve ...

The second form (``bench/variant_site/sitecustomize.py``) patches worker
processes too. Used by ``bench/lookups.py --variants`` and ``bench/layers.py --variant`` to
measure a suggested change before anyone makes it in srsd/. Nothing here edits
srsd; the patches are prototypes, not reviewed code (every reply of a variant
is still checked by the load generator). Variants:

* ``nodelay-off``: leave Nagle on (srsd sets TCP_NODELAY on every connection).
* ``poll`` / ``select`` / ``asyncio``: that Twisted reactor instead of epoll.
* ``directwrite``: send a reply with one ``send()`` from ``dataReceived`` when
  the transport has nothing buffered, instead of ``transport.write()``, which
  only buffers and arms EPOLLOUT: that costs ``epoll_ctl`` twice and one more
  ``epoll_wait`` per reply.
* ``fastproto``: tcp_table fast path for the usual packet (one whole ``get KEY``
  line, nothing to unquote) and a reply encoder without the regex; implies
  ``directwrite``.
* ``fasthmac``: HMAC-SHA1 from precomputed inner/outer SHA-1 states,
  ``binascii.b2a_base64`` and the day stamp cached.
* ``fast``: all three above.
* (``accept1`` and ``reuseport``, two ways of spreading ``--workers`` connections
  measured in bench/README.md, are gone: srsd's parent now hands each connection to
  the process serving the fewest, srsd/handoff.py.)
* ``gcfreeze``: ``gc.freeze()`` after start-up and a higher gen-0 threshold.
* ``profile``: cProfile from start-up, stats written to $SRSD_PROFILE (default
  ./srsd.prof; ``{pid}`` in it becomes the process id) when the process exits
  (bench/profile_srsd.py).
"""

from __future__ import annotations

import os
import sys


def nodelay_off() -> None:
    from srsd.protocols.base import LookupProtocol

    original = LookupProtocol.connectionMade

    def connection_made(self):
        original(self)
        self.transport.setTcpNoDelay(False)

    LookupProtocol.connectionMade = connection_made


def poll_reactor() -> None:
    from twisted.internet import pollreactor

    pollreactor.install()


def select_reactor() -> None:
    from twisted.internet import selectreactor

    selectreactor.install()


def asyncio_reactor() -> None:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()


def direct_write() -> None:
    import time

    from twisted.internet.defer import Deferred

    from srsd.protocols.base import LookupProtocol
    from srsd.transport_write import write_now

    original = LookupProtocol.send

    def send(self, replies):
        if self._queue or self.overloaded or any(isinstance(r, Deferred) for r in replies):
            return original(self, replies)
        self.last_active = time.monotonic()
        write_now(self.transport, b"".join(replies))

    LookupProtocol.send = send


def fast_proto() -> None:
    import time

    from srsd.protocols import tcp_table
    from srsd.protocols.tcp_table import TcpTableProtocol
    from srsd.transport_write import write_now

    direct_write()
    original_received = TcpTableProtocol.dataReceived
    codes = {"found": b"200 ", "notfound": b"500 "}

    def encode(self, answer):
        status, text = answer
        # ASCII, printable, no space and no '%': nothing to %XX-encode.
        if text.isascii() and text.isprintable() and " " not in text and "%" not in text:
            return codes.get(status, b"400 ") + text.encode("ascii") + b"\n"
        return codes.get(status, b"400 ") + tcp_table.quote(text.encode("utf-8", "surrogateescape")) + b"\n"

    def nothing_buffered(self) -> bool:
        # srsd's framing state has had two shapes so far; anything else: slow path.
        lines = getattr(self, "_lines", None)
        if lines is not None:
            return not lines.partial and not lines.discarding
        return getattr(self, "_buffer", None) == b"" and getattr(self, "_discarding", None) is False

    def data_received(self, data):
        # The usual packet: one whole request, no buffered bytes, no escapes.
        if (
            self._queue
            or self.overloaded
            or getattr(self, "_read_closed", False)
            or data[-1:] != b"\n"
            or data.find(b"\n") != len(data) - 1
            or not data.startswith(b"get ")
            or b"%" in data
            or b"\r" in data
            or len(data) > self.factory.max_request_bytes
            or not nothing_buffered(self)
        ):
            return original_received(self, data)
        reply = self.run_lookup(self.factory.map_name, data[4:-1].decode("utf-8", "surrogateescape"))
        if type(reply) is not bytes:  # a Deferred: keep the ordering machinery
            return self.send([reply])
        self.last_active = time.monotonic()
        write_now(self.transport, reply)

    TcpTableProtocol.encode = encode
    TcpTableProtocol.dataReceived = data_received


def fast_hmac() -> None:
    import binascii
    import hashlib

    from srsd import srs

    ipad = bytes(x ^ 0x36 for x in range(256))
    opad = bytes(x ^ 0x5C for x in range(256))
    states: dict[bytes, tuple] = {}

    def digest(self, key, data):
        pair = states.get(key)
        if pair is None:
            block = (hashlib.sha1(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
            pair = states[key] = (hashlib.sha1(block.translate(ipad)), hashlib.sha1(block.translate(opad)))
        inner = pair[0].copy()
        inner.update(data.encode("utf-8", "surrogateescape").lower())
        outer = pair[1].copy()
        outer.update(inner.digest())
        return binascii.b2a_base64(outer.digest(), newline=False)[:27].decode("ascii")

    day_cache = [-1, ""]
    original_timestamp = srs.SRS.timestamp

    def timestamp(now):
        day = int(now) // 86400
        if day != day_cache[0]:
            day_cache[:] = [day, original_timestamp(now)]
        return day_cache[1]

    srs.SRS._digest = digest
    srs.SRS.timestamp = staticmethod(timestamp)


def fast() -> None:
    fast_proto()
    fast_hmac()


def gc_freeze() -> None:
    import gc

    from twisted.internet import reactor

    def freeze():
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)

    reactor.callWhenRunning(freeze)


def profile() -> None:
    import atexit
    import cProfile

    profiler = cProfile.Profile()
    path = os.environ.get("SRSD_PROFILE", "srsd.prof").replace("{pid}", str(os.getpid()))  # one file a process
    atexit.register(lambda: (profiler.disable(), profiler.dump_stats(path)))
    profiler.enable()


VARIANTS = {
    "nodelay-off": nodelay_off,
    "poll": poll_reactor,
    "select": select_reactor,
    "asyncio": asyncio_reactor,
    "directwrite": direct_write,
    "fastproto": fast_proto,
    "fasthmac": fast_hmac,
    "fast": fast,
    "gcfreeze": gc_freeze,
    "profile": profile,
}


def apply(names: list[str]) -> None:
    """Patch srsd with the named variants (reactor choices first)."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; known: {', '.join(sorted(VARIANTS))}")
    for name in sorted(names, key=lambda n: n not in ("poll", "select", "asyncio")):
        VARIANTS[name]()


def main() -> int:
    names, argv = sys.argv[1].split("+"), sys.argv[2:]
    if "--workers" in argv:
        sys.exit("--workers: use the SRSD_BENCH_VARIANT form (workers would start unpatched copies)")
    apply(names)
    from srsd.cli import main as srsd_main

    return srsd_main(argv)


if __name__ == "__main__":
    sys.exit(main())
