"""The figures of a fault run: srsd's memory (from /proc), answer times, counts."""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (``VmHWM``, ``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def peak_rss_kb(pid: int) -> int:
    """Peak resident set size (VmHWM) since the process started or the last
    :func:`reset_peak_rss`, in KiB."""
    return status_kb(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (proc(5), /proc/PID/clear_refs: ``5``), so
    each fault's peak is its own. Needs to own the process (or root)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def process_tree(pid: int) -> list[int]:
    """*pid* and its descendants (srsd's lookup processes and workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += parents.get(current, [])
    return out


def tree_peak_rss_kb(pid: int) -> int:
    """The sum of the VmHWM of *pid*'s whole process tree, in KiB: each process's
    peak counted, so it bounds the tree's peak from above."""
    return sum(peak_rss_kb(p) for p in process_tree(pid))


def reset_tree_peak_rss(pid: int) -> None:
    """:func:`reset_peak_rss` for every process of *pid*'s tree."""
    for p in process_tree(pid):
        reset_peak_rss(p)


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


class Latencies:
    """Answer times in seconds, thread-safe; summarised as median, p99 and max (ms)."""

    def __init__(self) -> None:
        self._values: list[float] = []
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    @property
    def values(self) -> list[float]:
        with self._lock:
            return sorted(self._values)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def quantile(self, q: float) -> float:
        values = self.values
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def max(self) -> float:
        values = self.values
        return values[-1] if values else float("nan")

    def summary(self) -> str:
        values = self.values
        if not values:
            return "no answers"
        median = statistics.median(values)
        return (
            f"n={len(values)} median {median * 1000:.1f} ms, p99 {self.quantile(0.99) * 1000:.1f} ms, "
            f"max {values[-1] * 1000:.1f} ms"
        )


@dataclass
class Outcome:
    """One fault's figures, as docs/reliability.md reports them.

    :ivar inputs: what was sent (requests, messages, connections: see *unit*).
    :ivar answers: valid answers received (for mail: messages delivered).
    :ivar failures: wrong answers, dropped connections, missing replies (0 expected).
    :ivar lost: messages neither delivered nor still queued/retrying (mail faults).
    :ivar peak_rss_kb: srsd's VmHWM over the fault, KiB.
    :ivar latencies: answer times by client (e.g. the normal client per endpoint).
    :ivar notes: other figures worth printing (temporary refusals, bytes sent ...).
    :ivar counts: some of them by name, for the tests (``temp_refusals``, ``retried``).
    """

    case: str
    unit: str = "requests"
    inputs: int = 0
    answers: int = 0
    failures: int = 0
    lost: int | None = None
    peak_rss_kb: int | None = None
    start_rss_kb: int | None = None  # srsd's RSS when the fault began
    latencies: dict[str, Latencies] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # named figures tests assert on
    errors: list[str] = field(default_factory=list)  # the first few failures, for the report

    def fail(self, text: str) -> None:
        self.failures += 1
        if len(self.errors) < 20:
            self.errors.append(text)

    @property
    def rss_growth_kb(self) -> int:
        """How far srsd's RSS peaked above where it was when the fault began."""
        assert self.peak_rss_kb is not None and self.start_rss_kb is not None
        return self.peak_rss_kb - self.start_rss_kb

    def latency(self, name: str) -> Latencies:
        return self.latencies.setdefault(name, Latencies())

    def report(self) -> str:
        lost = "" if self.lost is None else f", lost {self.lost}"
        rss = "" if self.peak_rss_kb is None else f", srsd peak RSS {self.peak_rss_kb / 1024:.1f} MiB"
        if self.peak_rss_kb is not None and self.start_rss_kb is not None:
            rss += f" (at start {self.start_rss_kb / 1024:.1f})"
        lines = [
            f"{self.case}: {self.inputs} {self.unit}, {self.answers} answered, {self.failures} failures{lost}{rss}"
        ]
        lines += [f"    {name}: {lat.summary()}" for name, lat in self.latencies.items()]
        lines += [f"    {note}" for note in self.notes]
        lines += [f"    FAILURE: {error}" for error in self.errors]
        return "\n".join(lines)
