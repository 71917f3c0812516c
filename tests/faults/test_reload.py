"""A reload (SIGHUP) reads its files off the reactor thread: lookups go on meanwhile.

The reload is held for as long as the test likes by making the new secrets file a
FIFO: reading it blocks until the test writes to it. (A secrets file on a hung NFS
mount, or the ~0.13 s of RSA checks of each DKIM key load, are the same on a smaller
scale: with the reading on the reactor, every endpoint waited for it.)
"""

from __future__ import annotations

import os
import signal

from srsd.srs import SRS
from tests.srsd_daemon import RELOADED_MARKER, SRS_DOMAIN, SrsdDaemon, serving

SENDER = "during-reload@remote.example"


def test_lookups_are_answered_while_a_reload_reads_its_files(tmp_path):
    # One process reads the FIFO once: its lookup processes would wait for a second writer.
    daemon = SrsdDaemon(tmp_path, secrets_lines=["first-secret"], sections={"daemon": {"lookup_processes": 0}})
    with serving(daemon):
        fifo = tmp_path / "secrets.fifo"
        os.mkfifo(fifo, 0o600)
        daemon.secrets_path = fifo
        daemon.write_config()
        daemon.signal(signal.SIGHUP)  # srsd now waits for the FIFO's writer
        try:
            answers = [daemon.lookup(protocol, "forward", SENDER) for protocol in ("tcp_table", "socketmap")]
        finally:
            with open(fifo, "w") as writer:  # let the reload finish, whatever happened
                writer.write("second-secret\n")
        assert answers == [("found", SRS(["first-secret"], SRS_DOMAIN).forward(SENDER))] * 2, answers
        assert daemon.wait_for_log(RELOADED_MARKER), daemon.diagnostics()
        assert daemon.lookup("tcp_table", "forward", SENDER) == (
            "found",
            SRS(["second-secret"], SRS_DOMAIN).forward(SENDER),
        )
