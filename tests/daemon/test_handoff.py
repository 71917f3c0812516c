"""The parent hands each connection to the process serving the fewest (srsd.handoff):
every split is even, closes are counted, and a dead child loses no later connection.

Which process holds which connection is read from /proc (the sockets each pid has
open, matched to /proc/net/tcp and /proc/net/unix), the parent's own view from
``srsd_connections_handed`` on /metrics."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

from tests.metrics_scrape import scrape, value
from tests.srsd_daemon import srs0_pattern

DEADLINE = 15.0


def _inodes(pid: int) -> set[int]:
    """The socket inodes process *pid* holds."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _tcp_served(port: int) -> dict[int, int]:
    """{inode: client port} of the established server-side sockets of loopback TCP *port*."""
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == "01" and int(local.split(":")[1], 16) == port:
            out[inode] = int(remote.split(":")[1], 16)
    return out


def _unix_served(path: str) -> set[int]:
    """The inodes of the connected sockets bound to unix socket *path* (the server's
    accepted ones carry the listening socket's path)."""
    out = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path and fields[5] == "03":
            out.add(int(fields[6]))
    return out


def _holders(pids: list[int], served: set[int] | dict[int, int]) -> Counter:
    """{pid: how many of the *served* sockets it holds} (pids holding none left out)."""
    return Counter({pid: n for pid in pids if (n := len(_inodes(pid) & set(served)))})


def _children(daemon, what: str) -> dict[int, int]:
    """{index: pid} of the *what* ("worker", "lookup process", "policy process") children
    started so far (the last pid of each)."""
    return {int(i): int(pid) for i, pid in re.findall(rf"{what} (\d+) started \(pid (\d+)\)", daemon.log_text())}


def _wait(condition, what: str, daemon) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {DEADLINE} s\n{daemon.diagnostics()}"
        time.sleep(0.05)


def _open(daemon, name: str, n: int, start: int = 0) -> list:
    """*n* tcp_table clients of endpoint *name*, each answered once (so it is served)."""
    clients = []
    for i in range(start, start + n):
        client = daemon.tcp_table(name.removeprefix("tcp_"))
        status, text = client.lookup("forward", f"u{i}@remote.example")
        assert status == "found" and srs0_pattern(f"u{i}@remote.example").match(text), (status, text)
        clients.append(client)
    return clients


def test_lookup_connections_split_evenly_and_closes_count(srsd_factory, short_tmp):
    """Eight connections over two lookup processes: 4/4 (the kernel's hash gave 5/3,
    6/2 or 8/0). The four of one process closed, the next four all go to it."""
    daemon = srsd_factory(
        endpoints=("tcp_forward", "metrics"),
        listen={"socketmap": f"unix:{short_tmp}/sm.sock:mode=666"},
        sections={"daemon": {"lookup_processes": 2}},
    )
    lookups = list(_children(daemon, "lookup process").values())
    assert len(lookups) == 2, daemon.diagnostics()
    port = daemon.ports["tcp_forward"]
    clients = _open(daemon, "tcp_forward", 8)
    split = _holders(lookups, _tcp_served(port))
    assert sorted(split.values()) == [4, 4], split
    handed = scrape(daemon.ports["metrics"])
    assert [value(handed, "srsd_connections_handed", endpoint="tcp_forward", process=f"lookup process {i}")
            for i in (1, 2)] == [4, 4], handed  # fmt: skip

    # Close the four the first process serves; the parent must hear of it before dealing more.
    first = lookups[0]
    theirs = {remote for inode, remote in _tcp_served(port).items() if inode in _inodes(first)}
    for client in [c for c in clients if c.sock.getsockname()[1] in theirs]:
        client.close()
    _wait(
        lambda: value(scrape(daemon.ports["metrics"]), "srsd_connections_handed", endpoint="tcp_forward",
                      process="lookup process 1") == 0,
        "the parent counts the first lookup process's connections closed", daemon,
    )  # fmt: skip
    clients += _open(daemon, "tcp_forward", 4, start=8)
    split = _holders(lookups, _tcp_served(port))
    assert split == Counter({first: 4, lookups[1]: 4}), split

    # A unix endpoint is dealt alike (a shared accept queue let one process take a burst).
    socketmaps = [daemon.socketmap() for _ in range(6)]
    for i, client in enumerate(socketmaps):
        assert client.lookup("forward", f"s{i}@remote.example")[0] == "found"
    split = _holders(lookups, _unix_served(f"{short_tmp}/sm.sock"))
    assert sorted(split.values()) == [3, 3], split
    for client in clients + socketmaps:
        client.close()
    assert daemon.stop() == 0


