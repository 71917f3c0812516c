#!/usr/bin/env python3
"""Instructions per lookup under valgrind (callgrind): a figure a loaded machine cannot blur.

    python bench/instruction_count.py [--checkout DIR] [--n 20000]

Runs bench/layers.py's setup (the same Daemon, config and key mix) twice under
``valgrind --tool=callgrind``: once answering N tcp_table requests per map through
``TcpTableProtocol.dataReceived`` over a StringTransport, once answering none; the
difference over N is what one lookup costs, setup and interpreter start cancelled out.
``--checkout DIR`` measures the srsd in DIR (e.g. a worktree of the commit before a change)
instead of this one; compare the two to see what a change adds per lookup.

Timing benchmarks (layers.py) on the shared 2-core machine vary 3x from run to run while
others' test suites run; instruction counts vary by well under 1 %.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent

_CHILD = r"""
import sys, tempfile
sys.path.insert(0, {bench!r})
import lookups
from twisted.internet.testing import StringTransport
from srsd.config import parse_config
from srsd.protocols.tcp_table import TcpTableFactory
from srsd.service import Daemon

n = int(sys.argv[1])
secret = b"bench-secret-0123456789"
with tempfile.NamedTemporaryFile("wb", suffix=".secrets") as fh:
    fh.write(secret + b"\n")
    fh.flush()
    cfg = parse_config({{
        "srs": {{"domain": lookups.SRS_DOMAIN, "secrets_file": fh.name, "local_domains": [lookups.LOCAL_DOMAIN]}},
        "listen": {{"socketmap": ""}},
        "log": {{"level": "warn"}},
    }})
daemon = Daemon(cfg)
forward, reverse = lookups.make_keys(secret, 2000)
for map_name, keys in (("forward", [k for k, _ in forward]), ("reverse", [k for k, _ in reverse])):
    factory = TcpTableFactory(daemon.lookup, "tcp_" + map_name, map_name)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    requests = [b"get " + k.encode() + b"\n" for k in keys]
    for request in requests:  # every key once in both runs: what is left is the steady state
        proto.dataReceived(request)
    transport.io.seek(0)
    transport.io.truncate()
    for i in range(n):
        proto.dataReceived(requests[i % len(requests)])
        if i % 64 == 0:
            transport.io.seek(0)
            transport.io.truncate()
"""


def instructions(checkout: Path, n: int) -> int:
    """Instructions (Ir) of the child with *n* lookups per map."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(_CHILD.format(bench=str(BENCH)))
        env = dict(os.environ, PYTHONPATH=str(checkout), PYTHONHASHSEED="0")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", sys.executable, str(script), str(n)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            check=True,
        )
    m = re.search(r"Collected : (\d+)", done.stderr)
    assert m, done.stderr[-2000:]
    return int(m.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkout", type=Path, default=BENCH.parent, help="the srsd checkout to measure")
    p.add_argument("--n", type=int, default=20000, help="lookups per map")
    args = p.parse_args()
    base = instructions(args.checkout, 0)
    total = instructions(args.checkout, args.n)
    per_lookup = (total - base) / (2 * args.n)
    print(f"{args.checkout}: {per_lookup:,.0f} instructions per tcp_table lookup (forward/reverse mix, n={args.n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
