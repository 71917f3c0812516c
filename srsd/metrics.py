"""What srsd counts, and how it becomes Prometheus metrics (prometheus-client).

The decision points count into this process's :data:`TALLY`: plain ``int`` and
``float`` increments on the reactor thread, ~0.1 µs each. prometheus-client's own
metric objects take a lock per ``inc()``/``observe()`` (2.4-11 µs each on the
project's 2-core machine, docs/operations.md "Metrics"), too much for a lookup that
costs ~20 µs in all; so nothing here touches prometheus-client: at a scrape,
:class:`srsd.metrics_http.TallyCollector` turns the counts (this process's, and the worker
processes' reported ones: :mod:`srsd.metrics_workers`) into metric families.

Labels are bounded: map and endpoint names, result keywords, reason names from fixed
tables, and srsd's own signing domains (from the configuration). Nothing an SMTP
client or sender chooses (domains, selectors, addresses) becomes a label.

Every metric, with what it counts: :data:`COUNTERS` and ``docs/operations.md``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from time import perf_counter
from typing import Any

__all__ = [
    "BUCKETS",
    "COUNTERS",
    "EndpointStats",
    "Tally",
    "TALLY",
    "endpoint_stats",
    "merge_snapshots",
    "as_snapshot",
    "lookup_outcomes",
    "count_spf",
    "count_dkim",
    "count_arc",
    "count_dmarc",
    "count_signatures",
    "count_message",
    "count_policy_action",
    "count_suppressed",
]

#: request duration buckets (seconds): ~10 µs lookups up to SPF checks and milter
#: messages that take seconds (spf.check_budget, dkim.budget: 10 s by default)
BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

#: counter name (without ``srsd_`` and ``_total``) -> (help, label names). Lookups are
#: kept as (map, outcome) and split into three metrics at scrape (:func:`_lookup_families`).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "spf_results": (
        "SPF results (RFC 7208 2.6) by identity checked and where: policy service, SPF-aware rewriting, milter",
        ("where", "identity", "result"),
    ),
    "dkim_results": ("DKIM signatures verified by the milter, by RFC 8601 result (none: unsigned)", ("result",)),
    "arc_results": ("ARC chains validated by the milter (RFC 8617 cv)", ("result",)),
    "dmarc_results": (
        "DMARC verdicts of the milter (RFC 9989) by result and what srsd did: accept, quarantine, "
        "reject, defer, or arc_override (a failure let through for a trusted ARC sealer)",
        ("result", "disposition"),
    ),
    "signatures": (
        "Signatures added by the milter: DKIM-Signature (type dkim) and ARC sets (type arc), by d= and a=",
        ("type", "domain", "algorithm"),
    ),
    "messages": ("Messages the milter handled, by class (local, forwarded, other) and outcome", ("class", "outcome")),
    "policy_actions": ("Policy service verdicts by action (dunno, prepend, reject, defer)", ("action",)),
    "request_errors": (
        "Requests srsd could not decide and answered with the endpoint's temporary failure "
        "(internal_error, timeout, too_large) or connections refused over limits.max_connections (overload)",
        ("endpoint", "kind"),
    ),
    "protocol_errors": ("Requests or streams that break the endpoint's protocol, by kind", ("endpoint", "kind")),
    "log_lines_suppressed": ("Info lines left out by the log rate limit, by kind of line", ("kind",)),
}

#: lookup outcomes that are not a "notfound" reason
FOUND_OUTCOME = "found"
TEMP_OUTCOME = "temp"
#: reverse not-found reasons for ordinary recipients (everything else refuses an SRS address)
REVERSE_ORDINARY = frozenset({"not_srs", "other_domain"})


class EndpointStats:
    """One endpoint's request durations (histogram over :data:`BUCKETS`) and error counts."""

    __slots__ = ("counts", "total", "errors", "protocol")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.errors: defaultdict[str, int] = defaultdict(int)
        self.protocol: defaultdict[str, int] = defaultdict(int)

    def since(self, started: float) -> None:
        """Count one request answered, *started* at ``time.perf_counter()``."""
        elapsed = perf_counter() - started
        self.counts[bisect_left(BUCKETS, elapsed)] += 1
        self.total += elapsed

    def since_later(self, result: Any, started: float) -> Any:
        """:meth:`since` as a Deferred callback: passes *result* on."""
        self.since(started)
        return result

    def error(self, kind: str) -> None:
        """Count a request answered with a temporary failure because srsd could not decide
        (or a connection refused: ``overload``)."""
        self.errors[kind] += 1

    def protocol_error(self, kind: str) -> None:
        """Count a request or stream that breaks the endpoint's protocol."""
        self.protocol[kind] += 1


class Tally:
    """This process's counts since it started (reactor thread only)."""

    def __init__(self) -> None:
        self.counters: dict[str, defaultdict[tuple[str, ...], int]] = {name: defaultdict(int) for name in COUNTERS}
        #: (map, outcome): outcome is "found", "temp" or a not-found reason
        self.lookups: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.endpoints: dict[str, EndpointStats] = {}

    def snapshot(self) -> dict[str, Any]:
        """Everything counted, as JSON-able data (what a worker reports)."""
        return {
            "counters": {name: [[*k, v] for k, v in c.items()] for name, c in self.counters.items() if c},
            "lookups": [[*k, v] for k, v in self.lookups.items()],
            "endpoints": {
                name: {"counts": s.counts, "sum": s.total, "errors": dict(s.errors), "protocol": dict(s.protocol)}
                for name, s in self.endpoints.items()
            },
        }


