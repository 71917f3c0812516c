"""Fixtures for the unit tests."""

from __future__ import annotations

import pytest

from srsd import log_limit


@pytest.fixture(autouse=True)
def fresh_log_limiter(monkeypatch):
    """Every test starts with full buckets: decision lines of earlier tests (the limiter is
    the process's) must not silence this test's."""
    monkeypatch.setattr(log_limit, "LIMITER", log_limit.RateLimiter())


@pytest.fixture
def fake_reactor():
    """A :class:`~tests.unit.test_dns.ThreadedClockReactor` for SPFChecker tests."""
    from tests.unit.test_dns import ThreadedClockReactor

    reactor = ThreadedClockReactor()
    yield reactor
    reactor.shutdown()  # runs the shutdown triggers (the DKIM pools join their threads)
