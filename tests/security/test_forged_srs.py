"""Forged SRS addresses never reverse: bench/forged_srs.py bounded to 20 000 candidates
(the 10^6 run and its figures: docs/operations.md). The battery's own check is shown
to catch a weakened Rewriter, so a pass means something."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from srsd.domains import DomainSet
from srsd.rewrite import Rewriter
from srsd.srs import SRS

_PATH = Path(__file__).resolve().parents[2] / "bench" / "forged_srs.py"
_spec = importlib.util.spec_from_file_location("forged_srs", _PATH)
forged_srs = importlib.util.module_from_spec(_spec)
sys.modules["forged_srs"] = forged_srs
_spec.loader.exec_module(forged_srs)


def test_20k_forged_addresses_none_reversed():
    report = forged_srs.run(20_000, seed=13)
    assert report.forged + report.chance_hits == 20_000
    assert report.forged_reversed == 0, report.reversed_examples
    assert report.controls == 200 and report.controls_reversed == 200
    assert set(report.by_kind) == {
        "random-srs0", "random-srs1", "tampered", "short-hash", "other-secret", "expired", "future",
    }  # fmt: skip
    assert min(report.by_kind.values()) > 300


def test_the_battery_catches_a_weak_rewriter():
    """hash_minimum 1 (what srs.check_parameters refuses, forced here as a buggy build
    would): short-hash forgeries get through."""

    def weak(secrets):
        srs = SRS(secrets, forged_srs.DOMAIN, max_age_days=forged_srs.MAX_AGE)
        rewriter = Rewriter(srs, DomainSet([]))  # its alias scheme, derived from srs, checks the parameters
        srs.hash_minimum = 1
        return rewriter

    report = forged_srs.run(5_000, seed=13, make_rewriter=weak)
    assert report.forged_reversed > 0
    assert not report.ok


def test_the_battery_catches_a_rewriter_that_refuses_everything():
    class Refuses(Rewriter):
        def reverse(self, address, now=None):
            return super().reverse("nobody@" + forged_srs.DOMAIN, now)

    def refusing(secrets):
        return Refuses(SRS(secrets, forged_srs.DOMAIN), DomainSet([]))

    report = forged_srs.run(2_000, seed=13, make_rewriter=refusing)
    assert report.forged_reversed == 0 and report.controls_reversed == 0 and not report.ok
