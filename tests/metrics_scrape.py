"""Scraping srsd's ``/metrics`` in tests: one GET, parsed with prometheus-client's own
parser (an independent reader of the exposition format srsd writes)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def scrape(port: int, path: str = "/metrics", accept: str | None = None, timeout: float = 10.0) -> Samples:
    """Every sample at ``http://127.0.0.1:PORT/metrics``: {(name, frozenset(labels)): value}."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        text = reply.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a counter never incremented has no sample)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of *name* over every sample whose labels include *labels*."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def wait_for_samples(port: int, expected: dict[tuple[str, frozenset], float], timeout: float = 20.0) -> Samples:
    """Scrape until every sample in *expected* has its value (workers report once a
    second), or the deadline passes; the last scrape either way."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if all(samples.get(key, 0.0) == want for key, want in expected.items()) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


class Scraper(threading.Thread):
    """Scrapes every *interval* seconds while traffic flows; :attr:`problems` lists
    failed scrapes and any counter that went down between two scrapes."""

    def __init__(self, port: int, interval: float = 0.05, watch: Callable[[Samples], float] | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.watch = watch or (lambda s: total(s, "srsd_lookups_total"))
        self.scrapes = 0
        self.problems: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        last = 0.0
        while not self._halt.is_set():
            try:
                now = self.watch(scrape(self.port))
            except (OSError, urllib.error.URLError, ValueError) as exc:
                self.problems.append(f"scrape failed: {exc!r}")
            else:
                self.scrapes += 1
                if now < last:
                    self.problems.append(f"lookups went down: {last} -> {now}")
                last = now
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