def _policy_served(daemon, sockets) -> None:
    for sock in sockets:  # each is served: a request without a sender is answered DUNNO
        sock.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n\n")
    for sock in sockets:
        assert sock.recv(4096).startswith(b"action="), daemon.diagnostics()
        sock.close()


def test_policy_connections_split_over_workers_and_the_parent(srsd_factory):
    """``--workers 2`` serving policy (``policy_processes = 0``): the parent serves policy
    connections too and deals them with its worker, two each of four."""
    daemon = srsd_factory(
        workers=2, endpoints=("tcp_forward",), listen={"policy": None}, sections={"daemon": {"policy_processes": 0}}
    )
    workers = list(_children(daemon, "worker").values())
    assert len(workers) == 1, daemon.diagnostics()
    sockets = [daemon.connect("policy") for _ in range(4)]
    port = daemon.ports["policy"]
    pids = [daemon.pid, *workers]
    _wait(lambda: sorted(_holders(pids, _tcp_served(port)).values()) == [2, 2], "a 2/2 split", daemon)
    _policy_served(daemon, sockets)
    assert daemon.stop() == 0


def test_policy_connections_split_over_the_policy_processes(srsd_factory):
    """The default: two policy processes of their own take the policy connections, three
    each of six, and the parent and lookup processes none."""
    daemon = srsd_factory(endpoints=("tcp_forward",), listen={"policy": None})
    policy = list(_children(daemon, "policy process").values())
    others = [daemon.pid, *_children(daemon, "lookup process").values()]
    assert len(policy) == 2, daemon.diagnostics()
    sockets = [daemon.connect("policy") for _ in range(6)]
    port = daemon.ports["policy"]
    _wait(lambda: sorted(_holders(policy, _tcp_served(port)).values()) == [3, 3], "a 3/3 split", daemon)
    assert not _holders(others, _tcp_served(port)), "a policy connection outside the policy processes"
    _policy_served(daemon, sockets)
    assert daemon.stop() == 0


def _gone(pid: int) -> bool:
    """Whether *pid* has exited (a zombie not yet reaped holds no socket)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_killed_lookup_process_loses_no_later_connection(srsd_factory):
    """SIGKILL one of two lookup processes: its clients lose their connections (as with
    any crash), but every connection once it is gone is answered, by the other process
    until the restarted one serves, then by both."""
    daemon = srsd_factory(endpoints=("tcp_forward",), sections={"daemon": {"lookup_processes": 2}})
    killed = _children(daemon, "lookup process")[1]
    clients = _open(daemon, "tcp_forward", 4)
    os.kill(killed, signal.SIGKILL)
    _wait(lambda: _gone(killed), "the killed lookup process gone", daemon)
    tried = 0
    deadline = time.monotonic() + DEADLINE
    while "lookup process 1 serving again" not in daemon.log_text():  # restarted after 1 s
        assert time.monotonic() < deadline, daemon.diagnostics()
        for client in _open(daemon, "tcp_forward", 1, start=100 + tried):  # answered, or the test fails
            client.close()
        tried += 1
    assert tried > 0, "no connection was tried while the lookup process was down"
    for client in clients:
        client.close()
    restarted = _children(daemon, "lookup process")[1]
    more = _open(daemon, "tcp_forward", 6, start=1000)
    _wait(lambda: restarted in _holders([restarted], _tcp_served(daemon.ports["tcp_forward"])),
          "the restarted lookup process given connections", daemon)  # fmt: skip
    for client in more:
        client.close()
    assert daemon.stop() == 0
