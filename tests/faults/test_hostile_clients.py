"""Hostile clients on every endpoint of a real ``srsd serve``, with a normal client
asking each endpoint in turn meanwhile (tests/faults/hostile.py).

The daemon starts with a soft open-files limit of 1024, what a login shell (and
systemd's default) gives; srsd raises it itself. Sizes are CI-sized; the full run is
``python3 -m tests.faults.battery`` (docs/reliability.md).
"""

from __future__ import annotations

import pytest

from tests.faults import hostile
from tests.faults.clients import ENDPOINTS
from tests.srsd_daemon import serving

#: how far srsd's RSS may rise during one attack (the never-reading clients pushed
#: it up by ~2 MiB per MiB they sent, without bound, before back-pressure)
RSS_GROWTH_BOUND_KB = 32 * 1024


@pytest.fixture(scope="module")
def srsd(tmp_path_factory):
    with serving(hostile.hostile_srsd(tmp_path_factory.mktemp("hostile"), open_files=1024)) as daemon:
        yield daemon


def assert_served(outcome, endpoints=ENDPOINTS) -> None:
    """No failure, every normal client answered, memory bounded; the figures printed."""
    print(outcome.report())
    assert outcome.failures == 0, outcome.report()
    for endpoint in endpoints:
        assert len(outcome.latency(f"normal client {endpoint}")) > 0, outcome.report()
    assert outcome.rss_growth_kb < RSS_GROWTH_BOUND_KB, outcome.report()


def test_slowloris_hundreds_of_trickling_connections(srsd):
    outcome = hostile.slowloris(srsd, connections=300, duration=3.0, interval=0.2)
    assert_served(outcome)
    assert f"{outcome.inputs} of {outcome.inputs} still open" in outcome.notes[0], outcome.report()


def test_idle_connections_past_a_1024_file_limit(srsd):
    """1100 idle clients, ~220 an endpoint (each far under max_connections): at srsd's
    inherited 1024 open files every new client of every endpoint was reset."""
    assert_served(hostile.idle_flood(srsd, connections=1100, hold=2.0))


def test_max_connections_answers_temp_and_closes(srsd):
    outcome = hostile.over_max_connections(srsd, limit=1000, extra=20)
    assert_served(outcome, tuple(e for e in ENDPOINTS if e != "tcp_forward"))
    assert outcome.answers == outcome.inputs, outcome.report()


@pytest.mark.parametrize("endpoint", hostile.UNREAD_ENDPOINTS)
def test_client_that_never_reads_is_not_read_from(srsd, endpoint):
    """Requests pipelined without reading a reply: srsd stops reading once its replies
    back up (the client's sends block), its memory stays put, and once the client
    reads, every request it sent has its answer."""
    outcome = hostile.never_reading(srsd, endpoint)
    assert_served(outcome)
    assert "srsd stopped reading" in outcome.notes[0], outcome.report()
    assert outcome.answers == outcome.inputs > 0, outcome.report()


def test_huge_lines_and_length_fields(srsd):
    outcome = hostile.huge_inputs(srsd)
    assert_served(outcome)
    assert outcome.answers == outcome.inputs == 9, outcome.report()
