"""A SIGHUP while a child process is still starting (a `systemctl reload` right after
`start`) must not kill it: workers and lookup processes start with SIGHUP blocked until
their handler is set."""

import re
import signal
import socket
import time

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


def _gone(pid: int) -> bool:
    """Whether *pid* has exited (a zombie no one reaps yet counts: it serves nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("policy_processes", [0, 2])
def test_children_stop_with_a_killed_parent(srsd_factory, policy_processes):
    """A SIGKILLed parent leaves no child serving its sockets: orphans would go on
    answering their clients unsupervised, with a configuration no one reloads. Every
    kind: a worker serving policy, or policy processes, beside two lookup processes."""
    daemon = srsd_factory(
        workers=2,
        listen={"policy": None},
        sections={"daemon": {"lookup_processes": 2, "policy_processes": policy_processes}},
    )
    text = daemon.log_text()
    kinds = r"(?:worker|lookup process|policy process)"
    children = [int(pid) for pid in re.findall(rf"{kinds} \d+ started \(pid (\d+)\)", text)]
    # workers=2 is one worker only where it has an endpoint to serve (policy_processes = 0)
    assert len(children) == 2 + (policy_processes or 1), daemon.diagnostics()
    daemon.kill()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in children):
        assert time.monotonic() < deadline, f"children still running 10 s after the parent died: {children}"
        time.sleep(0.05)
    for port in daemon.ports.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_default_process_count_follows_the_policy_endpoint(srsd_factory):
    """Without --workers: one Twisted process per CPU (at most 4) when they serve the
    policy endpoint (`policy_processes = 0`); `[daemon] workers` says otherwise; else one,
    beside the policy processes."""
    from srsd.workers import default_workers

    cases = [
        (("policy",), {}, 1 + 2),  # the parent and the 2 policy processes ([daemon] policy_processes)
        (("policy",), {"daemon": {"policy_processes": 0}}, default_workers(True)),
        (("policy",), {"daemon": {"workers": 1, "policy_processes": 0}}, 1),
        (("milter",), {}, 1),
    ]
    for endpoints, sections, processes in cases:
        daemon = srsd_factory(workers=None, endpoints=endpoints, sections=sections)
        ready = f"srsd ready: 1 endpoint(s), {processes} process(es)"
        assert daemon.wait_for_log(ready, timeout=60), daemon.diagnostics()
        assert daemon.stop() == 0
