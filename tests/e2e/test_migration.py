"""Migrating a running PostSRSd host to srsd, through a real Postfix (docs/migration.md).

PostSRSd 1.10 runs exactly as Debian runs it: its own systemd launcher script
(/usr/share/postsrsd/postsrsd-systemd-launcher, which sources /etc/default/postsrsd and
passes -u postsrsd -c /var/lib/postsrsd) pointed at a defaults file written here, on free
loopback ports; Postfix uses the shipped tcp_table snippet on those ports. Mail is forwarded
(PostSRSd mints the SRS0/SRS1 senders), PostSRSd is stopped, ``srsd import-postsrsd`` turns
that same defaults file into srsd's config, srsd starts on the same ports, and main.cf is
not touched. Bounces to the addresses PostSRSd minted reach their senders through Postfix,
and new mail leaves with the very same SRS addresses.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from srsd.srs import SRS
from tests.srsd_daemon import READY_MARKER, SrsdDaemon, free_port, run_cli, wait_for_port

from .conftest import FORWARD_TARGET, FORWARDING_ALIAS, LOCAL_DOMAINS, SRS_DOMAIN
from .postfix_instance import PostfixInstance, render_snippet
from .test_postfix_srs import ALICE, HOP1_SRS0, delivered, submit

LAUNCHER = Path("/usr/share/postsrsd/postsrsd-systemd-launcher")


def descendants(pid: int) -> list[int]:
    """Every process below *pid* (PostSRSd 1.x forks one child per connection)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == parent:
                found.append(int(entry.name))
                frontier.append(int(entry.name))
    return found


class Host:
    """The PostSRSd host: its defaults file, secret, ports, PostSRSd process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.secret = root / "postsrsd.secret"
        self.secret.write_text(secrets.token_urlsafe(24) + "\n")
        self.secret.chmod(0o600)
        self.forward_port, self.reverse_port = free_port(), free_port()
        self.defaults = root / "default-postsrsd"
        self.defaults.write_text(
            "# /etc/default/postsrsd of the host being migrated\n"
            f"SRS_DOMAIN={SRS_DOMAIN}\n"
            f"SRS_EXCLUDE_DOMAINS={','.join(d for d in LOCAL_DOMAINS if d != SRS_DOMAIN)}\n"
            "SRS_SEPARATOR==\n"
            f"SRS_SECRET={self.secret}\n"
            "SRS_HASHLENGTH=4\nSRS_HASHMIN=4\n"
            f"SRS_FORWARD_PORT={self.forward_port}\nSRS_REVERSE_PORT={self.reverse_port}\n"
            "RUN_AS=postsrsd\nSRS_LISTEN_ADDR=127.0.0.1\nCHROOT=/var/lib/postsrsd\n"
        )
        self.log = root / "postsrsd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start_postsrsd(self) -> None:
        if not LAUNCHER.exists() or not os.access("/usr/sbin/postsrsd", os.X_OK):
            pytest.fail("PostSRSd 1.10 missing (Debian package postsrsd, .ci/install)", pytrace=False)
        script = LAUNCHER.read_text().replace("/etc/default/postsrsd", str(self.defaults))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if not wait_for_port(self.reverse_port, timeout=10):
            self.stop_postsrsd()
            pytest.fail(f"PostSRSd did not listen: {self.log.read_text(errors='replace')}", pytrace=False)

    def stop_postsrsd(self) -> None:
        """As `systemctl stop postsrsd` would: the daemon and every child it forked."""
        if self.process is None or self.process.poll() is not None:
            return
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGTERM)  # our own processes, by PID
            except ProcessLookupError:
                pass
        self.process.wait(10)
        deadline = time.monotonic() + 10
        while descendants(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    host = Host(tmp_path_factory.mktemp("postsrsd-host"))
    host.start_postsrsd()
    yield host
    host.stop_postsrsd()


@pytest.fixture(scope="module")
def postfix(host, sink):
    ports = {"tcp_forward": host.forward_port, "tcp_reverse": host.reverse_port}
    instance = PostfixInstance(
        relay_port=sink.port,
        local_domains=LOCAL_DOMAINS,
        virtual_aliases={FORWARDING_ALIAS: FORWARD_TARGET},
        extra_main_cf=render_snippet("main.cf.tcp_table", ports),
        label="migration",
    )
    try:
        instance.start()
        yield instance
    finally:
        instance.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))


def forwarded_sender(postfix, sink, sender: str) -> str:
    received = delivered(postfix, sink, submit(postfix, sender, FORWARDING_ALIAS))
    assert received.rcpt_tos == (FORWARD_TARGET,), received
    return received.mail_from


def test_bounces_to_postsrsd_addresses_reach_their_senders_after_the_switch(host, postfix, sink, tmp_path):
    # Before: PostSRSd mints the envelope senders of forwarded mail.
    day = int(time.time()) // 86400
    by_postsrsd = {sender: forwarded_sender(postfix, sink, sender) for sender in (ALICE, HOP1_SRS0)}
    srs = SRS([host.secret.read_text().strip()], SRS_DOMAIN)
    assert by_postsrsd[ALICE] == srs.forward(ALICE, day * 86400), by_postsrsd
    assert by_postsrsd[HOP1_SRS0].startswith("SRS1="), by_postsrsd

    # The switch: PostSRSd stops, its defaults file becomes srsd's config, srsd takes the ports.
    host.stop_postsrsd()
    config = tmp_path / "srsd.toml"
    run_cli("import-postsrsd", str(host.defaults), "-o", str(config), check=True)
    (tmp_path / "srsd").mkdir()
    daemon = SrsdDaemon(tmp_path / "srsd")  # the harness, run on the imported file as is
    daemon.config_path = config
    daemon.spawn()
    try:
        assert daemon.wait_for_log(READY_MARKER, timeout=20), daemon.diagnostics()
        log = daemon.log_text()
        assert f"listen.tcp_forward: listening on tcp:{host.forward_port}:interface=127.0.0.1" in log

        # After: bounces to what PostSRSd minted go back through Postfix to the senders.
        for sender, address in by_postsrsd.items():
            bounce = delivered(postfix, sink, submit(postfix, "", address))
            assert bounce.mail_from == "" and bounce.rcpt_tos == (sender,), (address, bounce)
        # New mail leaves with the same SRS addresses PostSRSd would have minted.
        for sender, address in by_postsrsd.items():
            now = forwarded_sender(postfix, sink, sender)
            if int(time.time()) // 86400 == day or sender != ALICE:
                assert now == address, (sender, now, address)
        assert "error" not in daemon.log_text().lower(), daemon.diagnostics()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.diagnostics()
