"""Run srsd's atheris targets: each for N executions or S seconds, one at a time, and say
per target how many inputs ran, how fast, what coverage they reached and whether any
crashed or hung. See fuzz/README.md.

    python3 fuzz/run.py                          # every target, 100 000 executions each
    python3 fuzz/run.py srs milter --runs 1000000
    python3 fuzz/run.py --seconds 60 --timeout 5
    python3 fuzz/run.py --replay                 # each seed once, no fuzzing (as CI does first)

Each target runs as ``python3 -m fuzz.fuzz_<target>`` from the repository root, this
tree's srsd first on PYTHONPATH, with its seeds (``fuzz/corpus/<target>``, read only) and
dictionary (``fuzz/dict/<target>.dict``). New inputs, crashing inputs and the log go to
``--work`` (default ``.fuzz/<target>/``, git-ignored). Exit status 1 if any target crashed,
hung or ran out of memory.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.harness import FUZZ_DIR, replay

__all__ = ["TARGETS", "Outcome", "command", "main", "parse_log", "replay_target", "run_target"]

ROOT = FUZZ_DIR.parent
#: every target, cheapest first (``fuzz/fuzz_<name>.py``)
TARGETS = ("netstring", "srs", "tcp_table", "dns_reply", "spf", "dmarc", "policy", "milter", "headers", "signing")

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)", re.MULTILINE)
_ERROR = re.compile(r"==\d+== ERROR: libFuzzer: ([\w -]+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Outcome:
    """One target's run. ``executions``: inputs run (libFuzzer's number_of_executed_units);
    ``cov``/``ft``: its last coverage counters (edges, features); ``crashes``/``hangs``/
    ``ooms``: 0 or 1 (libFuzzer stops at the first), with the input in ``artifacts``."""

    target: str
    returncode: int
    seconds: float
    executions: int = 0
    cov: int = 0
    ft: int = 0
    crashes: int = 0
    hangs: int = 0
    ooms: int = 0
    slowest: float = 0.0  # seconds, the slowest input
    artifacts: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not (self.crashes or self.hangs or self.ooms)

    @property
    def rate(self) -> float:
        """Executions per second of wall time."""
        return self.executions / self.seconds if self.seconds else 0.0


def command(
    target: str,
    work: Path,
    *,
    runs: int | None = None,
    seconds: int | None = None,
    timeout: int = 10,
    rss_limit_mb: int = 2048,
    max_len: int = 4096,
    seed: int | None = None,
) -> list[str]:
    """The command line fuzzing *target*; new inputs go to ``work/corpus``, crashes to
    ``work/artifacts``. No limit given: libFuzzer's (run until a crash)."""
    args = [sys.executable, "-m", f"fuzz.fuzz_{target}", str(work / "corpus"), str(FUZZ_DIR / "corpus" / target)]
    args += [f"-dict={FUZZ_DIR / 'dict' / f'{target}.dict'}", f"-artifact_prefix={work / 'artifacts'}/"]
    args += [f"-timeout={timeout}", f"-rss_limit_mb={rss_limit_mb}", f"-max_len={max_len}", "-print_final_stats=1"]
    if runs is not None:
        args.append(f"-runs={runs}")
    if seconds is not None:
        args.append(f"-max_total_time={seconds}")
    if seed is not None:
        args.append(f"-seed={seed}")
    return args


def parse_log(target: str, text: str, returncode: int, seconds: float) -> Outcome:
    """An :class:`Outcome` from libFuzzer's output *text*."""
    outcome = Outcome(target, returncode, seconds, log=text)
    executed = re.search(r"stat::number_of_executed_units: (\d+)", text)
    statuses = _STATUS.findall(text)
    if executed:
        outcome.executions = int(executed.group(1))
    elif statuses:
        outcome.executions = int(statuses[-1][0])
    if statuses:
        outcome.cov, outcome.ft = int(statuses[-1][2]), int(statuses[-1][3])
    slowest = re.search(r"stat::slowest_unit_time_sec: (\d+)", text)
    outcome.slowest = float(slowest.group(1)) if slowest else 0.0
    outcome.artifacts = _ARTIFACT.findall(text)
    for kind in _ERROR.findall(text):
        if "timeout" in kind:
            outcome.hangs += 1
        elif "out-of-memory" in kind:
            outcome.ooms += 1
        else:
            outcome.crashes += 1
    if returncode and not (outcome.crashes or outcome.hangs or outcome.ooms):
        outcome.crashes = 1  # died without libFuzzer's word (a signal, an import error)
    return outcome


def run_target(target: str, work: Path, **limits: int | None) -> Outcome:
    """Fuzz *target* in a subprocess (see :func:`command` for *limits*); the log is kept
    in ``work/log.txt``."""
    for sub in ("corpus", "artifacts"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    with open(work / "log.txt", "w+") as log:
        proc = subprocess.run(command(target, work, **limits), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.seek(0)
        text = log.read()
    return parse_log(target, text, proc.returncode, time.monotonic() - started)


def replay_target(target: str) -> int:
    """Run *target*'s seeds through it once, in this process, without atheris; the count.

    :raises Exception: what the target raised on a seed (the file named in a note).
    """
    module = importlib.import_module(f"fuzz.fuzz_{target}")
    return replay(module.test_one_input, [FUZZ_DIR / "corpus" / target])


def _report(outcomes: list[Outcome]) -> str:
    rows = [("target", "executions", "seconds", "exec/s", "cov", "ft", "crashes", "hangs", "ooms", "slowest s")]
    for o in outcomes:
        rows.append((o.target, str(o.executions), f"{o.seconds:.0f}", f"{o.rate:.0f}", str(o.cov), str(o.ft),
                     str(o.crashes), str(o.hangs), str(o.ooms), f"{o.slowest:.0f}"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]  # fmt: skip
    for o in outcomes:
        lines += [f"{o.target}: input written to {a}" for a in o.artifacts]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="target", help=f"{', '.join(TARGETS)} (default: all)")
    parser.add_argument("--runs", type=int, help="executions per target (default 100000 unless --seconds)")
    parser.add_argument("--seconds", type=int, help="wall seconds per target")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory limit, MiB")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input generated, bytes")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed, to repeat a run")
    parser.add_argument("--work", type=Path, default=ROOT / ".fuzz", help="where new inputs, crashes and logs go")
    parser.add_argument("--replay", action="store_true", help="run each seed once, without atheris")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target {unknown[0]!r} (known: {', '.join(TARGETS)})")
    targets = args.targets or list(TARGETS)
    if args.replay:
        for target in targets:
            print(f"{target}: {replay_target(target)} seeds replayed, no crash", flush=True)
        return 0
    runs = args.runs if args.runs is not None or args.seconds is not None else 100_000
    outcomes = []
    for target in targets:
        outcome = run_target(target, args.work / target, runs=runs, seconds=args.seconds, timeout=args.timeout,
                             rss_limit_mb=args.rss_limit_mb, max_len=args.max_len, seed=args.seed)  # fmt: skip
        outcomes.append(outcome)
        print(_report([outcome]).splitlines()[1], flush=True)
    print(_report(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
