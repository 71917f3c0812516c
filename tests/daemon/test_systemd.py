"""The shipped systemd files: units that `systemd-analyze verify` accepts, their security
exposure, the sysusers.d/tmpfiles.d files applied to a scratch root, and socket activation:
srsd serving on sockets the test binds and hands over as systemd does (LISTEN_FDS,
LISTEN_PID, LISTEN_FDNAMES through tests/systemd_exec.py), with no systemd as PID 1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.srsd_daemon import REPO_ROOT, SrsdDaemon

SYSTEMD = REPO_ROOT / "systemd"
UNITS = ("srsd.service", "srsd.socket")
#: the exposure documented in docs/operations.md; a change to the unit that raises it fails here
DOCUMENTED_EXPOSURE = 1.2


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} missing: .ci/install installs systemd", pytrace=False)
    return path


def units_for_this_machine(tmp_path: Path) -> list[str]:
    """The shipped units, ExecStart pointed at this machine's srsd when it is not the
    /usr/local/bin/srsd that `pip install .` as root makes (verify checks it exists)."""
    installed = shutil.which("srsd") or sys.executable
    out = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        if not os.access("/usr/local/bin/srsd", os.X_OK):
            text = text.replace("/usr/local/bin/srsd", installed)
        (tmp_path / name).write_text(text)
        out.append(str(tmp_path / name))
    return out


def test_units_verify_without_a_warning(tmp_path):
    units = units_for_this_machine(tmp_path)
    done = subprocess.run([tool("systemd-analyze"), "verify", *units], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_security_exposure_is_the_documented_one(tmp_path):
    service = units_for_this_machine(tmp_path)[0]
    done = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", service], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Overall exposure level for srsd.service: ([\d.]+) (\w+)", done.stdout)
    assert m, done.stdout + done.stderr
    assert float(m.group(1)) <= DOCUMENTED_EXPOSURE, done.stdout
    assert f"{DOCUMENTED_EXPOSURE} {m.group(2)}" in (REPO_ROOT / "docs" / "operations.md").read_text()


def apply_sysusers(root: Path) -> str:
    """srsd.sysusers applied to the scratch *root*; returns srsd's passwd line."""
    (root / "etc").mkdir(exist_ok=True)
    with open(SYSTEMD / "srsd.sysusers") as conf:
        subprocess.run([tool("systemd-sysusers"), f"--root={root}", "-"], stdin=conf, check=True, timeout=60)
    (entry,) = [line for line in (root / "etc" / "passwd").read_text().splitlines() if line.startswith("srsd:")]
    return entry


def test_sysusers_creates_the_user_the_unit_runs_as(tmp_path):
    assert apply_sysusers(tmp_path).split(":")[5] == "/var/lib/srsd"
    assert any(line.startswith("srsd:") for line in (tmp_path / "etc" / "group").read_text().splitlines())
    unit = (SYSTEMD / "srsd.service").read_text()
    assert "User=srsd" in unit and "Group=srsd" in unit


def test_tmpfiles_makes_the_socket_directory(tmp_path):
    srsd_uid = int(apply_sysusers(tmp_path).split(":")[2])
    (tmp_path / "var" / "spool" / "postfix").mkdir(parents=True)
    with open(tmp_path / "etc" / "group", "a") as group:
        group.write("postfix:x:4242:\n")
    with open(SYSTEMD / "srsd.tmpfiles") as conf:
        subprocess.run([tool("systemd-tmpfiles"), "--create", f"--root={tmp_path}", "-"], stdin=conf, check=True)
    st = (tmp_path / "var" / "spool" / "postfix" / "srsd").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o2750, srsd_uid, 4242)


# -- socket activation ----------------------------------------------------------------


def socket_unit_indexes() -> list[int]:
    """The ports of srsd.socket's ListenStream lines, in order (= index in [listen])."""
    text = (SYSTEMD / "srsd.socket").read_text()
    return [int(m) for m in re.findall(r"^ListenStream=127\.0\.0\.1:(\d+)$", text, re.M)]


