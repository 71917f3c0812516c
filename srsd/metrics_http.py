"""The ``[listen] metrics`` endpoint: ``GET /metrics`` in Prometheus's exposition format.

prometheus-client renders the text (or OpenMetrics, by the scraper's ``Accept``
header: :func:`prometheus_client.exposition.choose_encoder`) from a registry holding one
:class:`TallyCollector` over :mod:`srsd.metrics`' counts. Rendered on the reactor thread,
where the counts change (a few hundred series: about a millisecond); prometheus-client's own Twisted
resource renders on a thread pool, which would read the counts while they change.
Only the parent process listens; it adds the workers' reported counts
(:mod:`srsd.metrics_workers`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web.resource import Resource
from twisted.web.server import Site

from srsd import metrics
from srsd.metrics import BUCKETS, COUNTERS, FOUND_OUTCOME, REVERSE_ORDINARY, TEMP_OUTCOME, merge_snapshots

__all__ = ["HandedCollector", "MetricsPage", "TallyCollector", "families", "metrics_registry", "metrics_site", "PATH"]

PATH = b"/metrics"


def _lookup_families(lookups: dict[tuple, int]) -> Iterator[CounterMetricFamily]:
    total = CounterMetricFamily(
        "srsd_lookups", "Lookups answered by the SRS maps (found, notfound, temp)", labels=("map", "result")
    )
    forward = CounterMetricFamily(
        "srsd_forward_unchanged",
        "Forward lookups answered not found (the sender left alone), by reason",
        labels=("reason",),
    )
    reverse = CounterMetricFamily(
        "srsd_reverse_unchanged",
        "Reverse lookups of ordinary recipients answered not found (not_srs, other_domain)",
        labels=("reason",),
    )
    refusals = CounterMetricFamily(
        "srsd_srs_refusals", "SRS addresses at the SRS domain refused on reverse, by reason", labels=("reason",)
    )
    results: defaultdict[tuple[str, str], int] = defaultdict(int)
    for (map_name, outcome), n in sorted(lookups.items()):
        result = outcome if outcome in (FOUND_OUTCOME, TEMP_OUTCOME) else "notfound"
        results[map_name, result] += n
        if result != "notfound":
            continue
        if map_name == "forward":
            forward.add_metric((outcome,), n)
        elif outcome in REVERSE_ORDINARY:
            reverse.add_metric((outcome,), n)
        else:
            refusals.add_metric((outcome,), n)
    for labels, n in sorted(results.items()):
        total.add_metric(labels, n)
    yield from (total, forward, reverse, refusals)


def families(merged: dict[str, Any]) -> Iterator[Any]:
    """Prometheus metric families for merged counts (:func:`merge_snapshots`)."""
    yield from _lookup_families(merged["lookups"])
    for name, (help_text, labels) in COUNTERS.items():
        family = CounterMetricFamily("srsd_" + name, help_text, labels=labels)
        for key, n in sorted(merged["counters"].get(name, {}).items()):
            family.add_metric(key, n)
        yield family
    durations = HistogramMetricFamily(
        "srsd_request_duration_seconds",
        "Time from a parsed request (a lookup, a policy request, a milter end-of-message) to its answer",
        labels=("endpoint",),
    )
    for name, e in sorted(merged["endpoints"].items()):
        buckets, acc = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), e["counts"], strict=True):
            acc += n
            buckets.append((_bound(bound), acc))
        durations.add_metric((name,), buckets, e["sum"])
    yield durations


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class TallyCollector(Collector):
    """A prometheus-client collector over this process's :data:`TALLY` and *others*
    (a callable returning further snapshots: the workers', :mod:`srsd.metrics_workers`)."""

    def __init__(self, others: Callable[[], Iterable[dict[str, Any]]] = tuple) -> None:
        self.others = others

    def collect(self) -> Iterator[Any]:
        yield from families(merge_snapshots([metrics.TALLY.snapshot(), *self.others()]))


class HandedCollector(Collector):
    """The connections the parent has handed to each process and that are still open
    (*counts*: :meth:`srsd.handoff.Dealer.counts`): whether the split is even."""

    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "srsd_connections_handed",
            "Open connections the parent handed to a process (parent, worker N, lookup or policy process N)",
            labels=("endpoint", "process"),
        )
        for labels, n in sorted(self.counts().items()):
            family.add_metric(labels, n)
        yield family


def metrics_registry(
    others: Callable[[], Iterable[dict[str, Any]]] = tuple,
    handed: Callable[[], dict[tuple[str, str], int]] = dict,
) -> CollectorRegistry:
    """A registry with this process's counts, *others* (further snapshots) and the
    connections *handed* to each process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TallyCollector(others))
    registry.register(HandedCollector(handed))
    return registry


class MetricsPage(Resource):
    """``GET /metrics``; anything else is 404."""

    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 (Twisted's name)
        if request.path != PATH:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"srsd serves /metrics only\n"
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        request.setHeader(b"Content-Type", content_type.encode())
        return body


class _QuietSite(Site):
    """No access log line per scrape."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(registry: CollectorRegistry, timeout: float = 30.0) -> Site:
    """The HTTP factory for the metrics endpoint; idle clients are closed after *timeout* s."""
    return _QuietSite(MetricsPage(registry), timeout=timeout)
