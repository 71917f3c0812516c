"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest

from tests.dnsserver import DNSServer


@pytest.fixture(scope="session")
def dns_server_session():
    """One loopback DNS server (UDP+TCP, free port) for the whole session.

    Its address never changes, so module-scoped daemons can be pointed at it;
    tests normally take :func:`dns_server`, which resets it first.
    """
    server = DNSServer().start()
    yield server
    server.stop()


@pytest.fixture
def dns_server(dns_server_session):
    """The session's DNS server, reset for this test: empty zone (every name
    NXDOMAIN), not paused, query counter at 0, default TTLs (300 s)."""
    dns_server_session.reset()
    yield dns_server_session
    dns_server_session.reset()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report gets the diagnostics() of every fixture value that has
    them (srsd, Postfix, the SMTP sink, ...)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        diagnostics = getattr(value, "diagnostics", None)
        if callable(diagnostics):
            try:
                text = str(diagnostics())
            except Exception as exc:  # diagnostics must never hide the failure
                text = f"(could not collect diagnostics: {exc!r})"
            report.sections.append((f"diagnostics of {name}", text))


@pytest.fixture(scope="session")
def reactor_thread():
    """A real reactor on its own thread (tests/reactor_thread.py), shared by the session."""
    from tests.reactor_thread import ReactorThread

    loop = ReactorThread()
    yield loop
    loop.stop()
