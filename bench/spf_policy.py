#!/usr/bin/env python3
"""SPF policy checks per second: srsd's policy service against policyd-spf, on this machine.

    python bench/spf_policy.py [--requests 3000] [--connections 1,8] [--mixes warm,cold]
                               [--rounds 3] [--warmup 3000] [--srsd-threads 8] [--srsd-processes 0]
                               [--dns nsd|python] [--busy N] [--json FILE]

Both sides answer Postfix's policy delegation protocol (access(5) ``action=`` replies)
for the same requests, in the same order, against one loopback DNS server: NSD
(bench/nsd_server.py, the default) or tests/dnsserver.py (``--dns python``: ~0.25 ms of
CPU a query in dnspython, the cold mix's bottleneck for both sides, see docs/performance.md):

* **policyd-spf**: Debian's postfix-policyd-spf-python 3.0 with its shipped defaults
  (HELO_reject = Fail, Mail_From_reject = Fail), run as Postfix's spawn(8) runs it: one
  process per connection, the connection on its stdin/stdout. Its resolver (pyspf's pydns
  backend) is pointed at the loopback server by a three-line wrapper.
* **srsd**: ``srsd serve`` with only ``[listen] policy``, ``[policy] helo_reject =
  mail_from_reject = "fail"`` (the same two checks a request), ``[dns] nameservers`` the
  loopback server, and its default process count (``[daemon] policy_processes``: 2 policy
  processes) unless ``--srsd-processes N`` says (``--srsd-workers`` until stop 26, when
  the policy endpoint was served by the Twisted ``--workers``).

The mix of each run, as issue 11: 75 % pass, 10 % softfail, 5 % none, 5 % fail, 5 %
permerror (HELO names pass). **warm**: 20 sender domains and 20 HELO names used over and
over (random local parts), after ``--warmup`` untimed requests of that mix to each side
(over 16 connections, so that each of srsd's processes fills its caches);
**cold**: every request a sender domain and a HELO name never
asked before (each run its own names, so neither side finds the other's answers in any
cache). Each connection sends one request at a time, as Postfix's smtpd does.

Every round runs each side once (the order alternates between rounds) and prints srsd's
ratio to policyd-spf for that round; CPU per check is the daemon processes' user+system
time (policyd-spf: every spawned process, from wait4), per request (two identities
checked). Every reply is checked: ``550`` for a fail, else a Received-SPF field with the
expected result (an overload's temperror is a bad reply, not a fast one). ``--busy N``
runs N processes spinning on the cores meanwhile (bench/busy.py): a busy machine on demand.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # srsd's test harness from this checkout

import nsd_server  # noqa: E402
from busy import Busy  # noqa: E402

from tests.dnsserver import DNSServer  # noqa: E402
from tests.srsd_daemon import SrsdDaemon  # noqa: E402

POLICYD_SPF = "/usr/bin/policyd-spf"
TICK = os.sysconf("SC_CLK_TCK")
CLIENT_NET = "192.0.2"
#: the warm mix's untimed requests go over this many connections (see main)
WARMUP_CONNECTIONS = 16
#: result -> share of the mix
MIX = {"pass": 75, "softfail": 10, "none": 5, "fail": 5, "permerror": 5}

# policyd-spf resolves through pyspf's pydns backend (Debian's python3-dns): its defaults
# name the server; point them at the loopback one.
_WRAPPER = """
import sys, spf, DNS
DNS.defaults["server"], DNS.defaults["port"] = ["127.0.0.1"], int(sys.argv.pop(1))
from spf_engine.policyd_spf import main
main()
"""


# -- the zone and the requests ------------------------------------------------------------


def sender_records(domain: str, result: str, zone: dict) -> None:
    """Records under *domain* giving *result* for a client in CLIENT_NET (a realistic
    shape: an include for pass, as most senders publish)."""
    if result == "pass":
        zone[domain] = [{"TXT": f"v=spf1 include:_spf.{domain} -all"}, {"A": "198.51.100.1"}]
        zone[f"_spf.{domain}"] = [{"TXT": f"v=spf1 ip4:{CLIENT_NET}.0/24 ip4:198.51.100.0/24 -all"}]
    elif result == "softfail":
        zone[domain] = [{"TXT": "v=spf1 ip4:198.51.100.0/24 ~all"}]
    elif result == "none":
        zone[domain] = [{"A": "198.51.100.1"}]
    elif result == "fail":
        zone[domain] = [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}]
    else:  # permerror: an unknown mechanism
        zone[domain] = [{"TXT": "v=spf1 ip4:198.51.100.0/24 frobnicate -all"}]


def helo_records(name: str, ip: str, zone: dict) -> None:
    zone[name] = [{"TXT": "v=spf1 a -all"}, {"A": ip}]


def results_of_mix(n: int, rng: random.Random) -> list[str]:
    pool = [r for r, share in MIX.items() for _ in range(share)]
    return [rng.choice(pool) for _ in range(n)]


@dataclass
class Request:
    text: bytes
    result: str  # the MAIL FROM result it must get


def make_requests(mix: str, n: int, tag: str, zone: dict, rng: random.Random) -> list[Request]:
    """*n* requests of *mix*, their names added to *zone* (*tag* makes cold names unique)."""
    results = results_of_mix(n, rng)
    out = []
    if mix == "warm":
        domains = {r: [f"{r}{i}.warm.example" for i in range(20 * MIX[r] // 100 or 1)] for r in MIX}
        for r, names in domains.items():
            for d in names:
                sender_records(d, r, zone)
        helos = [(f"mx{i}.helo-warm.example", f"{CLIENT_NET}.{10 + i}") for i in range(20)]
        for name, ip in helos:
            helo_records(name, ip, zone)
    for i, result in enumerate(results):
        if mix == "warm":
            domain = rng.choice(domains[result])
            helo, ip = rng.choice(helos)
        else:
            domain = f"d{i}.{tag}.{result}.cold.example"
            sender_records(domain, result, zone)
            helo, ip = f"mx{i}.{tag}.helo-cold.example", f"{CLIENT_NET}.{10 + i % 200}"
            helo_records(helo, ip, zone)
        sender = f"u{rng.randrange(10**6)}@{domain}"
        text = (
            "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            f"helo_name={helo}\nqueue_id=\nsender={sender}\nrecipient=rcpt@local.example\n"
            f"client_address={ip}\nclient_name=unknown\nreverse_client_name=unknown\n"
            f"instance={tag}.{i}\n\n"
        )
        out.append(Request(text.encode(), result))
    return out


def reply_ok(reply: str, result: str) -> bool:
    """A fail is refused (550); every other result comes back in a Received-SPF field
    naming it (so an overload's temperror, say, counts as a bad reply)."""
    action = reply.partition("=")[2]
    if result == "fail":
        return action.startswith("550")
    action = action.lower()
    if result == "none" and action.startswith("prepend received-spf: pass") and "identity=helo" in action:
        return True  # policyd-spf records the HELO identity's pass when MAIL FROM has no record
    return action.startswith(f"prepend received-spf: {result}")


# -- the two sides -------------------------------------------------------------------------


class PolicydSpf:
    """policyd-spf behind a spawn(8)-like listener: a process per connection."""

    name = "policyd-spf"

    def __init__(self, dns_port: int) -> None:
        self.dns_port = dns_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.children: list[subprocess.Popen] = []
        self.cpu = 0.0  # seconds, of the children that exited
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            child = subprocess.Popen(
                ["/usr/bin/python3", "-c", _WRAPPER, str(self.dns_port), POLICYD_SPF],
                stdin=conn.fileno(),
                stdout=conn.fileno(),
                stderr=subprocess.DEVNULL,
            )
            conn.close()
            with self._lock:
                self.children.append(child)

    def pids(self) -> list[int]:
        return []

    def reap(self) -> None:
        """Wait for every child (their connections closed) and add up its CPU time."""
        with self._lock:
            children, self.children = self.children, []
        for child in children:
            _, _, usage = os.wait4(child.pid, 0)
            child.returncode = 0
            self.cpu += usage.ru_utime + usage.ru_stime

    def stop(self) -> None:
        self.sock.close()
        self.reap()


class Srsd:
    name = "srsd"

    def __init__(self, workdir: Path, dns_port: int, threads: int, processes: int = 0) -> None:
        self.daemon = SrsdDaemon(
            workdir,
            workers=None,  # srsd's own default
            endpoints=("policy",),
            sections={
                **({"daemon": {"policy_processes": processes}} if processes else {}),  # 0: srsd's default
                "dns": {"nameservers": [f"127.0.0.1:{dns_port}"]},
                "spf": {"threads": threads},
                "policy": {"helo_reject": "fail", "mail_from_reject": "fail"},
            },
        ).start()
        self.port = self.daemon.ports["policy"]
        self.cpu = 0.0

    def pids(self) -> list[int]:
        """The daemon and its child processes (the policy processes)."""
        return with_children(self.daemon.pid)

    def reap(self) -> None:
        pass

    def stop(self) -> None:
        self.daemon.stop()


def with_children(pid: int) -> list[int]:
    """*pid* and its descendants (srsd's workers; NSD's main and server processes)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(p for child in children for p in with_children(int(child)))]


def process_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


class DNSServerProcess:
    """tests/dnsserver.py's server in a process of its own (forked with the whole zone):
    in the generator's process its threads would share one GIL with the connections'
    and slow both sides alike, squeezing every ratio towards 1."""

    def __init__(self, zone: dict, ttl: int) -> None:
        self.zone, self.ttl = zone, ttl

    def __enter__(self) -> DNSServerProcess:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        ours, theirs = ctx.Pipe()
        self.process = ctx.Process(target=self._serve, args=(theirs,), daemon=True)
        self.process.start()
        self.port = ours.recv()
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def _serve(self, pipe) -> None:
        server = DNSServer(self.zone, ttl=self.ttl).start()
        pipe.send(server.port)
        pipe.recv()  # until the parent closes its end (or dies)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(10)


def run_connection(port: int, requests: list[Request], bad: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")
        for req in requests:
            sock.sendall(req.text)
            reply = b""
            while True:
                line = reader.readline()
                if not line:
                    bad.append("connection closed")
                    return
                if line == b"\n":
                    break
                reply += line
            text = reply.decode("utf-8", "replace").strip()
            if not reply_ok(text, req.result):
                bad.append(f"{req.result}: {text[:120]}")


@dataclass
class Result:
    side: str
    mix: str
    connections: int
    round: int
    checks: int
    seconds: float
    rate: float
    cpu_ms: float
    bad: int
    generator_ms: float = 0.0  # this script's CPU a request meanwhile (it shares the cores)


def run_one(side, mix: str, conns: int, number: int, requests: list[Request]) -> Result:
    bad: list[str] = []
    shares = [requests[i::conns] for i in range(conns)]
    before = process_cpu(side.pids()) + side.cpu
    generator_before = time.process_time()
    threads = [threading.Thread(target=run_connection, args=(side.port, s, bad)) for s in shares]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    generator = time.process_time() - generator_before
    side.reap()
    cpu = process_cpu(side.pids()) + side.cpu - before
    if bad:
        print(f"  {side.name}: {len(bad)} bad replies, e.g. {bad[:3]}", file=sys.stderr)
    return Result(side.name, mix, conns, number, len(requests), elapsed, len(requests) / elapsed,
                  1000 * cpu / len(requests), len(bad), 1000 * generator / len(requests))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="policy requests per run")
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--mixes", default="warm,cold")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3000, help="untimed warm-mix requests to each side first")
    parser.add_argument("--srsd-threads", type=int, default=8, help="[spf] threads (checks at once)")
    parser.add_argument("--srsd-processes", type=int, default=0,
                        help="[daemon] policy_processes (0: srsd's default, 2)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dns", choices=("nsd", "python"), default="nsd",
                        help="the loopback DNS server: NSD, or tests/dnsserver.py (dnspython)")  # fmt: skip
    parser.add_argument("--busy", type=int, default=0,
                        help="processes spinning on the cores while the bench runs (bench/busy.py)")  # fmt: skip
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    conns_list = [int(c) for c in args.connections.split(",")]
    mixes = args.mixes.split(",")

    zone: dict = {}
    plans = {}  # (mix, conns, round, side) -> requests
    for mix in mixes:
        for conns in conns_list:
            for number in range(1, args.rounds + 1):
                shared = make_requests(mix, args.requests, f"r{conns}x{number}", zone, rng) if mix == "warm" else None
                for side in ("policyd-spf", "srsd"):
                    tag = f"{side[0]}{conns}x{number}"
                    plans[mix, conns, number, side] = shared or make_requests(mix, args.requests, tag, zone, rng)

    # Each warm-up its own messages (a repeated instance is answered DUNNO from the message
    # memory, checking nothing), over WARMUP_CONNECTIONS connections: every srsd process
    # (each policy process) gets some and fills its own caches.
    warmups = {c: make_requests("warm", args.warmup, f"warmup{c}", zone, rng) for c in conns_list}
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="srsd-bench-spf-") as tmp,
        (
            nsd_server.NSDServer(zone, 3600, Path(tmp) / "nsd")
            if args.dns == "nsd"
            else DNSServerProcess(zone, ttl=3600)
        ) as dns,
        Busy(args.busy),
    ):
        srsd = Srsd(Path(tmp), dns.port, args.srsd_threads, args.srsd_processes)
        sides = {"policyd-spf": PolicydSpf(dns.port), "srsd": srsd}
        try:
            generator_cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
            print(f"load average {os.getloadavg()[0]:.1f}; {args.busy} busy processes; {args.requests} requests "
                  f"a run; CPU {generator_cpu:.0f} s so far in the generator")  # fmt: skip
            for mix in mixes:
                for conns in conns_list:
                    for number in range(1, args.rounds + 1):
                        if mix == "warm" and number == 1:
                            # "warm": every cache filled first (the same names, not timed)
                            for name in sides:
                                run_one(sides[name], mix, WARMUP_CONNECTIONS, 0, warmups[conns])
                        order = ["policyd-spf", "srsd"] if number % 2 else ["srsd", "policyd-spf"]
                        pair, dns_ms = {}, {}
                        for name in order:
                            dns_before = process_cpu(with_children(dns.pid))
                            pair[name] = run_one(sides[name], mix, conns, number, plans[mix, conns, number, name])
                            dns_ms[name] = 1000 * (process_cpu(with_children(dns.pid)) - dns_before) / args.requests
                            results.append(pair[name])
                        a, b = pair["policyd-spf"], pair["srsd"]
                        print(f"{mix} {conns} conn round {number}: policyd-spf {a.rate:,.0f}/s "
                              f"{a.cpu_ms:.2f} ms CPU, srsd {b.rate:,.0f}/s {b.cpu_ms:.2f} ms CPU "
                              f"({b.rate / a.rate:.2f}x, CPU {b.cpu_ms / a.cpu_ms:.2f}x), bad {a.bad}/{b.bad}, "
                              f"DNS server {dns_ms['policyd-spf']:.3f}/{dns_ms['srsd']:.3f} ms a request, "
                              f"generator {a.generator_ms:.2f}/{b.generator_ms:.2f} ms a request, "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        finally:
            for side in sides.values():
                side.stop()

    print("\n| mix | conns | policyd-spf checks/s | srsd checks/s | ratio (median of pairs) "
          "| CPU ms/request policyd-spf | srsd | CPU ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for mix in mixes:
        for conns in conns_list:
            cell = [r for r in results if r.mix == mix and r.connections == conns]
            a = [r for r in cell if r.side == "policyd-spf"]
            b = [r for r in cell if r.side == "srsd"]
            ratio = statistics.median(y.rate / x.rate for x, y in zip(a, b, strict=True))
            cpu = statistics.median(y.cpu_ms / x.cpu_ms for x, y in zip(a, b, strict=True))
            print(f"| {mix} | {conns} | {statistics.median(r.rate for r in a):,.0f} | "
                  f"{statistics.median(r.rate for r in b):,.0f} | {ratio:.2f}x | "
                  f"{statistics.median(r.cpu_ms for r in a):.2f} | {statistics.median(r.cpu_ms for r in b):.2f} | "
                  f"{cpu:.2f}x |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if any(r.bad for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
