"""A lookup process loads no milter code: dkimpy, cryptography and the DMARC walk are
imported only where the milter is served (docs/performance.md: ~10 MB of RSS a lookup
process)."""

import subprocess
import sys

MILTER_ONLY = ("dkim", "cryptography", "srsd.mailauth.handler", "srsd.dmarc", "srsd.protocols.milter")


def _loaded_after(setup: str) -> set[str]:
    """Which of MILTER_ONLY a fresh interpreter holds after running *setup*."""
    probe = f"import sys\n{setup}\nprint(','.join(m for m in {MILTER_ONLY!r} if m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(filter(None, done.stdout.strip().split(",")))


def test_lookup_process_modules_leave_the_milter_out():
    loaded = _loaded_after(
        "import srsd.service, srsd.lookup_loop\n"
        "from srsd.service import Daemon, load\n"
        "Daemon(load(None), serves=frozenset({'tcp_forward', 'tcp_reverse', 'socketmap'}))"
    )
    assert loaded == set(), f"loaded by a lookup process: {loaded}"


def test_the_milter_still_gets_its_modules():
    loaded = _loaded_after(
        "import dataclasses\n"
        "from srsd.service import Daemon, endpoint_specs, load\n"
        "config = load(None)\n"
        "config = dataclasses.replace(config, listen=dataclasses.replace(config.listen, milter='tcp:0'))\n"
        "d = Daemon(config, serves=frozenset({'milter'}))\n"
        "[spec.make_factory(d) for spec, _ in endpoint_specs(config) if spec.name == 'milter']"
    )
    assert loaded == set(MILTER_ONLY), f"not loaded where the milter is served: {set(MILTER_ONLY) - loaded}"
