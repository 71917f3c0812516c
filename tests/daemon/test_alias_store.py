"""The alias store in a running ``srsd serve``: SQLite shared by worker processes, Redis
hung or stopped (TEMP on both protocols, short senders unaffected, back once it returns),
and the CLI (forward, reverse, check-config) on the same store."""

from __future__ import annotations

import re
import time

import pytest

from tests.redis_server import RedisServer

SENDERS = [f"bounces+{i:04d}-abcdef0123456789=example.org@mailer.lists.example.net" for i in range(40)]
ALIAS = re.compile(r"^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}==[A-Z2-7]{16}@fwd\.example$")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def test_workers_share_the_sqlite_store(srsd_factory):
    """Two processes, one SQLite file: an alias minted on any connection reverses on any other."""
    daemon = srsd_factory(workers=2, probe=True)
    assert daemon.wait_for_log("alias store: sqlite ")
    minted = {}
    for sender in SENDERS:  # a new connection each: the kernel spreads them over both processes
        status, address = daemon.lookup("tcp_table", "forward", sender)
        assert status == "found" and ALIAS.match(address), (sender, status, address)
        minted[address] = sender
    assert len(minted) == len(SENDERS)
    for address, sender in minted.items():
        assert daemon.lookup("socketmap", "reverse", address) == ("found", sender)
        assert daemon.lookup("tcp_table", "reverse", address.lower()) == ("found", sender)
    # The same sender again: the same key (no new row), on either process.
    for sender in SENDERS[:10]:
        status, again = daemon.lookup("socketmap", "forward", sender)
        assert minted[again] == sender
    done = daemon.cli("check-config")
    assert done.returncode == 0 and f": {len(SENDERS)} aliases" in done.stdout, done


def test_redis_hung_then_stopped_then_back(srsd_factory, redis_server):
    daemon = srsd_factory(sections={"store": redis_server.store_settings() | {"timeout": 0.5}}, probe=True)
    assert daemon.wait_for_log("alias store: redis ")
    status, address = daemon.lookup("tcp_table", "forward", SENDERS[0])
    assert status == "found" and ALIAS.match(address)

    redis_server.pause()  # accepts, never answers
    try:
        started = time.monotonic()
        assert daemon.lookup("tcp_table", "forward", SENDERS[1])[0] == "temp"
        assert daemon.lookup("socketmap", "reverse", address)[0] == "temp"
        assert time.monotonic() - started < 4  # within store.timeout each, never Postfix's long timeouts
        # Short senders and plain SRS0 need no store: served as usual meanwhile.
        status, srs0 = daemon.lookup("socketmap", "forward", "alice@example.org")
        assert status == "found" and daemon.lookup("tcp_table", "reverse", srs0) == ("found", "alice@example.org")
    finally:
        redis_server.resume()

    redis_server.stop()
    try:
        assert daemon.lookup("tcp_table", "forward", SENDERS[1])[0] == "temp"
        assert daemon.lookup("socketmap", "reverse", address)[0] == "temp"
        down = daemon.cli("reverse", address)
        assert down.returncode == 75 and "temporary failure: alias store unavailable" in down.stderr, down
        check = daemon.cli("check-config")
        assert check.returncode == 1 and "store.redis_host: alias store not reachable" in check.stderr, check
    finally:
        redis_server.start()

    assert daemon.lookup("socketmap", "reverse", address) == ("found", SENDERS[0])
    assert daemon.lookup("tcp_table", "forward", SENDERS[1])[0] == "found"
    assert daemon.wait_for_log("the alias store did not answer")
    daemon.assert_running()


def test_cli_and_daemon_share_the_redis_store(srsd_factory, redis_server):
    daemon = srsd_factory(sections={"store": redis_server.store_settings()}, probe=True)
    forward = daemon.cli("forward", SENDERS[5])
    assert forward.returncode == 0 and ALIAS.match(forward.stdout.strip()), forward
    assert daemon.lookup("tcp_table", "reverse", forward.stdout.strip()) == ("found", SENDERS[5])
    status, address = daemon.lookup("socketmap", "forward", SENDERS[6])
    reverse = daemon.cli("reverse", address)
    assert (reverse.returncode, reverse.stdout.strip()) == (0, SENDERS[6]), reverse
    check = daemon.cli("check-config")
    assert check.returncode == 0 and "alias store redis redis://127.0.0.1:" in check.stdout, check


def test_reload_max_local_part_at_once_store_on_restart(srsd_factory):
    daemon = srsd_factory(probe=True)
    assert ALIAS.match(daemon.lookup("tcp_table", "forward", SENDERS[0])[1])
    daemon.reload({"store": {"max_local_part": 100}})
    status, address = daemon.lookup("tcp_table", "forward", SENDERS[0])
    assert status == "found" and address.endswith("=" + SENDERS[0].split("@")[0] + "@fwd.example"), address
    assert "[store] changes" not in daemon.log_text()
    daemon.reload({"store": {"max_local_part": 100, "backend": "none"}})
    assert daemon.wait_for_log("reload: [store] changes other than max_local_part take effect on restart only")
