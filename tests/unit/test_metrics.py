"""srsd.metrics and srsd.lookup_outcomes: what each answer counts as, the exposition
prometheus-client's own parser reads back, worker snapshots merged, bounded labels."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from srsd import metrics
from srsd.domains import DomainSet
from srsd.lookup_outcomes import QUIET, REASONS, reason_of
from srsd.metrics_http import metrics_registry
from srsd.metrics_workers import WorkerCounts
from srsd.rewrite import Rewriter
from srsd.srs import SRS
from srsd.srs_maps import SRSMaps

NOW = 1795521600.0  # 2026-11-24 (REFERENCE.md vectors)
SECRET = "tops3cr3t"


@pytest.fixture(autouse=True)
def fresh_tally(monkeypatch):
    """Each test counts from zero (the module-level tally is the process's)."""
    tally = metrics.Tally()
    monkeypatch.setattr(metrics, "TALLY", tally)
    monkeypatch.setattr(metrics, "_SPF", tally.counters["spf_results"])
    yield tally


def samples(registry=None) -> dict:
    text = generate_latest(registry or metrics_registry()).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def rewriter() -> Rewriter:
    return Rewriter(SRS([SECRET], "fwd.example"), DomainSet(["local.example"]))


# Every way the Rewriter answers not found, with the reason name it must count as.
FORWARD_CASES = [
    ("", "null_sender"),
    ("user", "fallback_key"),
    ("@orig.example", "fallback_key"),
    ("SRS0=Fl1s=JN=example.com=alice@fwd.example", "already_rewritten"),
    ("bob@local.example", "local_domain"),
    ("a@b@orig.example", "malformed"),
    ("x" * 600 + "@orig.example", "too_long"),
]
REVERSE_CASES = [
    ("alice@example.com", "not_srs"),
    ("SRS0=Fl1s=JN=example.com=alice@elsewhere.example", "other_domain"),
    ("SRS0=Fl1t=JN=example.com=alice@fwd.example", "forged"),
    ("SRS0=Fl1=JN=example.com=alice@fwd.example", "short_hash"),
    ("SRS0=Fl1s=AA=example.com=alice@fwd.example", "expired"),
    ("SRS0=Fl1s=J!=example.com=alice@fwd.example", "bad_timestamp"),
    ("SRS0=Fl1s=JN=example.com@fwd.example", "malformed"),
    ("SRS1=xxxx=hop@fwd.example", "malformed"),
]


@pytest.mark.parametrize(("key", "reason"), FORWARD_CASES)
def test_forward_not_found_reasons(key, reason):
    answer = rewriter().forward(key, NOW)
    assert answer.status == "notfound", answer
    assert reason_of(answer.text) == reason, answer.text


@pytest.mark.parametrize(("key", "reason"), REVERSE_CASES)
def test_reverse_not_found_reasons(key, reason):
    answer = rewriter().reverse(key, NOW)
    assert answer.status == "notfound", answer
    assert reason_of(answer.text) == reason, answer.text


def test_every_fixed_reason_is_counted_quietly_or_logged():
    assert set(REASONS.values()) - QUIET == {"spf_pass"}  # the SPF-aware keep has a line


def test_maps_count_every_answer_into_the_metrics():
    maps = SRSMaps(rewriter())
    minted = maps.lookup("forward", "alice@orig.example").text
    for key, _ in FORWARD_CASES:
        maps.lookup("forward", key)
    maps.lookup("reverse", minted)
    for key, _ in REVERSE_CASES:
        maps.lookup("reverse", key)
    got = samples()
    assert got["srsd_lookups_total", (("map", "forward"), ("result", "found"))] == 1
    assert got["srsd_lookups_total", (("map", "forward"), ("result", "notfound"))] == len(FORWARD_CASES)
    assert got["srsd_lookups_total", (("map", "reverse"), ("result", "found"))] == 1
    assert got["srsd_lookups_total", (("map", "reverse"), ("result", "notfound"))] == len(REVERSE_CASES)
    assert got["srsd_forward_unchanged_total", (("reason", "fallback_key"),)] == 2
    assert got["srsd_forward_unchanged_total", (("reason", "too_long"),)] == 1
    assert got["srsd_reverse_unchanged_total", (("reason", "not_srs"),)] == 1
    assert got["srsd_srs_refusals_total", (("reason", "forged"),)] == 1
    assert got["srsd_srs_refusals_total", (("reason", "malformed"),)] == 2
    assert not any(k[0] == "srsd_srs_refusals_total" and k[1] == (("reason", "other"),) for k in got)


def test_forged_addresses_from_many_domains_add_no_labels():
    maps = SRSMaps(rewriter())
    for i in range(200):
        maps.lookup("reverse", f"SRS0=abcd=JN=d{i}.example=u{secrets.token_hex(4)}@fwd.example")
        maps.lookup("forward", f"u{i}@d{i}.example")
    got = samples()
    lookup_series = [k for k in got if k[0].startswith(("srsd_lookups", "srsd_srs_refusals", "srsd_forward_"))]
    assert len(lookup_series) <= 4, lookup_series
    assert all(".example" not in str(labels) for _, labels in got)


def test_request_durations_are_a_cumulative_histogram():
    stats = metrics.endpoint_stats("tcp_forward")
    for elapsed in (0.000001, 0.00003, 0.004, 50.0):
        stats.since(time.perf_counter() - elapsed)
    stats.error("internal_error")
    stats.protocol_error("too_long")
    got = samples()
    bucket = lambda le: got["srsd_request_duration_seconds_bucket", (("endpoint", "tcp_forward"), ("le", le))]  # noqa: E731
    assert bucket("1e-05") == 1
    assert bucket("5e-05") == 2
    assert bucket("0.005") == 3
    assert bucket("30.0") == 3
    assert bucket("+Inf") == 4
    assert got["srsd_request_duration_seconds_count", (("endpoint", "tcp_forward"),)] == 4
    assert got["srsd_request_duration_seconds_sum", (("endpoint", "tcp_forward"),)] >= 50.004
    assert got["srsd_request_errors_total", (("endpoint", "tcp_forward"), ("kind", "internal_error"))] == 1
    assert got["srsd_protocol_errors_total", (("endpoint", "tcp_forward"), ("kind", "too_long"))] == 1


def test_signatures_counted_by_their_own_tags():
    metrics.count_signatures([
        ("DKIM-Signature", " v=1; a=rsa-sha256; c=relaxed/relaxed; d=Fwd.Example;\r\n\ts=s1; b=abc"),
        ("DKIM-Signature", " v=1; a=ed25519-sha256; d=fwd.example; s=e1; b=abc"),
        ("ARC-Seal", " i=1; a=rsa-sha256; cv=none; d=fwd.example; s=s1; b=xyz"),
        ("ARC-Message-Signature", " i=1; a=rsa-sha256; d=fwd.example; s=s1; b=xyz"),
        ("Authentication-Results", " fwd.example; spf=pass"),
        ("DKIM-Signature", " v=1; a=made-up; d=fwd.example; b=1"),
    ])  # fmt: skip
    got = samples()
    sig = lambda t, d, a: got.get(("srsd_signatures_total", (("algorithm", a), ("domain", d), ("type", t))))  # noqa: E731
    assert sig("dkim", "fwd.example", "rsa-sha256") == 1
    assert sig("dkim", "fwd.example", "ed25519-sha256") == 1
    assert sig("dkim", "fwd.example", "other") == 1
    assert sig("arc", "fwd.example", "rsa-sha256") == 1


def test_policy_actions_by_first_word():
    for action in ("DUNNO", "PREPEND Received-SPF: Pass", "550 5.7.23 SPF fail", "DEFER_IF_PERMIT 4.7.24 x", "OK"):
        metrics.count_policy_action(action)
    got = samples()
    for label in ("dunno", "prepend", "reject", "defer", "other"):
        assert got["srsd_policy_actions_total", (("action", label),)] == 1, label


def test_worker_snapshots_add_up_and_never_go_back():
    counts = WorkerCounts()
    parent = metrics.TALLY
    parent.lookups["forward", "found"] += 5
    metrics.endpoint_stats("tcp_forward").since(time.perf_counter())
    worker = metrics.Tally()
    worker.lookups["forward", "found"] += 7
    worker.counters["request_errors"]["policy", "overload"] += 1
    ws = worker.endpoints["tcp_forward"] = metrics.EndpointStats()
    ws.since(time.perf_counter())
    ws.error("internal_error")

    counts.received(json.dumps({"pid": 101, "snapshot": worker.snapshot()}).encode())
    counts.received(b"not json")  # logged and ignored
    registry = metrics_registry(counts.snapshots)

    def check(found, durations):
        got = samples(registry)
        assert got["srsd_lookups_total", (("map", "forward"), ("result", "found"))] == found
        assert got["srsd_request_duration_seconds_count", (("endpoint", "tcp_forward"),)] == durations
        assert got["srsd_request_errors_total", (("endpoint", "policy"), ("kind", "overload"))] == 1
        errors = ("srsd_request_errors_total", (("endpoint", "tcp_forward"), ("kind", "internal_error")))
        assert got[errors] == 1

    check(12, 2)
    counts.retire(101)  # the worker ended: its counts stay
    check(12, 2)
    counts.received(json.dumps({"pid": 101, "snapshot": worker.snapshot()}).encode())  # late: ignored
    check(12, 2)
    successor = metrics.Tally()  # a new process, counting from zero
    successor.lookups["forward", "found"] += 8
    successor.endpoints["tcp_forward"] = metrics.EndpointStats()
    successor.endpoints["tcp_forward"].since(time.perf_counter())
    counts.received(json.dumps({"pid": 102, "snapshot": successor.snapshot()}).encode())
    check(20, 3)


def test_spf_aware_decisions_count_one_result_per_egress_ip():
    from twisted.internet.defer import succeed

    from srsd.spf import SPFResult
    from srsd.spf_aware import SPFAwareForward

    class Checker:
        def cached(self, ip, sender, helo):
            return None

        def check(self, ip, sender, helo, budget=None):
            return succeed(SPFResult("pass" if sender.endswith("@ok.example") else "fail", "", "mailfrom", ttl=300))

    aware = SPFAwareForward(Checker(), ["192.0.2.25", "192.0.2.26"])
    maps = SRSMaps(rewriter(), aware)
    kept = maps.lookup("forward", "alice@ok.example")
    rewritten = maps.lookup("forward", "bob@bad.example")
    assert kept.result.status == "notfound" and rewritten.result.status == "found"
    got = samples()
    assert got["srsd_spf_results_total", (("identity", "mailfrom"), ("result", "pass"), ("where", "aware"))] == 2
    assert got["srsd_spf_results_total", (("identity", "mailfrom"), ("result", "fail"), ("where", "aware"))] == 2
    assert got["srsd_forward_unchanged_total", (("reason", "spf_pass"),)] == 1
    assert got["srsd_lookups_total", (("map", "forward"), ("result", "found"))] == 1
