"""Operating ``srsd serve``: reload, bind failures, unix sockets, workers, limits."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.srsd_daemon import SRS_DOMAIN, srs0_pattern

SENDER = "user@remote.example"


def _forward(daemon, protocol="tcp_table", sender=SENDER):
    status, text = daemon.lookup(protocol, "forward", sender)
    assert status == "found" and srs0_pattern(sender).match(text), (protocol, status, text)
    return text


def _reverse(daemon, address, protocol="tcp_table"):
    return daemon.lookup(protocol, "reverse", address)


def _signed_with(secret: str, sender: str = SENDER) -> str:
    from srsd.srs import SRS

    return SRS([secret], SRS_DOMAIN).forward(sender)


def _no_tracebacks(daemon):
    log = daemon.log_text()
    for bad in ("Traceback", "Unhandled Error", "critical:"):
        assert bad not in log, f"srsd logged {bad!r}"


# -- SIGHUP -------------------------------------------------------------------------


def test_sighup_rotates_secrets(srsd_factory):
    daemon = srsd_factory(secrets_lines=["old-secret-1"])
    old = _forward(daemon)
    assert old == _signed_with("old-secret-1")

    daemon.write_secrets(["new-secret-2", "old-secret-1"])
    daemon.reload()  # SIGHUP, and a 'reloaded' log line

    for protocol in ("tcp_table", "socketmap"):
        new = _forward(daemon, protocol)
        assert new == _signed_with("new-secret-2"), "the new first secret does not sign after SIGHUP"
        assert _reverse(daemon, new, protocol) == ("found", SENDER)
        assert _reverse(daemon, old, protocol) == ("found", SENDER), "the old secret no longer verifies"

    # Retire the old secret: its addresses stop reversing.
    daemon.write_secrets(["new-secret-2"])
    daemon.reload()
    assert _reverse(daemon, old)[0] == "notfound"
    assert daemon.running()
    _no_tracebacks(daemon)


def test_sighup_applies_new_local_domains(srsd_factory):
    daemon = srsd_factory()
    _forward(daemon, sender="someone@soon-local.example")
    daemon.srs["local_domains"] = ["local.example", "soon-local.example"]
    daemon.reload()
    assert daemon.lookup("tcp_table", "forward", "someone@soon-local.example")[0] == "notfound"


@pytest.mark.parametrize(
    "breakage",
    ["not toml", "bad domain", "unknown key", "secrets file missing", "secrets file empty", "config file missing"],
)
def test_sighup_with_broken_config_keeps_the_old_one(srsd_factory, breakage):
    daemon = srsd_factory(secrets_lines=["steady-secret"])
    before = _forward(daemon)
    good_config = daemon.config_path.read_text()
    if breakage == "not toml":
        daemon.write_config(good_config + "\n[srs\nthis is = = not toml\n")
    elif breakage == "bad domain":
        daemon.write_config(good_config.replace(f'"{SRS_DOMAIN}"', '"$myhostname"'))
    elif breakage == "unknown key":
        daemon.write_config(good_config + '\n[log]\nlevle = "debug"\n')
    elif breakage == "secrets file missing":
        daemon.secrets_path.unlink()
    elif breakage == "secrets file empty":
        daemon.secrets_path.write_text("\n")
    else:
        daemon.config_path.unlink()
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_for_log("reload refused"), f"no 'reload refused' log line for {breakage}"
    assert "reloaded" not in daemon.log_text()
    assert daemon.running()
    for protocol in ("tcp_table", "socketmap"):
        assert _forward(daemon, protocol) == before, "the running configuration changed"
        assert _reverse(daemon, before, protocol) == ("found", SENDER)


# -- bind failures --------------------------------------------------------------------


@pytest.mark.parametrize("taken", ["tcp_forward", "tcp_reverse", "socketmap"])
def test_port_taken_exits_1_naming_the_endpoint(srsd_factory, taken):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        daemon = srsd_factory(start=False, listen={taken: f"tcp:{port}:interface=127.0.0.1"})
        daemon.prepare()
        daemon.spawn()
        code = daemon.wait_exit(timeout=30)
        assert code is not None, f"srsd serve still running 30 s after failing to bind listen.{taken}"
        assert code == 1
        log = daemon.log_text()
        assert f"listen.{taken}" in log
        assert "srsd ready" not in log


def test_unix_socket_in_missing_directory_exits_1(srsd_factory, short_tmp):
    daemon = srsd_factory(start=False, listen={"socketmap": f"unix:{short_tmp}/no/such/dir/sm.sock"})
    daemon.prepare()
    daemon.spawn()
    code = daemon.wait_exit(timeout=30)
    assert code == 1, f"exit status {code} (None = still running)"
    assert "listen.socketmap" in daemon.log_text()


# -- unix sockets ---------------------------------------------------------------------


def _unix_listen(directory: Path) -> dict[str, str]:
    return {
        "tcp_forward": f"unix:{directory}/fwd.sock",
        "tcp_reverse": f"unix:{directory}/rev.sock",
        "socketmap": f"unix:{directory}/sm.sock",
    }


def test_unix_socket_endpoints(srsd_factory, short_tmp):
    daemon = srsd_factory(listen=_unix_listen(short_tmp))
    for protocol in ("tcp_table", "socketmap"):
        rewritten = _forward(daemon, protocol)
        assert _reverse(daemon, rewritten, protocol) == ("found", SENDER)
    with daemon.tcp_table("forward") as client:  # pipelined on a unix socket too
        client.send(b"".join(b"get u%d@remote.example\n" % i for i in range(200)))
        for i in range(200):
            assert srs0_pattern(f"u{i}@remote.example").match(client.read()[1])
    assert daemon.stop() == 0
    leftovers = sorted(p.name for p in short_tmp.iterdir() if p.is_socket())
    assert leftovers == [], f"socket files left after SIGTERM: {leftovers}"
    _no_tracebacks(daemon)


def test_unix_socket_restart_after_crash(srsd_factory, short_tmp):
    """After a crash (SIGKILL, OOM) the stale socket files are still there; a restart
    (systemd Restart=on-failure) must still come up."""
    daemon = srsd_factory(listen=_unix_listen(short_tmp))
    daemon.signal(signal.SIGKILL)
    daemon.wait_exit(timeout=5)
    assert (short_tmp / "fwd.sock").exists()
    daemon.log_path.write_bytes(b"")
    daemon.spawn()
    assert daemon.wait_for_log("srsd ready", timeout=10, fail_on_exit=False), "no restart over stale unix sockets"
    _forward(daemon)


# -- workers --------------------------------------------------------------------------


def _worker_pids(daemon, n: int) -> list[int]:
    assert daemon.wait_for_log(re.compile(r"worker \d+ started \(pid \d+\)"), count=n - 1)
    pids = [int(p) for p in re.findall(r"worker \d+ started \(pid (\d+)\)", daemon.log_text())]
    # each worker logs its own listen lines once it serves
    for pid in pids:
        assert daemon.wait_for_log(f"srsd[{pid}] info: listen.socketmap"), f"worker {pid} never listened"
    return pids


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _server_side_inode(server_port: int, client_port: int) -> str | None:
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields[9]
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            state = re.search(r"^State:\s+(\S)", fh.read(), re.M).group(1)
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
def test_workers_share_the_sockets(srsd_factory):
    daemon = srsd_factory(workers=2)
    pids = [daemon.pid, *_worker_pids(daemon, 2)]
    assert len(set(pids)) == 2
    served_by: dict[int, int] = dict.fromkeys(pids, 0)
    clients = []
    try:
        deadline = time.monotonic() + 10
        while min(served_by.values()) < 3 and time.monotonic() < deadline:
            for _ in range(10):
                client = daemon.tcp_table("forward")
                clients.append(client)
                sender = f"w{len(clients)}@remote.example"
                assert srs0_pattern(sender).match(client.lookup("forward", sender)[1])
                inode = _server_side_inode(daemon.ports["tcp_forward"], client.sock.getsockname()[1])
                owners = [pid for pid in pids if inode in _socket_inodes(pid)]
                assert len(owners) == 1, f"connection {inode} owned by {owners}"
                served_by[owners[0]] += 1
        assert min(served_by.values()) >= 3, f"connections accepted per pid: {served_by}"
        for client in clients:  # every process keeps serving its connections
            assert client.lookup("forward", SENDER)[0] == "found"
    finally:
        for client in clients:
            client.close()

    daemon.signal(signal.SIGHUP)  # relayed to the worker
    for pid in pids:
        assert daemon.wait_for_log(f"srsd[{pid}] info: reloaded"), f"pid {pid} did not reload"


def test_sigterm_of_the_parent_stops_the_workers(srsd_factory):
    daemon = srsd_factory(workers=3)
    workers = _worker_pids(daemon, 3)
    _forward(daemon)
    try:
        assert daemon.stop() == 0
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "workers still running after SIGTERM of the parent"
        _no_tracebacks(daemon)
    finally:
        for pid in workers:  # our grandchildren, if the assertion above failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_worker_restarted_after_it_dies(srsd_factory):
    daemon = srsd_factory(workers=2)
    (worker,) = _worker_pids(daemon, 2)
    os.kill(worker, signal.SIGKILL)  # our grandchild
    assert daemon.wait_for_log(re.compile(r"worker 1 started \(pid \d+\)"), count=2, timeout=10)
    for _ in range(20):
        _forward(daemon)
    assert daemon.stop() == 0


def test_workers_on_unix_sockets_survive_a_worker_restart(srsd_factory, short_tmp):
    daemon = srsd_factory(workers=2, listen=_unix_listen(short_tmp))
    (worker,) = _worker_pids(daemon, 2)
    os.kill(worker, signal.SIGTERM)  # our grandchild; as an admin or the OOM killer might
    assert daemon.wait_for_log(re.compile(r"worker 1 started \(pid \d+\)"), count=2, timeout=10)
    missing = [name for name in ("fwd.sock", "rev.sock", "sm.sock") if not (short_tmp / name).exists()]
    assert not missing, f"a worker stopping removed the shared socket files {missing}"
    for _ in range(10):
        _forward(daemon)
        _forward(daemon, "socketmap")


def test_workers_on_unix_sockets_stop_cleanly(srsd_factory, short_tmp):
    daemon = srsd_factory(workers=2, listen=_unix_listen(short_tmp))
    _worker_pids(daemon, 2)
    _forward(daemon)
    assert daemon.stop() == 0
    time.sleep(0.5)  # the worker notices its parent going
    _no_tracebacks(daemon)


# -- limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["tcp_table", "socketmap"])
def test_max_connections(srsd_factory, protocol):
    daemon = srsd_factory(sections={"limits": {"max_connections": 2}})

    def client():
        return daemon.tcp_table("forward") if protocol == "tcp_table" else daemon.socketmap()

    first, second = client(), client()
    try:
        for c in (first, second):
            assert srs0_pattern(SENDER).match(c.lookup("forward", SENDER)[1])
        with client() as third:
            assert third.lookup("forward", SENDER)[0] == "temp"
            assert third.at_eof(), "the client over the limit was not closed"
        for c in (first, second):
            assert srs0_pattern(SENDER).match(c.lookup("forward", SENDER)[1]), "the first two stopped working"
        first.close()
        deadline = time.monotonic() + 5
        while True:  # the server notices the close asynchronously
            with client() as fourth:
                status, text = fourth.lookup("forward", SENDER)
            if status == "found" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == "found", "a slot freed by a closed client is not reused"
    finally:
        first.close()
        second.close()


def test_idle_timeout_closes_silent_clients(srsd_factory):
    daemon = srsd_factory(sections={"limits": {"idle_timeout": 1}})
    with daemon.tcp_table("forward") as silent, daemon.tcp_table("forward") as busy:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert busy.lookup("forward", SENDER)[0] == "found"
            time.sleep(0.2)
        assert silent.at_eof(timeout=1.0), "idle client not closed after idle_timeout"
        assert busy.lookup("forward", SENDER)[0] == "found", "an active client was closed"
