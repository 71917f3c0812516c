"""Started as root, ``srsd serve`` binds its endpoints and then runs as ``[daemon] user``
(srsd.privileges): checked in /proc/PID/status, with lookups and SIGHUP reloads served by
the unprivileged process. The real unprivileged user is ``nobody`` (every Debian has it),
so the test leaves no account behind. Needs root, like the e2e tests."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from tests.srsd_daemon import SrsdDaemon, SrsdError

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def world_dir():
    """A directory nobody can enter (pytest's tmp dirs are 0700 root)."""
    if os.geteuid() != 0:
        pytest.fail("the privilege tests must run as root", pytrace=False)
    path = Path(tempfile.mkdtemp(prefix="srsd-priv-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def credentials(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, filesystem) and Groups of process *pid*."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            out[name] = [int(v) for v in value.split()]
    return out


def nobody_daemon(workdir: Path, lookup_processes: int | None = None, **options) -> SrsdDaemon:
    settings: dict = {"user": "nobody"}
    if lookup_processes is not None:
        settings["lookup_processes"] = lookup_processes
    daemon = SrsdDaemon(workdir, sections={"daemon": settings}, **options)
    daemon.secrets_path.touch()
    os.chown(daemon.secrets_path, NOBODY.pw_uid, NOBODY.pw_gid)  # stays so: write_secrets rewrites in place
    return daemon


def assert_runs_as_nobody(pid: int) -> None:
    groups = sorted(set(os.getgrouplist("nobody", NOBODY.pw_gid)))
    assert credentials(pid) == {
        "Uid": [NOBODY.pw_uid] * 4,
        "Gid": [NOBODY.pw_gid] * 4,
        "Groups": groups,  # root's supplementary groups are gone
    }


def test_root_switches_to_the_user_after_binding_and_reloads_as_it(world_dir):
    daemon = nobody_daemon(world_dir, listen={"socketmap": f"unix:{world_dir}/socketmap.sock:mode=666"})
    daemon.write_secrets(["first-s3cret"])
    daemon.start()
    try:
        assert daemon.wait_for_log(f"running as user nobody (uid {NOBODY.pw_uid}, gid {NOBODY.pw_gid})")
        assert "listen.socketmap: nobody cannot write to the directory of" in daemon.log_text()
        assert "switches to user nobody once bound" in daemon.cli("check-config").stdout
        assert_runs_as_nobody(daemon.pid)
        status, first = daemon.lookup("tcp_table", "forward", "alice@orig.example")
        assert status == "found" and first.startswith("SRS0=")
        assert daemon.lookup("socketmap", "reverse", first) == ("found", "alice@orig.example")

        # SIGHUP as nobody: the new first secret signs, the old one still verifies.
        daemon.write_secrets(["second-s3cret", "first-s3cret"])
        daemon.reload()
        status, second = daemon.lookup("tcp_table", "forward", "bob@orig.example")
        assert status == "found"
        assert daemon.lookup("tcp_table", "reverse", second) == ("found", "bob@orig.example")
        assert daemon.lookup("tcp_table", "reverse", first) == ("found", "alice@orig.example")
        assert_runs_as_nobody(daemon.pid)

        # A secrets file nobody cannot read any more: the reload is refused, srsd serves on.
        os.chown(daemon.secrets_path, 0, 0)
        daemon.signal(signal.SIGHUP)
        assert daemon.wait_for_log("reload refused")
        assert "Permission denied" in daemon.log_text()
        assert daemon.lookup("tcp_table", "reverse", second) == ("found", "bob@orig.example")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.diagnostics()


@pytest.mark.parametrize("child", ["worker", "lookup process"])
def test_children_run_as_the_user_too(world_dir, child):
    """--workers processes (lookup_processes = 0) and lookup processes switch on their
    own, after binding or adopting the sockets (shared, not SO_REUSEPORT: one uid)."""
    if child == "worker":
        daemon = nobody_daemon(world_dir, workers=2, lookup_processes=0)
    else:
        daemon = nobody_daemon(world_dir, lookup_processes=2)
    daemon.start()
    try:
        assert daemon.wait_for_log(f"{child} 1 started")
        worker = int(daemon.log_text().split(f"{child} 1 started (pid ")[1].split(")")[0])
        assert daemon.wait_for_log(f"srsd[{worker}] info: running as user nobody", timeout=20)
        for pid in (daemon.pid, worker):
            assert_runs_as_nobody(pid)
        for _ in range(20):  # every process accepts: every lookup is answered
            status, srs0 = daemon.lookup("tcp_table", "forward", "alice@orig.example")
            assert status == "found"
            assert daemon.lookup("socketmap", "reverse", srs0) == ("found", "alice@orig.example")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.diagnostics()


def test_unreadable_secrets_stop_the_start_with_a_clear_error(world_dir):
    daemon = SrsdDaemon(world_dir, sections={"daemon": {"user": "nobody"}})  # secrets: root, 0600
    with pytest.raises(SrsdError, match="exited with code 1"):
        daemon.start()
    log = daemon.log_text()
    assert "after switching to user nobody: srs.secrets_file: cannot read" in log
    assert "Permission denied" in log
    assert "srsd ready" not in log


def test_unknown_user_is_a_config_error(world_dir):
    daemon = SrsdDaemon(world_dir, sections={"daemon": {"user": "no-such-user-srsd"}})
    with pytest.raises(SrsdError, match="exited with code 1"):
        daemon.start()
    assert "configuration error: daemon.user: no such user 'no-such-user-srsd'" in daemon.log_text()


def test_group_setting(world_dir):
    nogroup = grp.getgrgid(NOBODY.pw_gid).gr_name
    other = next(g for g in grp.getgrall() if g.gr_gid not in (0, NOBODY.pw_gid) and g.gr_gid < 1000)
    daemon = SrsdDaemon(world_dir, sections={"daemon": {"user": "nobody", "group": other.gr_name}})
    daemon.secrets_path.chmod(0o640)
    os.chown(daemon.secrets_path, 0, other.gr_gid)  # root-owned, readable through the group
    daemon.start()
    try:
        status = credentials(daemon.pid)
        assert status["Uid"] == [NOBODY.pw_uid] * 4 and status["Gid"] == [other.gr_gid] * 4, (status, nogroup)
        assert daemon.lookup("tcp_table", "forward", "alice@orig.example")[0] == "found"
        assert "srs.secrets_file" not in daemon.log_text()  # group-readable by srsd's own group: no warning
    finally:
        assert daemon.stop() == 0
