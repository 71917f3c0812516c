"""The atheris targets of fuzz/ in CI: every seed replayed through its target as a plain
function, then a short coverage-guided run of each target (fuzz/run.py, in a subprocess)
that must execute inputs and find nothing. The long runs are recorded in
docs/reliability.md ("Fuzzing"); fuzz/README.md says how to repeat them.
"""

from __future__ import annotations

import pytest

from fuzz import run
from fuzz.harness import FUZZ_DIR, corpus_files

#: per target: executions, or seconds, whichever comes first (the whole file < 60 s)
SHORT_RUNS, SHORT_SECONDS = 3000, 2


@pytest.mark.parametrize("target", run.TARGETS)
def test_seeds_replay(target):
    seeds = corpus_files([FUZZ_DIR / "corpus" / target])
    assert len(seeds) >= 8
    assert run.replay_target(target) == len(seeds)


@pytest.mark.parametrize("target", run.TARGETS)
def test_short_fuzzing_run(target, tmp_path):
    outcome = run.run_target(target, tmp_path, runs=SHORT_RUNS, seconds=SHORT_SECONDS, timeout=10)
    assert outcome.ok, outcome.log[-4000:]
    seeds = len(corpus_files([FUZZ_DIR / "corpus" / target]))
    assert outcome.executions > seeds, outcome.log[-2000:]  # it fuzzed, beyond replaying the seeds
    assert outcome.cov > 0 and outcome.ft > 0, outcome.log[-2000:]  # srsd was instrumented


CRASH_LOG = """\
INFO: Seed: 2184418948
#2\tINITED cov: 3 ft: 3 corp: 1/3b exec/s: 0 rss: 40Mb
#29\tREDUCE cov: 3 ft: 3 corp: 1/1b lim: 4 exec/s: 0 rss: 40Mb L: 1/1 MS: 5 CopyPart-

 === Uncaught Python exception: ===
AssertionError: ('boom',)
==13991== ERROR: libFuzzer: fuzz target exited
SUMMARY: libFuzzer: fuzz target exited
artifact_prefix='/tmp/x/'; Test unit written to /tmp/x/crash-28f6edbb
stat::number_of_executed_units: 352
stat::slowest_unit_time_sec:    0
"""


@pytest.mark.parametrize(
    ("text", "returncode", "counts"),
    [
        (CRASH_LOG, 77, (352, 3, 3, 1, 0, 0)),
        (CRASH_LOG.replace("fuzz target exited", "timeout after 11 seconds"), 70, (352, 3, 3, 0, 1, 0)),
        (CRASH_LOG.replace("fuzz target exited", "out-of-memory (used: 2100Mb; exceeds: 2048Mb)"), 71,
         (352, 3, 3, 0, 0, 1)),
        ("#4096\tpulse  cov: 90 ft: 300 corp: 9/1b\n#5000\tDONE   cov: 91 ft: 301 corp: 9/1b\n"
         "stat::number_of_executed_units: 5000\n", 0, (5000, 91, 301, 0, 0, 0)),
        ("Traceback (most recent call last):\nImportError: no module\n", 1, (0, 0, 0, 1, 0, 0)),
    ],
)  # fmt: skip
def test_run_reads_libfuzzer_output(text, returncode, counts):
    outcome = run.parse_log("t", text, returncode, 2.0)
    assert (outcome.executions, outcome.cov, outcome.ft, outcome.crashes, outcome.hangs, outcome.ooms) == counts
    assert outcome.ok == (counts[3:] == (0, 0, 0))
    if "Test unit" in text:
        assert outcome.artifacts == ["/tmp/x/crash-28f6edbb"]
