"""A SIGHUP while a child process is still starting (a `systemctl reload` right after
`start`) must not kill it: workers and lookup processes start with SIGHUP blocked until
their handler is set."""

import signal

import pytest


@pytest.mark.parametrize("child", ["worker", "lookup process"])
def test_sighup_during_child_start_kills_no_child(srsd_factory, child):
    if child == "worker":
        daemon = srsd_factory(workers=3, sections={"daemon": {"lookup_processes": 0}})
    else:
        daemon = srsd_factory(sections={"daemon": {"lookup_processes": 3}})
    assert daemon.wait_for_log(f"{child} 2 started")
    daemon.signal(signal.SIGHUP)  # relayed to children still importing srsd
    assert daemon.wait_for_log(" reloaded ")
    daemon.reload()  # and once more when they all run
    assert "ended" not in daemon.log_text(), daemon.diagnostics()
    status, _ = daemon.lookup("tcp_table", "forward", "alice@orig.example")
    assert status == "found"
    assert daemon.stop() == 0
