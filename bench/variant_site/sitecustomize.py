"""Apply bench/srsd_variant.py patches to every Python started with this
directory on PYTHONPATH and SRSD_BENCH_VARIANT set (srsd and its workers):
see bench/lookups.py --variants. Benchmark use only."""

import importlib.util
import os

if os.environ.get("SRSD_BENCH_VARIANT"):
    # Loaded by file: bench/ itself stays off sys.path (other scripts there shadow packages).
    _path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "srsd_variant.py")
    _spec = importlib.util.spec_from_file_location("srsd_variant", _path)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    _module.apply(os.environ["SRSD_BENCH_VARIANT"].split("+"))
