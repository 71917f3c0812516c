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


# -- workers and lookup processes ----------------------------------------------------
#
# Two kinds of child process share the parent's sockets: --workers (Twisted, like the
# parent; with [daemon] lookup_processes = 0 they serve the lookup endpoints too) and
# the lookup processes (srsd.lookup_loop; the parent does not accept on their sockets).
# Each test below runs with both.

KINDS = {
    "workers": (r"worker \d+ started \(pid (\d+)\)", {"daemon": {"lookup_processes": 0}}),
    "lookup processes": (r"lookup process \d+ started \(pid (\d+)\)", {}),
}


def _start(srsd_factory, kind: str, n: int, **options):
    """A daemon with *n* processes serving its lookups: the parent and n-1 workers, or n
    lookup processes. :returns: (daemon, the pids that serve lookups, the children's pids)."""
    sections = {**KINDS[kind][1], **options.pop("sections", {})}
    if kind == "workers":
        daemon = srsd_factory(workers=n, sections=sections, **options)
    else:
        daemon = srsd_factory(sections={**sections, "daemon": {"lookup_processes": n}}, **options)
    children = _child_pids(daemon, kind, n - 1 if kind == "workers" else n)
    return daemon, ([daemon.pid, *children] if kind == "workers" else children), children


def _child_pids(daemon, kind: str, count: int) -> list[int]:
    pattern = re.compile(KINDS[kind][0])
    assert daemon.wait_for_log(pattern, count=count)
    pids = [int(p) for p in pattern.findall(daemon.log_text())]
    # each child logs its own listen lines once it serves
    for pid in pids:
        assert daemon.wait_for_log(f"srsd[{pid}] info: listen.socketmap"), f"child {pid} never listened"
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
@pytest.mark.parametrize("kind", KINDS)
def test_children_share_the_sockets_and_reload_before_reloaded_is_logged(srsd_factory, kind):
    daemon, pids, _ = _start(srsd_factory, kind, 2)
    assert len(set(pids)) == 2
    old = daemon.lookup("tcp_table", "forward", SENDER)[1]
    served_by: dict[int, list] = {pid: [] for pid in pids}
    clients = []
    try:
        deadline = time.monotonic() + 10
        while min(len(c) for c in served_by.values()) < 3 and time.monotonic() < deadline:
            for _ in range(10):
                client = daemon.tcp_table("forward")
                clients.append(client)
                sender = f"w{len(clients)}@remote.example"
                assert srs0_pattern(sender).match(client.lookup("forward", sender)[1])
                inode = _server_side_inode(daemon.ports["tcp_forward"], client.sock.getsockname()[1])
                owners = [pid for pid in pids if inode in _socket_inodes(pid)]
                assert len(owners) == 1, f"connection {inode} owned by {owners}"
                served_by[owners[0]].append(client)
        assert min(len(c) for c in served_by.values()) >= 3, f"connections accepted per pid: {served_by}"
        for client in clients:  # every process keeps serving its connections
            assert client.lookup("forward", SENDER)[0] == "found"
        # SIGHUP is relayed to every child; "reloaded" is logged once all run the new secret.
        daemon.write_secrets(["a-new-secret"])
        daemon.reload()
        assert "did not report" not in daemon.log_text()
        for pid, conns in served_by.items():
            for client in conns[:3]:
                new = client.lookup("forward", SENDER)[1]
                assert new != old, f"process {pid} still signs with the old secret after 'reloaded'"
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_of_the_parent_stops_the_children(srsd_factory, kind):
    daemon, _, children = _start(srsd_factory, kind, 3)
    _forward(daemon)
    try:
        assert daemon.stop() == 0
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if _alive(pid)], "children still running after SIGTERM of the parent"
        _no_tracebacks(daemon)
    finally:
        for pid in children:  # our grandchildren, if the assertion above failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_to_every_process_stops_cleanly(srsd_factory, kind):
    """systemd's stop (KillMode=control-group) signals every process of the unit at once:
    each child then gets SIGTERM twice, from systemd and from the parent."""
    daemon, _, children = _start(srsd_factory, kind, 2)
    _forward(daemon)
    for pid in children:  # our grandchildren: twice, as systemd's and the parent's arrive together
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGTERM)
    assert daemon.stop() == 0
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)]
    _no_tracebacks(daemon)
    assert " critical: " not in daemon.log_text()


@pytest.mark.parametrize("kind", KINDS)
def test_child_restarted_after_it_dies(srsd_factory, kind):
    daemon, _, children = _start(srsd_factory, kind, 2)
    os.kill(children[-1], signal.SIGKILL)  # our grandchild
    started = re.compile(KINDS[kind][0].replace(r"\d+ started", f"{len(children)} started"))
    assert daemon.wait_for_log(started, count=2, timeout=10)
    for _ in range(20):
        _forward(daemon)
    assert daemon.stop() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_children_on_unix_sockets_survive_a_restart(srsd_factory, short_tmp, kind):
    daemon, _, children = _start(srsd_factory, kind, 2, listen=_unix_listen(short_tmp))
    os.kill(children[0], signal.SIGTERM)  # our grandchild; as an admin or the OOM killer might
    assert daemon.wait_for_log(re.compile(KINDS[kind][0].replace(r"\d+ started", "1 started")), count=2, timeout=10)
    missing = [name for name in ("fwd.sock", "rev.sock", "sm.sock") if not (short_tmp / name).exists()]
    assert not missing, f"a child stopping removed the shared socket files {missing}"
    for _ in range(10):
        _forward(daemon)
        _forward(daemon, "socketmap")


@pytest.mark.parametrize("kind", KINDS)
def test_children_on_unix_sockets_stop_cleanly(srsd_factory, short_tmp, kind):
    daemon, _, _ = _start(srsd_factory, kind, 2, listen=_unix_listen(short_tmp))
    _forward(daemon)
    assert daemon.stop() == 0
    time.sleep(0.5)  # the children notice their parent going
    _no_tracebacks(daemon)
    leftovers = sorted(p.name for p in short_tmp.iterdir() if p.is_socket())
    assert leftovers == [], f"socket files left after SIGTERM: {leftovers}"


# -- limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["tcp_table", "socketmap"])
def test_max_connections(srsd_factory, protocol):
    # The limit is per process: one lookup process serves them all here.
    daemon = srsd_factory(sections={"limits": {"max_connections": 2}, "daemon": {"lookup_processes": 1}})

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
