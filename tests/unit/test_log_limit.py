"""Decision lines: the token bucket per kind, the suppressed-lines summary, one line per
key and day for the SRS maps, the stderr/journal format and the syslog sender (a real
unix datagram socket standing in for /dev/log)."""

from __future__ import annotations

import io
import os
import socket

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from srsd import log_limit, metrics
from srsd.domains import DomainSet
from srsd.log_limit import SUMMARY_INTERVAL, LimitedLog, OncePerDay, RateLimiter
from srsd.log_targets import LogOutput, SyslogSender
from srsd.rewrite import Rewriter
from srsd.srs import SRS
from srsd.srs_maps import SRSMaps


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def texts(events, namespace_prefix: str = "srsd") -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace", "").startswith(namespace_prefix)]


def test_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.allow("a") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("b")  # its own bucket
    clock.now += 0.1  # one token back
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 100  # saved up to the burst, no more
    assert sum(limiter.allow("a") for _ in range(20)) == 5


def test_suppressed_lines_are_summarized_and_counted(events, monkeypatch):
    tally = metrics.Tally()
    monkeypatch.setattr(metrics, "TALLY", tally)
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    log = LimitedLog(log_limit.log, limiter)
    for i in range(1002):
        log.info("reverse_refused", "refused {i}", i=i)
    assert texts(events) == ["refused 0", "refused 1"]
    limiter.summarize()
    assert len(texts(events)) == 2  # not due yet
    clock.now += SUMMARY_INTERVAL
    limiter.summarize()
    assert texts(events)[2] == (
        "log: 1000 'reverse_refused' lines suppressed in the last 10 s (log.rate_limit = 1 a second)"
    )
    assert tally.counters["log_lines_suppressed"][("reverse_refused",)] == 1000
    limiter.summarize()
    assert len(texts(events)) == 3  # nothing more to say


def test_no_limit_when_rate_is_zero():
    limiter = RateLimiter(rate=0, burst=1)
    assert all(limiter.allow("x") for _ in range(10000))


def test_once_per_day_forgets_at_the_next_utc_day():
    once = OncePerDay(max_keys=3)
    assert once.first("a") and not once.first("a")
    once.roll(once.day * 86400 + 3600)  # the same day
    assert not once.first("a")
    once.roll((once.day + 1) * 86400)
    assert once.first("a")
    for key in "bcd":  # over max_keys: starts over instead of growing
        once.first(key)
    assert len(once.keys) <= 3


def test_srs_maps_log_each_rewrite_reversal_and_refusal_once(events):
    maps = SRSMaps(Rewriter(SRS(["s3cret"], "fwd.example"), DomainSet(["local.example"])))
    sender = f"once{os.getpid()}@orig.example"
    for _ in range(5):
        srs = maps.lookup("forward", sender).text
        maps.lookup("forward", srs)  # Postfix looks the result up again: no line
        maps.lookup("forward", "bob@local.example")  # local: no line
        maps.lookup("reverse", srs)
        maps.lookup("reverse", srs.lower())  # smtpd asks in lower case: the same address
        maps.lookup("reverse", srs.replace("=orig", "=Xorig"))  # mangled: refused
        maps.lookup("reverse", "carol@orig.example")  # an ordinary recipient: no line
    lines = texts(events)
    assert lines == [
        f"forward {sender} -> {srs}: rewritten",
        f"reverse {srs} -> {sender}: reversed",
        f"reverse {srs.replace('=orig', '=Xorig')!r} refused: "
        f"hash {srs[5:9]!r} does not verify (forged, or signed with another secret)",
    ], lines


def test_journal_lines_carry_their_priority(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    out = io.StringIO()
    output = LogOutput(out)
    output({"log_format": "hello", "log_level": LogLevel.warn, "log_time": 0})
    output({"log_format": "two\nlines", "log_level": LogLevel.info, "log_time": 0})
    assert out.getvalue() == (
        f"<4>srsd[{os.getpid()}] warn: hello\n<6>srsd[{os.getpid()}] info: two\n<6>    lines\n"
    )


def test_stderr_lines_have_time_pid_and_level(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    LogOutput(out)({"log_format": "hello {x}", "x": 1, "log_level": LogLevel.info, "log_time": 86400})
    assert out.getvalue() == f"1970-01-02T00:00:00Z srsd[{os.getpid()}] info: hello 1\n"


def test_syslog_lines_reach_the_socket_with_facility_mail(tmp_path):
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(10)
        output = LogOutput(io.StringIO())
        output.use_syslog(path, "mail")
        output({"log_format": "reverse {a} refused", "a": "x", "log_level": LogLevel.info, "log_time": 0})
        output({"log_format": "broken", "log_level": LogLevel.error, "log_time": 0})
        first, second = server.recv(4096), server.recv(4096)
        output.close()
    # PRI = facility * 8 + severity (RFC 5424 6.2.1): mail = 2; info = 6, err = 3
    assert first == f"<22>srsd[{os.getpid()}]: reverse x refused".encode()
    assert second == f"<19>srsd[{os.getpid()}]: broken".encode()


def test_syslog_socket_that_is_not_there_is_an_error(tmp_path):
    with pytest.raises(OSError):
        SyslogSender(str(tmp_path / "missing.sock"), "mail")
