"""The collector's settings for a serving process: the start-up heap frozen, young
collections rarer.

CPython collects generation 0 every 700 net container allocations. A cold SPF policy
request left ~90 of them (Deferreds, greenlets, pyspf's objects, DNS readings; stop 21), so the
collector ran every ~8 requests, and each of its full passes walked everything start-up
left behind (Twisted, dnspython, the configuration: ~100,000 objects). Measured in
process on the cold SPF mix (``bench/spf_layers.py``, gc callbacks timing each
collection): 56-105 µs of collector time a request before, 10-22 µs after
(docs/performance.md).

Nothing is kept longer than it would be: a request's objects are freed by their
reference counts as before; only cycles (a Failure's traceback, a Deferred chain) wait
for a collection, now at most ~10,000 allocations away.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap", "YOUNG_THRESHOLD"]

#: allocations between generation-0 collections (CPython's default: 700)
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Freeze what start-up allocated (``gc.freeze``: never scanned again, never freed)
    and raise the generation-0 threshold to :data:`YOUNG_THRESHOLD`; the older
    generations keep CPython's ratios. Call once, when the process is about to serve."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
