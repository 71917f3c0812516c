"""Every case of the shared SRS test vectors through srsd's core.

The vectors (``srs_vectors.json``) were generated with Mail::SRS 0.31 (``expected``)
and run through PostSRSd 1.10, pysrs and srslib. Each case carries its whole
configuration and the clock (``now``) it holds at. A case passes when srsd gives
``expected`` or one of ``acceptable_alternatives``; an error passes when its class
(:attr:`srsd.srs.SRSError.kind`) is the expected one or in ``also_seen_errors``.

Forward cases whose sender is already in the SRS domain expect the sender
unchanged: that decision belongs to :class:`srsd.rewrite.Rewriter`
(NOTFOUND = unchanged), so those go through it; every other case exercises
:class:`srsd.srs.SRS` directly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from srsd.domains import DomainSet
from srsd.rewrite import FOUND, Rewriter
from srsd.srs import SRS, SRSError

REPO_ROOT = Path(__file__).resolve().parents[2]
VECTORS_COPY = REPO_ROOT / "tests" / "data" / "srs_vectors.json"
VECTORS_SHARED = REPO_ROOT.parent / "shared" / "testdata" / "srs" / "srs_vectors.json"


def _vectors_path() -> Path:
    """The repository's copy if present, else the shared original."""
    return VECTORS_COPY if VECTORS_COPY.is_file() else VECTORS_SHARED


VECTORS = json.loads(_vectors_path().read_text(encoding="utf-8"))
CASES = VECTORS["cases"]


def _srs(case: dict) -> SRS:
    return SRS(
        case["secrets"],
        case["domain"],
        hash_length=case["hash_length"],
        hash_minimum=case["hash_min"],
        max_age_days=case["max_age_days"],
        separator=case["separator"],
    )


def _run(case: dict) -> dict:
    """srsd's answer for *case*: ``{"output": ...}`` or ``{"error": kind}``."""
    srs = _srs(case)
    address, now = case["input"], case["now"]
    try:
        if case["operation"] == "reverse":
            return {"output": srs.reverse(address, now)}
        _local, at, domain = address.rpartition("@")
        if at and domain.lower() == case["domain"].lower():
            answer = Rewriter(srs, DomainSet([])).forward(address, now)
            return {"output": answer.text if answer.status == FOUND else address}
        return {"output": srs.forward(address, now)}
    except SRSError as exc:
        return {"error": exc.kind}


def _accepted(case: dict) -> list[dict]:
    expected = case["expected"]
    accepted = [expected, *case.get("acceptable_alternatives", [])]
    accepted += [{"error": kind} for kind in expected.get("also_seen_errors", [])]
    return accepted


def _matches(got: dict, want: dict) -> bool:
    if "output" in got:
        return want.get("output") == got["output"]
    return want.get("error") == got["error"]


def test_vector_file_is_complete() -> None:
    assert VECTORS["format"] == "srs-test-vectors/1"
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 145


def test_copy_matches_shared_original() -> None:
    """tests/data holds a copy so the repository is self-contained; flag drift."""
    if not VECTORS_SHARED.is_file() or not VECTORS_COPY.is_file():
        return  # nothing to compare against outside the shared workspace
    assert VECTORS_COPY.read_bytes() == VECTORS_SHARED.read_bytes(), (
        f"{VECTORS_COPY} differs from {VECTORS_SHARED}: copy the new vectors in"
    )


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_vector(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # `now` is passed explicitly; the clock is frozen too, so a code path that
    # forgets `now` still computes at the case's time.
    monkeypatch.setattr(time, "time", lambda: float(case["now"]))
    got = _run(case)
    accepted = _accepted(case)
    assert any(_matches(got, want) for want in accepted), (
        f"{case['operation']} {case['input']!r}: srsd gave {got}, accepted {accepted}"
        + (f"\nexplanation: {case['explanation']}" if "explanation" in case else "")
    )
