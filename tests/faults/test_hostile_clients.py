"""Hostile clients on every endpoint of a real ``srsd serve``, with a normal client
asking each endpoint in turn meanwhile (tests/faults/hostile.py).

The daemon starts with a soft open-files limit of 1024, what a login shell (and
systemd's default) gives; srsd raises it itself. Sizes are CI-sized; the full run is
``python3 -m tests.faults.battery`` (docs/reliability.md).
"""

from __future__ import annotations

import time

import pytest

from tests.faults import attacks, hostile
from tests.faults.clients import ENDPOINTS
from tests.srsd_daemon import SrsdDaemon, serving, srs0_pattern

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


def test_idle_timeout_frees_the_slots_of_clients_that_never_read(tmp_path):
    """limits.idle_timeout closes a client that stopped reading: the idle sweeper's
    graceful close waited for its replies to be written, which never happens, so such
    clients kept their slots past the timeout and max_connections locked everyone out."""
    daemon = SrsdDaemon(tmp_path, sections={"limits": {"idle_timeout": 1, "max_connections": 2}})
    with serving(daemon):
        address = daemon.address("tcp_forward")
        unread = [attacks.never_read(address, hostile.LONG_FORWARD_REQUEST, 64 << 20, block_wait=0.5) for _ in range(2)]
        try:
            deadline = time.monotonic() + 20
            while True:  # the sweeper runs every idle_timeout seconds
                status, text = daemon.lookup("tcp_table", "forward", "after@remote.example")
                if status != "temp" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert status == "found" and srs0_pattern("after@remote.example").match(text), (status, text)
            for client in unread:
                assert attacks.closed_by_server(client.sock), "a client that never read is still connected"
        finally:
            for client in unread:
                client.sock.close()


def test_huge_lines_and_length_fields(srsd):
    outcome = hostile.huge_inputs(srsd)
    assert_served(outcome)
    assert outcome.answers == outcome.inputs == 9, outcome.report()
