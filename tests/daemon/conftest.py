"""Fixtures: ``srsd serve`` as a real subprocess on free loopback ports.

* ``srsd`` — one daemon (default config, all three endpoints on TCP) shared by the
  tests of a module that only read from it;
* ``srsd_factory`` — ``srsd_factory(**options)`` starts a private daemon (see
  :class:`helpers.SrsdDaemon` for the options); ``start=False`` only prepares it.

Every daemon is stopped by its PID at teardown; a failing test gets the daemon's
stderr (and config) appended to its report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from .helpers import SrsdDaemon


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


def _daemons_of(item: pytest.Item) -> list[SrsdDaemon]:
    found = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, SrsdDaemon):
            found.append(value)
        elif isinstance(value, DaemonFactory):
            found += value.daemons
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("setup", "call", "teardown"):
        for daemon in _daemons_of(item):
            report.sections.append((f"srsd stderr ({daemon.workdir.name})", daemon.diagnostics()))


@pytest.fixture
def srsd_factory(tmp_path):
    factory = DaemonFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def srsd(tmp_path_factory):
    daemon = SrsdDaemon(tmp_path_factory.mktemp("srsd")).start()
    yield daemon
    code = daemon.stop()
    assert code == 0, f"srsd exited {code} on SIGTERM\n{daemon.diagnostics()}"


@pytest.fixture
def short_tmp():
    """A short directory under /tmp for unix sockets (sun_path is 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="srsd-", dir="/tmp") as path:
        yield Path(path)
