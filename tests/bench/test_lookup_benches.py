"""The benchmarks of issue 11 run end to end with tiny counts (CI smoke: each
starts both sides, alternates and prints its ratios; no timing is asserted). Their
figures: docs/performance.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run(script: str, *args: str, timeout: float = 300) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH.parent), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_lookups_alternates_and_prints_pair_ratios():
    out = run(
        "lookups.py", "--seconds", "0.3", "--warmup", "0.1", "--connections", "1,2", "--maps", "forward,reverse",
        "--rounds", "2", "--srsd", "l1,w1", "--keys", "300", "--quiet-timeout", "0", "--retries", "0",
        "--answer-cache", "100",
    )  # fmt: skip
    # every round prints each srsd's ratio to the PostSRSd run of the same round
    assert len(re.findall(r"round 2: PostSRSd [\d,]+/s, srsd l1 [\d,]+/s \(\d+\.\d\dx\), srsd w1", out)) == 4, out
    assert re.search(r"\| forward \| 2 \| none \| [\d,]+ \S+ \| [\d,]+ \(\d+\.\d\dx, ", out), out
    assert " bad 1" not in out and "did not match" not in out


def test_isolation_measures_idle_and_both_loads():
    out = run(
        "isolation.py", "--rounds", "1", "--seconds", "0.5", "--rate", "200", "--connections", "2",
        "--spf-waiting", "5", "--dns-delay", "0.5", "--milter-clients", "1", "--keys", "200", "--srsd", "l1,anchor",
    )  # fmt: skip
    for side in ("srsd l1", "anchor"):  # the anchor: PostSRSd, policyd-spf and OpenDKIM under the same loads
        spf_row = side + r" round 1 spf +: idle p50/p99 \d+/\d+ µs .* spf \d+/s, errors 0, bad replies 0"
        assert re.search(spf_row, out), out
        assert re.search(side + r" round 1 milter: .* milter \d+/s, errors 0, bad replies 0", out), out
    assert re.search(r"\| l1 \| milter \| \d+\.\d\dx", out), out
    assert re.search(r"\| anchor \| milter \| \d+\.\d\dx", out), out
    assert re.search(r"  l1 milter: \d+\.\d\dx \(", out), out  # srsd's loaded p99 against the anchor's


@pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix needs root")
def test_postfix_end_to_end_alternates():
    out = run("postfix_srs.py", "--messages", "20", "--clients", "2", "--rounds", "2", "--srsd", "l1")
    assert re.search(r"round 2: PostSRSd \d+ msgs/s, srsd l1 \d+ msgs/s \(\d+\.\d\dx\)", out), out
    assert re.search(r"\| 20 msgs, 2 SMTP clients \| \d+ msgs/s \| \d+ msgs/s", out), out


@pytest.mark.parametrize("dns", ["nsd", "python"])
def test_spf_policy_alternates_with_policyd_spf(dns):
    busy = "1" if dns == "nsd" else "0"  # one of them beside a spinning process (bench/busy.py)
    out = run("spf_policy.py", "--requests", "40", "--warmup", "40", "--rounds", "2", "--connections", "1,2",
              "--dns", dns, "--busy", busy)  # fmt: skip
    # every round prints the pair, both mixes, every reply checked (exit 0 = no bad reply)
    pairs = re.findall(r"(warm|cold) \d conn round \d: policyd-spf [\d,]+/s .* srsd [\d,]+/s .*bad 0/0", out)
    assert len(pairs) == 8, out
    assert len(re.findall(r"DNS server \d+\.\d{3}/\d+\.\d{3} ms a request", out)) == 8, out
    assert re.search(r"\| cold \| 2 \| [\d,]+ \| [\d,]+ \| \d+\.\d\dx \|", out), out
    assert f"; {busy} busy processes;" in out, out


def test_spf_layers_prints_every_layer():
    out = run("spf_layers.py", "--requests", "40", "--rounds", "1", "--settle-heap")
    rows = re.findall(r"^  (\S.*?) +median +\d+\.\d", out, re.M)
    assert rows == ["cold policy", "collector (cold policy)", "check_host", "checker", "policy",
                    "DNS query, 1 at once", "DNS query, 8 at once"], out  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix needs root")
def test_dkim_signing_alternates_srsd_serve_with_opendkim():
    out = run("dkim_signing.py", "--seconds", "0.2", "--postfix", "--messages", "8", "--rounds", "2", "--workers", "1")
    assert re.search(r"forwarded: verify\+seal\+sign +srsd +\d+", out), out
    assert re.search(r"forwarded: verify\+seal\+sign +dkimpy 1.1.8 as shipped +\d+", out), out
    rate = r"\d+ msgs/s \(\d+\.\d ms CPU/msg\)"
    rounds = re.findall(rf"round \d: .*srsd w1 {rate}.*opendkim {rate}|round \d: opendkim {rate}.*srsd w1 {rate}", out)
    assert len(rounds) == 2, out
    assert re.search(r"srsd w1 / OpenDKIM, median of 2 rounds: \d+\.\d\dx", out), out
    assert "srsd: 8/8 delivered messages verify" in out, out


def test_workpool_hop_alternates_the_pools():
    out = run("workpool_hop.py", "--jobs", "40", "--rounds", "2", "--work", "0,100")
    pools = r"(srsd BoundedPool|before \(deferToThreadPool\))"
    measured = re.findall(rf"round \d: work \d+, [14] at once, {pools}: \d+ µs", out)
    assert len(measured) == 16, out
    assert len(re.findall(r"before / now CPU per job, median of 2 rounds: \d+\.\d\dx", out)) == 4, out


def test_dkim_jobs_compares_threads_and_processes():
    out = run("dkim_jobs.py", "--messages", "8", "--rounds", "2", "--parallel", "2", "--size", "2000")
    rate = r"\d+ msgs/s \(\d+\.\d\d ms CPU/msg\)"
    rounds = re.findall(r"^round \d: (.*)$", out, re.M)
    assert len(rounds) == 2, out
    for line in rounds:
        assert all(re.search(rf"\b{way} {rate}", line) for way in ("thread", "threads", "processes")), line
    assert re.search(r"2 processes / 2 threads, median of 2 rounds: \d+\.\d\dx", out), out
