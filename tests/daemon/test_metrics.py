"""``[listen] metrics``: srsd as a subprocess with every endpoint, real lookups, policy
requests (SPF over the loopback DNS server) and milter messages (verified, sealed,
signed); ``/metrics`` is scraped while the traffic flows, and then every count must be
what was sent. With ``--workers 2`` the counts of both processes are in the one scrape."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest

from srsd.mailauth.keys import generate_key
from srsd.srs import SRS
from tests.lookup_clients import milter_message, policy_request
from tests.metrics_scrape import Scraper, key, scrape, value, wait_for_samples
from tests.protocols import milter_wire as w
from tests.srsd_daemon import ALL_ENDPOINTS, SRS_DOMAIN

ENDPOINTS = (*ALL_ENDPOINTS, "metrics")


@pytest.fixture
def dkim_key(tmp_path):
    path = tmp_path / "s1.private"
    generate_key(str(path), "rsa-sha256", 2048)
    return str(path)


def start(srsd_factory, dns_server, dkim_key, workers):
    dns_server.add("orig.example", {"TXT": "v=spf1 ip4:192.0.2.1 -all"})
    dns_server.add("mail.orig.example", {"TXT": "v=spf1 ip4:192.0.2.1 -all"})
    sections = {
        "dns": {"nameservers": [dns_server.address], "timeout": 2.0},
        "dkim": {"selector": "s1", "key_file": dkim_key},
    }
    return srsd_factory(endpoints=ENDPOINTS, sections=sections, workers=workers, probe=True)


def serving_pids(daemon) -> set[str]:
    return set(re.findall(r"srsd\[(\d+)\] info: forward \S+ -> \S+: rewritten", daemon.log_text()))


def drive_lookups(daemon, workers: int, counts: dict, between=lambda: None) -> list[str]:
    """Forward lookups over new connections (so SO_REUSEPORT spreads them) until every
    process has answered some; the minted addresses. *between* runs after each connection."""
    minted = []
    deadline = time.monotonic() + 30
    n = 0
    while len(serving_pids(daemon)) < workers or n < 40:
        assert time.monotonic() < deadline, f"only {serving_pids(daemon)} answered lookups"
        with daemon.tcp_table("forward") as fwd:
            for j in range(3):
                status, text = fwd.lookup("forward", f"user{n}.{j}@orig.example")
                assert status == "found", (status, text)
                minted.append(text)
            assert fwd.lookup("forward", f"local{n}@local.example") == ("notfound", "local domain")
            counts["forward_found"] += 3
            counts["local_domain"] += 1
        n += 1
        between()
    return minted


def test_metrics_count_what_was_sent(srsd_factory, dns_server, dkim_key, workers):
    daemon = start(srsd_factory, dns_server, dkim_key, workers)
    port = daemon.ports["metrics"]
    before = scrape(port)
    assert value(before, "srsd_lookups_total", map="forward", result="found") == 0
    scraper = Scraper(port)  # scrapes concurrently with the requests in flight
    scraper.start()
    between = Between(port)  # and between the steps of the traffic, for sure
    counts = dict.fromkeys(("forward_found", "local_domain"), 0)
    try:
        minted = drive_lookups(daemon, workers, counts, between)
        srs = SRS([daemon.secrets_path.read_text().strip()], SRS_DOMAIN)
        expired = srs.forward("old@orig.example", time.time() - 40 * 86400)
        forged = minted[0][:5] + next(c for c in "ABC" if c != minted[0][5].upper()) + minted[0][6:]
        with daemon.tcp_table("reverse") as rev:
            for address in minted[:10]:
                assert rev.lookup("reverse", address)[0] == "found"
            for address in (expired, forged, forged, "bob@orig.example"):
                assert rev.lookup("reverse", address)[0] == "notfound"
            rev.send(b"bogus request\n")
            assert rev.read()[0] == "notfound"
        between()
        with daemon.socketmap() as sm:
            assert sm.lookup("forward", "carol@orig.example")[0] == "found"
            assert sm.lookup("reverse", minted[1])[0] == "found"
            sm.request("nomap", "x@orig.example")
            assert sm.read()[0] == "perm"
        with daemon.connect("policy") as pol:
            for i in range(6):
                client = "192.0.2.1" if i % 2 else "192.0.2.9"  # pass, fail
                pol.sendall(policy_request(client_address=client, instance=f"i{i}"))
                assert recv_until(pol, b"\n\n").startswith(b"action=PREPEND Received-SPF: ")
            pol.sendall(policy_request(sender="", instance="null"))  # the HELO identity
            assert recv_until(pol, b"\n\n").startswith(b"action=PREPEND")
        between()
        local, incoming = ("127.0.0.1", "bob@remote.example"), ("192.0.2.1", "bob@local.example")
        for i, (address, rcpt) in enumerate([local, incoming] * 2):
            sender = "alice@local.example" if address == "127.0.0.1" else "alice@orig.example"
            session = w.session_start(address=address) + w.message_events(
                f"4QID{i}", sender, [rcpt], [("From", f" {sender}"), ("Subject", " hi")], [b"Hello\r\n"]
            )
            with daemon.connect("milter") as mil:
                replies = milter_message(mil, session)
                mil.sendall(w.QUIT)
            assert any(r[0] == "i" and r[-2] == "DKIM-Signature" for r in replies), replies
            between()
    finally:
        scraper.stop()

    f = counts["forward_found"] + 1
    expected = {
        key("srsd_lookups_total", map="forward", result="found"): f,
        key("srsd_lookups_total", map="forward", result="notfound"): counts["local_domain"],
        key("srsd_forward_unchanged_total", reason="local_domain"): counts["local_domain"],
        key("srsd_lookups_total", map="reverse", result="found"): 11,
        key("srsd_lookups_total", map="reverse", result="notfound"): 4,
        key("srsd_srs_refusals_total", reason="expired"): 1,
        key("srsd_srs_refusals_total", reason="forged"): 2,
        key("srsd_reverse_unchanged_total", reason="not_srs"): 1,
        key("srsd_protocol_errors_total", endpoint="tcp_reverse", kind="unsupported_request"): 1,
        key("srsd_protocol_errors_total", endpoint="socketmap", kind="unknown_map"): 1,
        key("srsd_request_duration_seconds_count", endpoint="tcp_forward"): f - 1 + counts["local_domain"],
        key("srsd_request_duration_seconds_count", endpoint="tcp_reverse"): 14,
        key("srsd_request_duration_seconds_count", endpoint="socketmap"): 2,
        key("srsd_request_duration_seconds_count", endpoint="policy"): 7,
        key("srsd_spf_results_total", where="policy", identity="mailfrom", result="pass"): 3,
        key("srsd_spf_results_total", where="policy", identity="mailfrom", result="fail"): 3,
        key("srsd_spf_results_total", where="policy", identity="helo", result="pass"): 1,
        key("srsd_policy_actions_total", action="prepend"): 7,
        key("srsd_request_duration_seconds_count", endpoint="milter"): 4,
        key("srsd_messages_total", **{"class": "local", "outcome": "handled"}): 2,
        key("srsd_messages_total", **{"class": "forwarded", "outcome": "handled"}): 2,
        key("srsd_spf_results_total", where="milter", identity="mailfrom", result="pass"): 2,
        key("srsd_dkim_results_total", result="none"): 2,
        key("srsd_arc_results_total", result="none"): 2,
        key("srsd_signatures_total", type="dkim", domain=SRS_DOMAIN, algorithm="rsa-sha256"): 4,
        key("srsd_signatures_total", type="arc", domain=SRS_DOMAIN, algorithm="rsa-sha256"): 2,
    }
    samples = wait_for_samples(port, expected)
    wrong = {k: (samples.get(k, 0.0), want) for k, want in expected.items() if samples.get(k, 0.0) != want}
    assert not wrong, f"(got, sent) per sample: {wrong}"
    # Nothing counted that was not sent.
    assert value(samples, "srsd_request_errors_total", endpoint="tcp_forward", kind="internal_error") == 0
    assert sum(v for (n, _), v in samples.items() if n == "srsd_lookups_total") == f + counts["local_domain"] + 15
    assert between.scrapes >= 40 + 2 + 4, between.scrapes  # lookups, reverse, policy, each milter message
    assert not scraper.problems, scraper.problems[:5]
    if workers > 1:
        assert len(serving_pids(daemon)) == workers


class Between:
    """A scrape each time it is called, checking that no count went down meanwhile."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.last: dict = {}
        self.scrapes = 0

    def __call__(self) -> None:
        samples = scrape(self.port)
        self.scrapes += 1
        went_down = {k: (v, samples.get(k, 0.0)) for k, v in self.last.items() if samples.get(k, 0.0) < v}
        assert not went_down, went_down
        self.last = {k: v for k, v in samples.items() if k[0].endswith(("_total", "_count", "_bucket"))}