def listening_tcp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def activated(workdir: Path, sockets: list[socket.socket], names: list[str], listen: dict[str, str], **options):
    """srsd started with *sockets* as LISTEN_FDS 3.. (named *names*), their ports known."""
    workdir.mkdir()
    fds = [s.fileno() for s in sockets]
    wrapper = [sys.executable, "-m", "tests.systemd_exec", *(f"--fd={fd}" for fd in fds), f"--names={':'.join(names)}"]
    daemon = SrsdDaemon(workdir, endpoints=(), listen=listen, wrapper=[*wrapper, "--"], pass_fds=fds, **options)
    daemon.start()
    for sock in sockets:  # srsd holds its own copies from here on
        sock.close()
    return daemon


def test_socket_activation_as_srsd_socket_passes_them(tmp_path, short_tmp):
    """Three TCP sockets in srsd.socket's order (all named "srsd", as one socket unit
    names them) plus a unix socket, each bound by the test, none by srsd."""
    assert socket_unit_indexes() == [10001, 10002, 10003]
    tcp = [listening_tcp() for _ in range(3)]
    ports = [s.getsockname()[1] for s in tcp]
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(short_tmp / "policy.sock"))
    unix.listen(16)
    listen = {
        "tcp_forward": "systemd:domain=INET:index=0",
        "tcp_reverse": "systemd:domain=INET:index=1",
        "socketmap": "systemd:domain=INET:index=2",
        "policy": "systemd:domain=UNIX:index=3",
    }
    daemon = activated(tmp_path / "srsd", [*tcp, unix], ["srsd"] * 4, listen)
    try:
        daemon.ports = dict(zip(["tcp_forward", "tcp_reverse", "socketmap"], ports, strict=True))
        daemon.unix_paths = {"policy": str(short_tmp / "policy.sock")}
        status, srs0 = daemon.lookup("tcp_table", "forward", "alice@orig.example")
        assert status == "found" and srs0.startswith("SRS0=")
        assert daemon.lookup("tcp_table", "reverse", srs0) == ("found", "alice@orig.example")
        assert daemon.lookup("socketmap", "reverse", srs0) == ("found", "alice@orig.example")
        with daemon.connect("policy") as pol:
            pol.sendall(b"request=smtpd_access_policy\nclient_address=127.0.0.1\nsender=a@b.example\n\n")
            assert pol.recv(100).startswith(b"action=")
        log = daemon.log_text()
        assert "listen.tcp_forward: listening on systemd:domain=INET:index=0" in log
        # srsd bound nothing itself: every listening socket it has is one of ours.
        assert not re.search(r"listening on tcp:", log)
        daemon.reload()  # SIGHUP keeps the adopted sockets
        assert daemon.lookup("tcp_table", "reverse", srs0) == ("found", "alice@orig.example")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.diagnostics()


@pytest.mark.parametrize("child", ["worker", "lookup process"])
def test_socket_activation_by_name_with_children(tmp_path, child):
    """Separately named socket units (FileDescriptorName=), shared with a worker process
    (lookup_processes = 0) or with the lookup processes."""
    tcp = [listening_tcp(), listening_tcp()]
    ports = [s.getsockname()[1] for s in tcp]
    listen = {"tcp_reverse": "systemd:domain=INET:name=reverse", "tcp_forward": "systemd:domain=INET:name=forward"}
    options = {"workers": 2, "sections": {"daemon": {"lookup_processes": 0}}} if child == "worker" else {}
    daemon = activated(tmp_path / "srsd", tcp, ["forward", "reverse"], listen, **options)
    try:
        daemon.ports = {"tcp_forward": ports[0], "tcp_reverse": ports[1]}
        assert daemon.wait_for_log(f"{child} 1 started")
        for i in range(30):
            status, srs0 = daemon.lookup("tcp_table", "forward", f"user{i}@orig.example")
            assert status == "found"
            assert daemon.lookup("tcp_table", "reverse", srs0) == ("found", f"user{i}@orig.example")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.diagnostics()


def test_no_sockets_passed_is_a_clear_error(tmp_path):
    (tmp_path / "srsd").mkdir()
    daemon = SrsdDaemon(tmp_path / "srsd", endpoints=(), listen={"tcp_forward": "systemd:domain=INET:index=0"})
    with pytest.raises(AssertionError, match="exited with code 1"):
        daemon.start()
    assert "listen.tcp_forward: cannot listen on 'systemd:domain=INET:index=0'" in daemon.log_text()


# -- the unit's system call sandbox, run-tested without systemd -------------------------

