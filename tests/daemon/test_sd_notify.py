"""systemd readiness: `srsd serve` under Type=notify sends READY=1 once it listens,
and RELOADING=1 then READY=1 around a SIGHUP reload (sd_notify(3))."""

import signal
import socket

from tests.srsd_daemon import SrsdDaemon


def test_ready_and_reload_sent_to_notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(15)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        (tmp_path / "srsd").mkdir()
        daemon = SrsdDaemon(tmp_path / "srsd")
        daemon.start()
        try:
            assert sock.recv(100) == b"READY=1"
            daemon.process.send_signal(signal.SIGHUP)
            assert [sock.recv(100), sock.recv(100)] == [b"RELOADING=1", b"READY=1"]
        finally:
            assert daemon.stop() == 0