@pytest.fixture(params=[1, 2], ids=["1-process", "2-workers"])
def workers(request):
    return request.param


def recv_until(sock, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while marker not in out:
        chunk = sock.recv(65536)
        assert chunk, out
        out += chunk
    return out


def test_metrics_endpoint_serves_only_metrics_and_openmetrics(srsd_factory):
    daemon = srsd_factory(endpoints=("tcp_forward", "metrics"))
    port = daemon.ports["metrics"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert err.value.code == 404
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
        text = reply.read().decode()
    assert text.rstrip().endswith("# EOF")
    assert 'srsd_request_duration_seconds_bucket{endpoint="tcp_forward",le="1e-05"} 0' in text


def test_metrics_endpoint_that_cannot_be_bound_stops_the_start(srsd_factory):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        daemon = srsd_factory(
            start=False, endpoints=("tcp_forward",), listen={"metrics": f"tcp:{busy}:interface=127.0.0.1"}
        )
        daemon.prepare()
        daemon.spawn()
        assert daemon.wait_exit(20) == 1
    assert "listen.metrics: cannot listen on" in daemon.log_text()


def test_counts_of_a_killed_child_stay_in_the_totals(srsd_factory):
    import os
    import signal

    daemon = srsd_factory(endpoints=("tcp_forward", "metrics"))  # 2 lookup processes serve it
    assert daemon.wait_for_log(re.compile(r"lookup process 1 started \(pid \d+\)"))
    worker = int(re.search(r"lookup process 1 started \(pid (\d+)\)", daemon.log_text()).group(1))
    counts = dict.fromkeys(("forward_found", "local_domain"), 0)
    drive_lookups(daemon, 2, counts)
    assert str(worker) in serving_pids(daemon)
    port = daemon.ports["metrics"]
    found = key("srsd_lookups_total", map="forward", result="found")
    assert wait_for_samples(port, {found: counts["forward_found"]})[found] == counts["forward_found"]

    os.kill(worker, signal.SIGKILL)  # the lookup process we started (its pid from srsd's own log)
    assert daemon.wait_for_log(re.compile(r"lookup process 1 started \(pid \d+\)"), count=2, timeout=20)
    assert scrape(port)[found] == counts["forward_found"], "a dead child's counts went missing"
    with daemon.tcp_table("forward") as fwd:
        for i in range(30):
            assert fwd.lookup("forward", f"after{i}@orig.example")[0] == "found"
    want = counts["forward_found"] + 30
    assert wait_for_samples(port, {found: want})[found] == want
