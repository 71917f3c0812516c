"""The ``[listen] metrics`` endpoint: ``GET /metrics`` in Prometheus's exposition format.

prometheus-client renders the text (or OpenMetrics, by the scraper's ``Accept``
header: :func:`prometheus_client.exposition.choose_encoder`) from a registry holding one
:class:`~srsd.metrics.TallyCollector`. Rendered on the reactor thread, where the counts
change (a few hundred series: about a millisecond); prometheus-client's own Twisted
resource renders on a thread pool, which would read the counts while they change.
Only the parent process listens; it adds the workers' reported counts
(:mod:`srsd.metrics_workers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from twisted.web.resource import Resource
from twisted.web.server import Site

from srsd.metrics import TallyCollector

__all__ = ["MetricsPage", "metrics_registry", "metrics_site", "PATH"]

PATH = b"/metrics"


def metrics_registry(others: Callable[[], Iterable[dict[str, Any]]] = tuple) -> CollectorRegistry:
    """A registry with this process's counts and *others* (further snapshots)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TallyCollector(others))
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
