"""Decision lines of a running srsd: a flood of forged bounces is rate-limited with a
summary that accounts for every line left out; ``[log] target = "syslog"`` sends every
line, facility mail, to the syslog socket (a unix datagram socket the test binds)."""

from __future__ import annotations

import re
import socket
import threading
import time

from tests.metrics_scrape import scrape, value
from tests.srsd_daemon import READY_MARKER, SRS_DOMAIN

FLOOD = 400
_SUPPRESSED = re.compile(r"log: (\d+) 'reverse_refused' lines suppressed in the last \d+ s")


def test_a_flood_of_forged_bounces_is_rate_limited_and_accounted_for(srsd_factory):
    daemon = srsd_factory(
        endpoints=("tcp_reverse", "metrics"), sections={"log": {"rate_limit": 5.0, "burst": 10}}
    )
    started = time.monotonic()
    with daemon.tcp_table("reverse") as rev:
        for i in range(FLOOD):
            assert rev.lookup("reverse", f"SRS0=abcd=AA=x{i}.example=u@{SRS_DOMAIN}")[0] == "notfound"
    took = time.monotonic() - started

    def accounted() -> tuple[int, int]:
        text = daemon.log_text()
        return text.count("' refused: "), sum(int(n) for n in _SUPPRESSED.findall(text))

    deadline = time.monotonic() + 40  # summaries come every 10 s
    while sum(accounted()) < FLOOD and time.monotonic() < deadline:
        time.sleep(0.2)
    written, suppressed = accounted()
    assert written + suppressed == FLOOD, (written, suppressed)
    assert 10 <= written <= 10 + 5 * (took + 1), (written, took)  # the burst, then 5 a second
    # The lookup process reports its counts to the parent once a second: poll the scrape.
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(daemon.ports["metrics"])
        counted = value(samples, "srsd_log_lines_suppressed_total", kind="reverse_refused")
        if counted == suppressed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == suppressed
    assert value(samples, "srsd_srs_refusals_total", reason="expired") == FLOOD  # every one counted


class SyslogReceiver(threading.Thread):
    """A unix datagram socket standing in for /dev/log; keeps every datagram."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.lines: list[bytes] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.lines.append(self.sock.recv(65536))
            except TimeoutError:
                continue

    def wait_for(self, needle: bytes, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no syslog line with {needle!r}; got {self.lines[-20:]}")

    def close(self) -> None:
        self.running = False
        self.join(5)
        self.sock.close()


def test_syslog_target_sends_every_line_with_facility_mail(srsd_factory, short_tmp):
    receiver = SyslogReceiver(str(short_tmp / "log"))
    receiver.start()
    try:
        daemon = srsd_factory(
            start=False,
            endpoints=("tcp_reverse",),
            sections={"log": {"target": "syslog", "syslog_socket": str(short_tmp / "log")}},
        )
        daemon.prepare()
        daemon.spawn()
        pid = daemon.pid
        ready = receiver.wait_for(READY_MARKER.encode())
        assert ready.startswith(f"<22>srsd[{pid}]: srsd ready".encode()), ready  # mail.info
        with daemon.tcp_table("reverse") as rev:
            rev.lookup("reverse", f"SRS0=abcd=AA=x.example=u@{SRS_DOMAIN}")
        refused = receiver.wait_for(b"refused")
        # decided in a lookup process ([daemon] lookup_processes): its own pid
        assert re.fullmatch(
            rb"<22>srsd\[\d+\]: "
            + re.escape(f"reverse 'SRS0=abcd=AA=x.example=u@{SRS_DOMAIN}' refused: ".encode())
            + rb"timestamp 'AA' expired or in the future",
            refused,
        ), refused
        assert daemon.stop() == 0
        receiver.wait_for(b"srsd stopping")  # queued lines are sent before exit
        assert READY_MARKER not in daemon.log_text()  # nothing on stderr
    finally:
        receiver.close()


def test_syslog_socket_missing_stops_the_start(srsd_factory, short_tmp):
    daemon = srsd_factory(
        start=False, sections={"log": {"target": "syslog", "syslog_socket": str(short_tmp / "nothing")}}
    )
    daemon.prepare()
    daemon.spawn()
    assert daemon.wait_exit(30) == 1
    assert "log.syslog_socket: cannot send to" in daemon.log_text()
