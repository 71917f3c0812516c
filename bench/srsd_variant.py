#!/usr/bin/env python3
"""Run ``srsd`` (one process) with a benchmark-only change patched in.

    python bench/srsd_variant.py VARIANT[+VARIANT...] serve -c CONFIG.toml

Used by ``bench/lookups.py --variants``; nothing here changes srsd itself.
Variants (see VARIANTS):

* ``nodelay-off``: leave Nagle on (srsd sets TCP_NODELAY on every connection).
* ``poll`` / ``select``: Twisted's poll or select reactor instead of epoll.
* ``profile``: run under cProfile, write the stats to $SRSD_PROFILE (default
  ./srsd.prof) when the daemon stops.
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


VARIANTS = {
    "nodelay-off": nodelay_off,
    "poll": poll_reactor,
    "select": select_reactor,
    "profile": None,
}


def main() -> int:
    names, argv = sys.argv[1].split("+"), sys.argv[2:]
    for name in names:
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name!r}; known: {', '.join(sorted(VARIANTS))}")
        if VARIANTS[name] is not None:
            VARIANTS[name]()
    if "--workers" in argv:
        sys.exit("variants run one process only (workers would start unpatched copies)")
    from srsd.cli import main as srsd_main

    if "profile" not in names:
        return srsd_main(argv)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(srsd_main, argv)
    finally:
        profiler.dump_stats(os.environ.get("SRSD_PROFILE", "srsd.prof"))


if __name__ == "__main__":
    sys.exit(main())