#: the counts of this process
TALLY = Tally()


def endpoint_stats(name: str) -> EndpointStats:
    """The :class:`EndpointStats` of endpoint *name* in this process (made on first use)."""
    stats = TALLY.endpoints.get(name)
    if stats is None:
        stats = TALLY.endpoints[name] = EndpointStats()
    return stats


def lookup_outcomes() -> defaultdict[tuple[str, str], int]:
    """The (map, outcome) counts the SRS maps add to (:mod:`srsd.lookup_outcomes`)."""
    return TALLY.lookups


# -- named counting helpers (not on the lookup hot path) -------------------------------------

_SPF = TALLY.counters["spf_results"]


def count_spf(where: str, results: Iterable[Any]) -> None:
    """Count SPF results (:class:`srsd.spf.SPFResult`, None = not checked) used by *where*."""
    for result in results:
        if result is not None:
            _SPF[where, result.identity, result.result] += 1


def count_dkim(signatures: Iterable[Any]) -> None:
    """Count the milter's DKIM verification results (``result`` of each; none when unsigned)."""
    counter = TALLY.counters["dkim_results"]
    n = 0
    for sig in signatures:
        counter[(sig.result,)] += 1
        n += 1
    if not n:
        counter[("none",)] += 1


def count_arc(cv: str) -> None:
    """Count one ARC chain validation result (none, pass, fail)."""
    TALLY.counters["arc_results"][(cv,)] += 1


def count_dmarc(result: str, decision: Any) -> None:
    """Count one DMARC verdict: *result* (pass, fail, none, temperror, permerror) and the
    :class:`srsd.dmarc.DMARCDecision` taken on it."""
    disposition = "arc_override" if decision.override else decision.disposition
    TALLY.counters["dmarc_results"][result, disposition] += 1


_TAG = {"DKIM-Signature": "dkim", "ARC-Seal": "arc"}
_KNOWN_ALGORITHMS = frozenset({"rsa-sha256", "ed25519-sha256"})


def count_signatures(added: Iterable[tuple[str, str]]) -> None:
    """Count the signatures in header fields srsd added: each DKIM-Signature and ARC-Seal,
    by its own ``d=`` (one of srsd's signing domains) and ``a=``."""
    counter = TALLY.counters["signatures"]
    for name, value in added:
        kind = _TAG.get(name)
        if kind is None:
            continue
        tags = _tags(value)
        algorithm = tags.get("a", "")
        counter[kind, tags.get("d", "").lower(), algorithm if algorithm in _KNOWN_ALGORITHMS else "other"] += 1


def _tags(value: str) -> dict[str, str]:
    out = {}
    for item in value.split(";"):
        name, sep, text = item.partition("=")
        if sep:
            out[name.strip()] = "".join(text.split())
    return out


def count_message(kind: str, outcome: str) -> None:
    """Count one message the milter handled: class local/forwarded/other, outcome."""
    TALLY.counters["messages"][kind, outcome] += 1


def count_policy_action(action: str) -> None:
    """Count one policy verdict by the first word of its access(5) action."""
    word = action.split(None, 1)[0].upper() if action else ""
    if word == "DUNNO":
        label = "dunno"
    elif word == "PREPEND":
        label = "prepend"
    elif word.startswith("DEFER") or word[:1] == "4":
        label = "defer"
    elif word == "REJECT" or word[:1] == "5":
        label = "reject"
    else:
        label = "other"
    TALLY.counters["policy_actions"][(label,)] += 1


def count_suppressed(kind: str, n: int) -> None:
    """Count *n* log lines of *kind* left out by the rate limit."""
    TALLY.counters["log_lines_suppressed"][(kind,)] += n


# -- exposition ------------------------------------------------------------------------------


def merge_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum :meth:`Tally.snapshot` results (this process's and the workers')."""
    counters: dict[str, defaultdict[tuple, int]] = defaultdict(lambda: defaultdict(int))
    lookups: defaultdict[tuple, int] = defaultdict(int)
    endpoints: dict[str, dict[str, Any]] = {}
    errors, protocol = counters["request_errors"], counters["protocol_errors"]
    for snap in snapshots:
        for name, rows in snap.get("counters", {}).items():
            for *labels, value in rows:
                counters[name][tuple(labels)] += value
        for *labels, value in snap.get("lookups", []):
            lookups[tuple(labels)] += value
        for name, s in snap.get("endpoints", {}).items():
            e = endpoints.setdefault(name, {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0})
            e["counts"] = [a + b for a, b in zip(e["counts"], s["counts"], strict=True)]
            e["sum"] += s["sum"]
            # The endpoints' error counts are exposed with the counters of the same name.
            for kind, n in s["errors"].items():
                errors[name, kind] += n
            for kind, n in s["protocol"].items():
                protocol[name, kind] += n
    return {"counters": counters, "lookups": lookups, "endpoints": endpoints}


def as_snapshot(merged: dict[str, Any]) -> dict[str, Any]:
    """:func:`merge_snapshots`'s result in :meth:`Tally.snapshot`'s form (to merge again)."""
    return {
        "counters": {name: [[*k, v] for k, v in c.items()] for name, c in merged["counters"].items() if c},
        "lookups": [[*k, v] for k, v in merged["lookups"].items()],
        "endpoints": {
            name: {"counts": e["counts"], "sum": e["sum"], "errors": {}, "protocol": {}}
            for name, e in merged["endpoints"].items()
        },
    }
