"""How many Twisted processes `srsd serve` runs when nothing says (srsd.workers.default_workers)."""

import os

import pytest

from srsd.workers import MAX_DEFAULT_WORKERS, default_workers


@pytest.mark.parametrize(
    ("serves_policy", "cpus", "expected"),
    [
        (False, 8, 1),  # milter and lookups only: one Twisted process
        (True, 1, 1),
        (True, 2, 2),
        (True, 3, 3),
        (True, 64, MAX_DEFAULT_WORKERS),
        (True, 0, 1),
    ],
)
def test_one_per_cpu_for_the_policy_service(serves_policy, cpus, expected):
    assert default_workers(serves_policy, cpus) == expected


def test_cpus_are_those_this_process_may_run_on():
    assert default_workers(True) == min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS)
