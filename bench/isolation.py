#!/usr/bin/env python3
"""SRS lookup latency while srsd's other work runs: issue 11, target 4.

    python bench/isolation.py [--rate 2000] [--connections 4] [--seconds 5] [--rounds 3]
                              [--loads spf,milter] [--srsd l2,w1,anchor] [--spf-waiting 100]
                              [--milter-clients 4] [--json FILE]

Starts a loopback DNS server, a delaying UDP proxy in front of it (queries for
names under ``slow.example`` are answered after ``--dns-delay`` seconds, 2 by
default; every other name at once), and one srsd per ``--srsd`` layout (see
bench/lookups.py: ``l2`` = two lookup processes, ``w1`` = lookups served in the
Twisted process beside the policy service and the milter) with tcp_forward,
policy and milter (RSA-2048 key). The C load generator asks tcp_forward at a fixed
rate (``--rate`` lookups/s over ``--connections``, one request in flight each, as
Postfix's cleanup processes) and reports p50/p99/p99.9 latency, with, by turns:

* ``idle``: nothing else;
* ``spf``: ``--spf-waiting`` policy checks waiting on the slow DNS at every moment
  (each client asks for a new domain every ``--dns-delay`` seconds);
* ``milter``: ``--milter-clients`` milter connections signing 10 KB messages back
  to back (as fast as srsd answers: the milter's full rate).

Every round runs idle, spf, idle, milter (...) in turn and prints each load's p99
as a ratio to the idle run just before it. Target 4: within 1.10x.

Every side (each ``--srsd`` layout) is started first and measured by turns, the
order reversed every other round. ``--srsd anchor`` is what srsd replaces, on the
same loopback DNS and proxy: PostSRSd answering the lookups, OpenDKIM signing for
the milter load (the same client, key and messages: they come from a trusted client,
so srsd too makes one RSA signature a message, no ARC set) and policyd-spf for the
spf load (a process per connection, as spawn(8) runs it). Its rows show what the
same load does to the replaced stack's lookups on this machine: the yardstick for a
target that a 2-core machine may not allow anyone.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.message
import dns.name

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

import lookups  # noqa: E402  (a sibling script in bench/)

SLOW = "slow.example"
_SLOW_NAME = dns.name.from_text(SLOW)


class DelayingProxy:
    """UDP DNS in front of *upstream*: answers for names under ``slow.example`` are held
    *delay* seconds, the rest pass at once. One thread; stops with :meth:`stop`."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.out.connect(upstream)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._pending: dict[int, tuple[tuple[str, int], bool]] = {}  # query id -> (client, slow)
        self._held: list[tuple[float, bytes, tuple[str, int]]] = []
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            timeout = max(0.0, self._held[0][0] - time.monotonic()) if self._held else 0.2
            ready, _, _ = select.select([self.sock, self.out], [], [], min(timeout, 0.2))
            if self.sock in ready:
                query, client = self.sock.recvfrom(65535)
                try:
                    name = dns.message.from_wire(query).question[0].name
                    slow = name.is_subdomain(_SLOW_NAME)
                except Exception:
                    slow = False
                self._pending[int.from_bytes(query[:2], "big")] = (client, slow)
                self.out.send(query)
            if self.out in ready:
                answer = self.out.recv(65535)
                client, slow = self._pending.pop(int.from_bytes(answer[:2], "big"), (None, False))
                if client is not None:
                    due = time.monotonic() + (self.delay if slow else 0)
                    heapq.heappush(self._held, (due, answer, client))
            while self._held and self._held[0][0] <= time.monotonic():
                _, answer, client = heapq.heappop(self._held)
                self.sock.sendto(answer, client)

    def stop(self) -> None:
        self._running = False
        self._thread.join(2)
        self.sock.close()
        self.out.close()


