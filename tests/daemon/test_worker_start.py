"""A SIGHUP while a worker process is still starting (a `systemctl reload` right after
`start`) must not kill it: workers start with SIGHUP blocked until their handler is set."""

import signal


def test_sighup_during_worker_start_kills_no_worker(srsd_factory):
    daemon = srsd_factory(workers=3)
    assert daemon.wait_for_log("worker 2 started")
    daemon.signal(signal.SIGHUP)  # relayed to workers still importing srsd
    assert daemon.wait_for_log(" reloaded ")
    daemon.reload()  # and once more when they all run
    assert "ended" not in daemon.log_text(), daemon.diagnostics()
    status, _ = daemon.lookup("tcp_table", "forward", "alice@orig.example")
    assert status == "found"
    assert daemon.stop() == 0