DEBIAN_PYTHON = "/usr/bin/python3"  # has python3-seccomp (.ci/install)


def sandbox_wrapper() -> list[str]:
    done = subprocess.run([DEBIAN_PYTHON, "-c", "import seccomp"], capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.fail("python3-seccomp missing for /usr/bin/python3 (.ci/install installs it)", pytrace=False)
    return [DEBIAN_PYTHON, str(REPO_ROOT / "tests" / "unit_sandbox.py"), str(SYSTEMD / "srsd.service"), "--"]


def test_the_sandbox_denies_what_the_unit_denies():
    probe = (
        "import mmap, os\n"
        "for name, call in [('sched_setaffinity', lambda: os.sched_setaffinity(0, {0})),\n"
        "                   ('setgroups', lambda: os.setgroups([])),\n"
        "                   ('w+x mmap', lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC))]:\n"
        "    try:\n"
        "        call(); print(name, 'allowed')\n"
        "    except PermissionError:\n"
        "        print(name, 'denied')\n"
        "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE); print('rw mmap allowed')\n"
    )
    done = subprocess.run([*sandbox_wrapper(), DEBIAN_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n") == [
        "sched_setaffinity denied", "setgroups denied", "w+x mmap denied", "rw mmap allowed", "",
    ], done.stdout + done.stderr  # fmt: skip
    assert "SystemCallFilter" not in done.stderr and "@system-service | ~@privileged @resources" in done.stderr


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_srsd_works_inside_the_units_sandbox(srsd_factory, dns_server, tmp_path, algorithm):
    """SystemCallFilter= and MemoryDenyWriteExecute= of srsd.service applied with seccomp:
    every endpoint answers (DKIM signing with each key type, SPF over DNS), a worker
    process starts, SIGHUP reloads, SIGTERM stops cleanly, nothing is refused."""
    from srsd.mailauth.keys import generate_key
    from tests.lookup_clients import milter_message, policy_request
    from tests.protocols import milter_wire as w
    from tests.srsd_daemon import ALL_ENDPOINTS

    key = tmp_path / "s1.private"
    generate_key(str(key), algorithm, 2048)
    dns_server.add("orig.example", {"TXT": "v=spf1 ip4:192.0.2.1 -all"})
    sections = {
        "dns": {"nameservers": [dns_server.address]},
        "dkim": {"selector": "s1", "key_file": str(key), "algorithm": algorithm, "arc": algorithm == "rsa-sha256"},
    }
    daemon = srsd_factory(endpoints=ALL_ENDPOINTS, workers=2, wrapper=sandbox_wrapper(), sections=sections)
    assert daemon.wait_for_log("worker 1 started")
    worker = int(daemon.log_text().split("worker 1 started (pid ")[1].split(")")[0])
    for pid in (daemon.pid, worker):
        status = Path(f"/proc/{pid}/status").read_text()
        assert "Seccomp:\t2" in status and "Seccomp_filters:\t2" in status, (pid, status)

    for _ in range(10):  # spread over both processes
        status, srs0 = daemon.lookup("tcp_table", "forward", "alice@orig.example")
        assert status == "found"
        assert daemon.lookup("socketmap", "reverse", srs0) == ("found", "alice@orig.example")
    with daemon.connect("policy") as pol:
        pol.sendall(policy_request(client_address="192.0.2.9"))
        assert pol.recv(4096).startswith(b"action=PREPEND Received-SPF: Fail")
    session = w.session_start(address="127.0.0.1") + w.message_events(
        "4ABC", "alice@local.example", ["bob@remote.example"], [("From", " alice@local.example")], [b"Hi\r\n"]
    )
    with daemon.connect("milter") as mil:
        replies = milter_message(mil, session)
    assert any(r[0] == "i" and r[2] == "DKIM-Signature" and f"a={algorithm}" in r[3] for r in replies), replies
    daemon.write_secrets(["a-new-first-secret", "x"])
    daemon.reload()
    assert daemon.lookup("tcp_table", "reverse", srs0)[0] == "notfound"  # its secret is gone
    code = daemon.stop()
    log = daemon.log_text()
    assert code == 0, daemon.diagnostics()
    for trouble in ("Traceback", "critical", "Operation not permitted", "error"):
        assert trouble not in log, daemon.diagnostics()