class Load:
    """A background load on srsd (SPF checks waiting on DNS, or milter signing)."""

    def __init__(self) -> None:
        self.stop_flag = threading.Event()
        self.threads: list[threading.Thread] = []
        self.done = 0
        self.errors = 0

    def start(self, target, count: int) -> Load:
        for i in range(count):
            t = threading.Thread(target=self._guard, args=(target, i), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _guard(self, target, i: int) -> None:
        try:
            target(i)
        except Exception as exc:  # counted and shown: a broken load would fake isolation
            self.errors += 1
            print(f"    load thread {i}: {exc!r}", file=sys.stderr)

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


def spf_load(policy_port: int, waiting: int, delay: float) -> Load:
    """*waiting* policy connections, each with one check of a new slow domain in flight
    and a new one every *delay* seconds."""
    from tests.lookup_clients import policy_request

    load = Load()
    serial = iter(range(10**9))
    lock = threading.Lock()

    def client(i: int) -> None:
        with socket.create_connection(("127.0.0.1", policy_port), timeout=60) as sock:
            while not load.stop_flag.is_set():
                with lock:
                    n = next(serial)
                sent = time.monotonic()
                sock.sendall(
                    policy_request(
                        client_address=f"192.0.2.{1 + n % 250}",
                        sender=f"u{n}@d{n}.{SLOW}",
                        helo_name=f"mail.d{n}.{SLOW}",
                    )
                )
                reply = b""
                while not reply.endswith(b"\n\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise RuntimeError("policy connection closed")
                    reply += chunk
                load.done += 1
                load.stop_flag.wait(max(0.0, delay - (time.monotonic() - sent)))

    return load.start(client, waiting)


def milter_load(milter_path: str, clients: int, every_event: bool = False) -> Load:
    """*clients* milter connections signing 10 KB messages back to back. *every_event*:
    send DATA and end-of-header too, for a milter that does not negotiate them away
    (OpenDKIM: libmilter replies to each event; srsd asks for neither)."""
    from tests.lookup_clients import milter_message
    from tests.protocols import milter_wire as w

    load = Load()
    body = [(b"Forwarded text, line %d of a 10 KB message.\r\n" % i) * 2 for i in range(110)]

    def client(i: int) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(milter_path)
            first = True
            n = 0
            while not load.stop_flag.is_set():
                n += 1
                headers = [
                    ("From", " alice@local.example"),
                    ("To", " bob@remote.example"),
                    ("Subject", f" isolation {i}.{n}"),
                    ("Message-ID", f" <iso-{i}-{n}@local.example>"),
                ]
                queue_id = f"Q{i}X{n}"
                events = w.message_events(queue_id, "alice@local.example", ["bob@remote.example"], headers, body)
                if every_event:
                    for stage, command in ((b"T", w.DATA), (b"N", w.EOH)):
                        stage_macros = w.macros(stage, {"i": queue_id})
                        events = events.replace(stage_macros, stage_macros + command, 1)
                session = (w.session_start(address="127.0.0.1") if first else b"") + events
                first = False
                replies = milter_message(sock, session)
                if not any(r[0] in "ih" and "DKIM-Signature" in r for r in replies):
                    raise RuntimeError(f"message not signed: {replies}")
                load.done += 1

    return load.start(client, clients)


class Anchor:
    """What srsd replaces, started for :func:`main`'s rounds: PostSRSd (``server``),
    policyd-spf (``policy_port``, a process per connection) and OpenDKIM (``milter_path``)."""

    def __init__(self, workdir: Path, dns: str, key) -> None:
        from dkim_signing import start_opendkim
        from spf_policy import PolicydSpf

        self.server = lookups.start_postsrsd(workdir, workdir / "secrets")
        self.server.name = "anchor"
        self.policyd = PolicydSpf(int(dns.rpartition(":")[2]))
        self.policy_port = self.policyd.port
        opendkim = start_opendkim(workdir, key)
        if opendkim is None:
            self.stop()
            raise SystemExit("--srsd anchor needs opendkim (apt install opendkim)")
        self.opendkim, address = opendkim
        self.milter_path = address.removeprefix("unix:")

    def stop(self) -> None:
        self.server.stop()
        self.policyd.stop()
        if getattr(self, "opendkim", None) is not None:
            self.opendkim.terminate()
            self.opendkim.wait(10)


def start_srsd(workdir: Path, spec: str, dns: str, key_path: str, spf_threads: int) -> tuple[lookups.Server, int, str]:
    lookup_processes, workers = lookups.parse_srsd(spec)
    tag = f"srsd-{spec}"
    fwd, rev, policy = lookups.free_port(), lookups.free_port(), lookups.free_port()
    milter = workdir / f"{tag}-milter.sock"
    config = workdir / f"{tag}.toml"
    config.write_text(
        f'[srs]\ndomain = "fwd.example"\nsecrets_file = "{workdir / "secrets"}"\nlocal_domains = ["local.example"]\n'
        f'[listen]\ntcp_forward = "tcp:{fwd}:interface=127.0.0.1"\ntcp_reverse = "tcp:{rev}:interface=127.0.0.1"\n'
        f'socketmap = ""\npolicy = "tcp:{policy}:interface=127.0.0.1"\nmilter = "unix:{milter}:mode=666"\n'
        f'[dns]\nnameservers = ["{dns}"]\ntimeout = 5.0\n'
        # Enough threads for every check to wait on DNS (spf.threads bounds them, 4x queued).
        f"[spf]\nthreads = {spf_threads}\ncheck_budget = 10.0\n"
        f'[dkim]\ndomain = "local.example"\nselector = "s1"\nkey_file = "{key_path}"\n'
        f'[log]\nlevel = "warn"\n[daemon]\nlookup_processes = {lookup_processes}\n'
    )
    log = workdir / f"{tag}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "srsd", "serve", "-c", str(config), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env, cwd=REPO)
    server = lookups.Server(f"srsd {spec}", fwd, rev, proc, log)
    deadline = time.monotonic() + 60
    while not (milter.exists() and _accepts(policy) and _accepts(fwd)):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"srsd {spec} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return server, policy, str(milter)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def measure(client: Path, server: lookups.Server, keyfile: Path, args) -> dict:
    cmd = [str(client), str(server.forward_port), str(args.connections), "1", str(args.seconds), "1", str(keyfile)]
    out = subprocess.run([*cmd, str(args.rate)], capture_output=True, text=True, timeout=args.seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=2000, help="lookups/s over all connections (default 2000)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5, help="measured seconds per run (default 5)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loads", type=lambda s: s.split(","), default=["spf", "milter"])
    p.add_argument(
        "--srsd",
        type=lambda s: s.split(","),
        default=["l2"],
        help="layouts as bench/lookups.py --srsd, or anchor (PostSRSd, OpenDKIM, policyd-spf)",
    )
    p.add_argument("--spf-waiting", type=int, default=100, help="policy checks waiting on DNS (default 100)")
    p.add_argument("--dns-delay", type=float, default=2.0, help="seconds the slow DNS takes (default 2)")
    p.add_argument("--milter-clients", type=int, default=4)
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    if not shutil.which("gcc"):
        return print("gcc is needed to build the load generator") or 2

    from srsd.mailauth.keys import generate_key
    from tests.dnsserver import DNSServer

    workdir = Path(tempfile.mkdtemp(prefix="srsd-isolation-"))
    client = workdir / "lookupload"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(client), str(BENCH / "lookupload.c")], check=True)
    key = generate_key(str(workdir / "s1.private"), "rsa-sha256", 2048)
    forward, _ = lookups.make_keys(b"isolation-bench-secret", args.keys)
    keyfile = workdir / "forward.keys"
    lookups.write_keys(keyfile, forward)
    (workdir / "secrets").write_text("isolation-bench-secret\n")  # srsd's and PostSRSd's
    dns = DNSServer().start()
    # d<N>.slow.example does not exist: each check waits --dns-delay s for NXDOMAIN ("none").
    dns.set_zone({SLOW: [{"TXT": "v=spf1 -all"}]})
    proxy = DelayingProxy(("127.0.0.1", dns.port), args.dns_delay)
    results = []
    servers = []
    try:
        print(
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
            f"lookups paced at {args.rate:g}/s over {args.connections} connections, {args.seconds:g} s per run"
        )
        sides = {}  # spec -> (lookup server, policy port, milter socket path); all up, by turns measured
        for spec in args.srsd:
            if spec == "anchor":
                anchor = Anchor(workdir, proxy.address, key)
                servers.append(anchor)
                sides[spec] = (anchor.server, anchor.policy_port, anchor.milter_path)
            else:
                sides[spec] = start_srsd(workdir, spec, proxy.address, key.path, max(8, args.spf_waiting))
                servers.append(sides[spec][0])
        for number in range(1, args.rounds + 1):
            order = args.srsd if number % 2 else args.srsd[::-1]  # A B, then B A: neither always first
            for spec in order:
                server, policy_port, milter_path = sides[spec]
                for load_name in args.loads:
                    idle = measure(client, server, keyfile, args)
                    if load_name == "spf":
                        load = spf_load(policy_port, args.spf_waiting, args.dns_delay)
                    else:
                        load = milter_load(milter_path, args.milter_clients, every_event=spec == "anchor")
                    time.sleep(1.0 if load_name == "milter" else args.dns_delay + 0.5)  # every check in flight
                    started, done0 = time.monotonic(), load.done
                    loaded = measure(client, server, keyfile, args)
                    load_rate = (load.done - done0) / (time.monotonic() - started)
                    load.stop()
                    if spec == "anchor" and load_name == "spf":
                        anchor.policyd.reap()  # its processes exit with their connections
                    ratio = loaded["p99_us"] / max(idle["p99_us"], 1e-9)
                    row = {
                        "srsd": spec,
                        "round": number,
                        "load": load_name,
                        "idle": idle,
                        "loaded": loaded,
                        "load_per_s": load_rate,
                        "load_errors": load.errors,
                        "p99_ratio": ratio,
                    }
                    results.append(row)
                    bad = idle["mismatches"] + loaded["mismatches"]
                    side = spec if spec == "anchor" else f"srsd {spec}"
                    print(
                        f"  {side} round {number} {load_name:6}: idle p50/p99 {idle['p50_us']:.0f}/"
                        f"{idle['p99_us']:.0f} µs ({idle['rate']:,.0f}/s); loaded {loaded['p50_us']:.0f}/"
                        f"{loaded['p99_us']:.0f} µs ({loaded['rate']:,.0f}/s); p99 ratio {ratio:.2f}x; "
                        f"{load_name} {load_rate:.0f}/s, errors {load.errors}, bad replies {bad}",
                        flush=True,
                    )
        print("\np99 of lookups under load / p99 idle just before (median of the rounds, range); target <= 1.10x")
        print("| srsd | load | p99 ratio | idle p99 µs | loaded p99 µs | load rate |")
        print("|---|---|---|---|---|---|")
        for spec in args.srsd:
            for load_name in args.loads:
                rows = [r for r in results if r["srsd"] == spec and r["load"] == load_name]
                ratios = sorted(r["p99_ratio"] for r in rows)
                med = lookups.median(ratios)
                idle = lookups.median([r["idle"]["p99_us"] for r in rows])
                loaded = lookups.median([r["loaded"]["p99_us"] for r in rows])
                rate = lookups.median([r["load_per_s"] for r in rows])
                unit = "checks/s answered" if load_name == "spf" else "msgs/s signed"
                print(
                    f"| {spec} | {load_name} | {med:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) | {idle:.0f} "
                    f"| {loaded:.0f} | {rate:.0f} {unit} |"
                )
        if "anchor" in args.srsd:
            print("\nsrsd's loaded p99 / the anchor's, same round (median, range): under 1 = srsd's lookups wait less")
            for spec in args.srsd:
                for load_name in args.loads:
                    pairs = sorted(
                        r["loaded"]["p99_us"] / max(a["loaded"]["p99_us"], 1e-9)
                        for r in results
                        for a in results
                        if r["srsd"] == spec != "anchor" and a["srsd"] == "anchor"
                        and r["load"] == a["load"] == load_name and r["round"] == a["round"]
                    )  # fmt: skip
                    if pairs:
                        print(f"  {spec} {load_name}: {lookups.median(pairs):.2f}x ({pairs[0]:.2f}-{pairs[-1]:.2f})")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        bad = sum(r["idle"]["mismatches"] + r["loaded"]["mismatches"] + r["load_errors"] for r in results)
        return 1 if bad else 0
    finally:
        for server in servers:
            server.stop()
        proxy.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
