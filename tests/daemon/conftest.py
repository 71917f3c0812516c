"""Fixtures: ``srsd serve`` as a real subprocess on free loopback ports.

* ``srsd`` — one daemon (default config, all three lookup endpoints on TCP) shared by
  the tests of a module that only read from it;
* ``srsd_factory`` — ``srsd_factory(**options)`` starts a private daemon (see
  :class:`tests.srsd_daemon.SrsdDaemon` for the options); ``start=False`` only prepares it.

Every daemon is stopped by its PID at teardown; a failing test gets the daemon's
output (and config) appended to its report (tests/conftest.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.srsd_daemon import SrsdDaemon, serving


class DaemonFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.daemons: list[SrsdDaemon] = []

    def __call__(self, *, start: bool = True, **options) -> SrsdDaemon:
        workdir = self.tmp_path / f"srsd{len(self.daemons)}"
        workdir.mkdir()
        daemon = SrsdDaemon(workdir, **options)
        self.daemons.append(daemon)
        return daemon.start() if start else daemon

    def stop_all(self) -> None:
        for daemon in self.daemons:
            daemon.stop()

    def diagnostics(self) -> str:
        return "\n".join(f"=== {daemon.workdir.name} ===\n{daemon.diagnostics()}" for daemon in self.daemons)


@pytest.fixture
def srsd_factory(tmp_path):
    factory = DaemonFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def srsd(tmp_path_factory):
    with serving(SrsdDaemon(tmp_path_factory.mktemp("srsd"))) as daemon:
        yield daemon


@pytest.fixture
def short_tmp():
    """A short directory under /tmp for unix sockets (sun_path is 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="srsd-", dir="/tmp") as path:
        yield Path(path)
