"""Apply bench/srsd_variant.py patches to every Python started with this
directory on PYTHONPATH and SRSD_BENCH_VARIANT set (srsd and its workers):
see bench/lookups.py --variants. Benchmark use only."""

import os
import sys

if os.environ.get("SRSD_BENCH_VARIANT"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import srsd_variant

    sys.path.pop(0)
    srsd_variant.apply(os.environ["SRSD_BENCH_VARIANT"].split("+"))
