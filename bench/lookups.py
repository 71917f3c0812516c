#!/usr/bin/env python3
"""Lookups per second: srsd against PostSRSd 1.10, tcp_table, on this machine.

    python bench/lookups.py [--seconds 5] [--connections 1,8] [--srsd l2,w1] [--answer-cache N] [--keys N]
                            [--maps forward,reverse] [--rounds 1] [--pipelined [DEPTH]]
                            [--variants nodelay-off,...] [--json FILE]

Starts PostSRSd (``/usr/sbin/postsrsd``, forks per connection) and one srsd per
``--srsd`` layout (from this checkout), all on free loopback ports with the same secret, SRS
domain and local domain; compiles the C load generator ``bench/lookupload.c``
into a temporary directory and runs it against each daemon in turn, with the
same keys in the same order, alternating (every round runs each daemon once, and
prints srsd's ratio to PostSRSd of that round). Request/response by default (one request in flight
per connection, as Postfix's tcp_table client), ``--pipelined`` for reference.

Every reply is checked by the load generator against an answer computed here
independently (HMAC-SHA1, the libsrs2 format); a sample is also cross-checked
between the daemons before the runs. See bench/README.md for the results and
what they mean.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
POSTSRSD = "/usr/sbin/postsrsd"
SRS_DOMAIN = "fwd.example"
LOCAL_DOMAIN = "local.example"
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
TICK = os.sysconf("SC_CLK_TCK")


# -- keys and their expected answers (independent of srsd's code) --------------


def timestamp(now: float) -> str:
    day = int(now) // 86400
    return B32[(day >> 5) & 31] + B32[day & 31]


def srs_hash(secret: bytes, data: str) -> str:
    return base64.b64encode(hmac.digest(secret, data.encode().lower(), "sha1")).decode()[:4]


def make_keys(secret: bytes, n: int, seed: int = 1) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(forward, reverse) lists of (key, expected reply) for *n* keys each.

    Forward: 85 % plain senders, 10 % SRS0 addresses of other forwarders (become
    SRS1), 5 % senders in the local domain (not rewritten: expected "500").
    Reverse: SRS0 addresses at our domain, as minted for the plain senders.
    """
    rnd = random.Random(seed)
    tt = timestamp(time.time())
    domains = [f"example{i}.org" for i in range(150)] + [f"mail{i}.example.com" for i in range(50)]
    domains += ["Example.COM", "gmail.example", "Sub.Mail.Example.net"]
    first = ["john", "Mary", "a", "info", "noreply", "bounces+12345", "j.doe", "Support-Team"]
    forward: list[tuple[str, str]] = []
    reverse: list[tuple[str, str]] = []
    for i in range(n):
        r = rnd.random()
        if r < 0.85:
            user = f"user{i}" if rnd.random() < 0.6 else f"{rnd.choice(first)}.{i}"
            domain = rnd.choice(domains)
            srs0 = f"SRS0={srs_hash(secret, tt + domain + user)}={tt}={domain}={user}@{SRS_DOMAIN}"
            forward.append((f"{user}@{domain}", f"200 {srs0}"))
            reverse.append((srs0, f"200 {user}@{domain}"))
        elif r < 0.95:
            hop = f"hop{rnd.randrange(20)}.example"
            h = "".join(rnd.choice(B64) for _ in range(4))
            opaque = f"={h}={rnd.choice(B32)}{rnd.choice(B32)}={rnd.choice(domains)}=user{i}"
            srs1 = f"SRS1={srs_hash(secret, hop + opaque)}={hop}={opaque}@{SRS_DOMAIN}"
            forward.append((f"SRS0{opaque}@{hop}", f"200 {srs1}"))
        else:
            forward.append((f"user{i}@{LOCAL_DOMAIN}", "500"))
    # As many reverse keys as forward keys, in a shuffled order.
    reverse = (reverse * (n // len(reverse) + 1))[:n]
    rnd.shuffle(reverse)
    return forward, reverse


def write_keys(path: Path, keys: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{k}\t{v}\n" for k, v in keys))


# -- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def proc_table() -> dict[int, tuple[int, int, int]]:
    """{pid: (ppid, utime ticks, stime ticks)} of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(name)] = (int(fields[1]), int(fields[11]), int(fields[12]))
    return out


def tree(root: int, table: dict[int, tuple[int, int, int]]) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += [p for p, (ppid, _, _) in table.items() if ppid == pid]
    return pids


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def connections_per_process(pids: list[int], port: int) -> list[int]:
    """How many established connections to *port* each of *pids* holds."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as fh:
            for line in fh.readlines()[1:]:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                    inodes.add(f[9])
    counts = []
    for pid in pids:
        n = 0
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    n += 1
        except OSError:
            pass
        counts.append(n)
    return counts


@dataclass
class Server:
    name: str
    forward_port: int
    reverse_port: int
    process: subprocess.Popen
    log: Path
    forks_per_connection: bool = False
    extra: dict = field(default_factory=dict)

    def port(self, map_name: str) -> int:
        return self.forward_port if map_name == "forward" else self.reverse_port

    def stop(self) -> None:
        if self.process.poll() is None:
            pids = tree(self.process.pid, proc_table())
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for pid in pids[1:]:  # PostSRSd's per-connection children, srsd workers
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def start_postsrsd(workdir: Path, secrets_path: Path) -> Server:
    fwd, rev = free_port(), free_port()
    log = workdir / "postsrsd.log"
    cmd = [POSTSRSD, f"-s{secrets_path}", f"-d{SRS_DOMAIN}", f"-X{LOCAL_DOMAIN}", "-l127.0.0.1", "-4"]
    cmd += [f"-f{fwd}", f"-r{rev}"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    server = Server("PostSRSd", fwd, rev, proc, log, forks_per_connection=True)
    try:
        wait_port(fwd)
        wait_port(rev)
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"PostSRSd did not start: {log.read_text()}") from None
    return server


def parse_srsd(spec: str) -> tuple[int, int]:
    """``lN`` = N lookup processes (the default layout), ``wN`` = N Twisted processes
    serving the lookups themselves (``lookup_processes = 0``, ``--workers N``; what srsd
    did before the lookup processes). :returns: (lookup_processes, workers)."""
    kind, number = spec[:1], int(spec[1:])
    if kind == "l":
        return number, 1
    if kind == "w":
        return 0, number
    raise ValueError(f"--srsd: {spec!r} is neither lN nor wN")


def start_srsd(
    workdir: Path, secrets_path: Path, spec: str, variant: str = "", answer_cache: int | None = None
) -> Server:
    """srsd laid out as *spec* (:func:`parse_srsd`); *variant*: bench/srsd_variant.py
    patches applied to every process through bench/variant_site/sitecustomize.py;
    *answer_cache*: ``limits.answer_cache`` (None: srsd's default)."""
    lookup_processes, workers = parse_srsd(spec)
    name = f"srsd {spec}" + (f" {variant}" if variant else "")
    tag = name.replace(" ", "-")
    fwd, rev = free_port(), free_port()
    config = workdir / f"{tag}.toml"
    cache = "" if answer_cache is None else f"[limits]\nanswer_cache = {answer_cache}\n"
    config.write_text(
        "[srs]\n"
        f'domain = "{SRS_DOMAIN}"\n'
        f'secrets_file = "{secrets_path}"\n'
        f'local_domains = ["{LOCAL_DOMAIN}"]\n'
        "[listen]\n"
        f'tcp_forward = "tcp:{fwd}:interface=127.0.0.1"\n'
        f'tcp_reverse = "tcp:{rev}:interface=127.0.0.1"\n'
        'socketmap = ""\n'
        "[log]\n"
        'level = "info"\n'
        f"[daemon]\nlookup_processes = {lookup_processes}\n{cache}"
    )
    log = workdir / f"{tag}.log"
    cmd = [sys.executable, "-m", "srsd", "serve", "-c", str(config), "--workers", str(workers)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if variant:
        site = str(BENCH / "variant_site")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH", "")) if p)
        env["SRSD_BENCH_VARIANT"] = variant
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env, cwd=REPO)
    server = Server(name, fwd, rev, proc, log)
    deadline = time.monotonic() + 60
    while True:
        text = log.read_text(errors="replace")
        # The parent says ready once every process serves (workers and lookup processes).
        if "srsd ready" in text:
            return server
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not start:\n{text}")
        time.sleep(0.05)


# -- checks and runs -------------------------------------------------------------


def ask(port: int, keys: list[str]) -> list[str]:
    """Answers to *keys* over one connection, one request at a time."""
    out = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        fh = sock.makefile("rwb")
        for key in keys:
            fh.write(f"get {key}\n".encode())
            fh.flush()
            out.append(fh.readline().decode().rstrip("\n"))
    return out


def check_sample(servers: list[Server], maps: dict[str, list[tuple[str, str]]], n: int = 300) -> list[str]:
    """Ask every server a sample of each map; the answers must be the expected
    ones and the 200 answers identical across servers. :returns: report lines."""
    lines = []
    for map_name, keys in maps.items():
        sample = random.Random(7).sample(keys, min(n, len(keys)))
        answers = {s.name: ask(s.port(map_name), [k for k, _ in sample]) for s in servers}
        for i, (key, expected) in enumerate(sample):
            got = {name: a[i] for name, a in answers.items()}
            for name, answer in got.items():
                ok = answer == expected if expected.startswith("200 ") else answer.startswith(expected + " ")
                if not ok:
                    raise SystemExit(f"check failed: {name} {map_name} {key!r} -> {answer!r}, expected {expected!r}")
            if expected.startswith("200 ") and len(set(got.values())) != 1:
                raise SystemExit(f"check failed: servers disagree on {map_name} {key!r}: {got}")
        kinds = {}
        for key, expected in sample:
            kind = expected[:3] + (" SRS1" if "SRS1=" in expected else "")
            kinds.setdefault(kind, (key, expected))
        for key, expected in kinds.values():
            lines.append(f"  {map_name:8} get {key} -> {expected if expected != '500' else '500 ...'}")
        lines.append(f"  {map_name:8} {len(sample)} sampled keys: every server gave the expected answer")
    return lines


@dataclass
class Result:
    server: str
    map: str
    conns: int
    pin: str
    rate: float
    p50: float
    p99: float
    p999: float
    server_cpu_us: float  # server CPU (user+sys, all its processes) per lookup
    server_sys_us: float  # of which in the kernel
    client_cpu: float  # fraction of one core used by the load generator
    busy: float  # machine CPU in use, in cores (of os.cpu_count())
    other: float  # busy minus server and client: anything else running (should be ~0)
    waited: float  # seconds spent waiting for the machine to be idle before the run
    spread: str  # connections per server process
    mismatches: int
    n500: int
    lookups: int
    round: int = 0


PINS = {
    # pin mode: (client CPUs, server CPUs); None = wherever the scheduler likes
    "none": (None, None),
    "same": ({0}, {0}),
    "split": ({0}, {1}),
}


def set_affinity(pids: list[int], cpus: set[int] | None) -> None:
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus or set(range(os.cpu_count() or 1)))
        except OSError:
            pass  # gone


def wait_quiet(limit: float, threshold: float = 0.25) -> float:
    """Wait (up to *limit* s) until the machine is idle: under *threshold* cores
    busy over half a second. :returns: the seconds waited."""
    t0 = time.monotonic()
    while True:
        b0, n0 = machine_ticks()
        time.sleep(0.5)
        b1, n1 = machine_ticks()
        busy = (b1 - b0) / max(n1 - n0, 1) * (os.cpu_count() or 1)
        if busy < threshold or time.monotonic() - t0 > limit:
            return time.monotonic() - t0 - 0.5


def run_one(
    client: Path, server: Server, map_name: str, conns: int, depth: int, args, keyfile: Path, pin: str
) -> Result:
    port = server.port(map_name)
    waited = wait_quiet(args.quiet_timeout) if args.quiet_timeout > 0 else 0.0
    client_cpus, server_cpus = PINS[pin]
    set_affinity(tree(server.process.pid, proc_table()), server_cpus)
    cmd = [str(client), str(port), str(conns), str(args.warmup), str(args.seconds), str(depth), str(keyfile)]
    preexec = (lambda: os.sched_setaffinity(0, client_cpus)) if client_cpus else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=preexec)
    assert proc.stdout is not None
    marks = {}
    for line in proc.stdout:
        line = line.strip()
        if line in ("START", "END"):
            table = proc_table()
            pids = tree(server.process.pid, table)
            user = sum(table[p][1] for p in pids if p in table)
            system = sum(table[p][2] for p in pids if p in table)
            marks[line] = ((user, system), machine_ticks(), time.monotonic())
            if line == "START":
                counts = connections_per_process(sorted(pids), port)
                spread = "fork" if server.forks_per_connection else "/".join(map(str, counts))
        elif line.startswith("{"):
            out = json.loads(line)
    set_affinity(tree(server.process.pid, proc_table()), None)
    if proc.wait() != 0 or "END" not in marks:
        raise SystemExit(f"load generator failed against {server.name} {map_name} ({proc.returncode})")
    cpu0, (busy0, total0), t0 = marks["START"]
    cpu1, (busy1, total1), t1 = marks["END"]
    ncpu = os.cpu_count() or 1
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    server_cores = (user + system) / TICK / max(t1 - t0, 1e-9)
    per_lookup = 1e6 / TICK / max(out["lookups"], 1)
    client_cores = out["client_cpu_s"] / out["seconds"]
    busy = (busy1 - busy0) / max(total1 - total0, 1) * ncpu
    return Result(
        server=server.name,
        map=map_name,
        conns=conns,
        pin=pin,
        rate=out["rate"],
        p50=out["p50_us"],
        p99=out["p99_us"],
        p999=out["p999_us"],
        server_cpu_us=(user + system) * per_lookup,
        server_sys_us=system * per_lookup,
        client_cpu=client_cores,
        busy=busy,
        other=max(busy - server_cores - client_cores, 0.0),
        waited=waited,
        spread=spread,
        mismatches=out["mismatches"],
        n500=out["n500"],
        lookups=out["lookups"],
    )


def progress_line(r: Result) -> str:
    waited = f" (waited {r.waited:.0f} s for an idle machine)" if r.waited > 1 else ""
    return (
        f"  {r.server:>16} {r.map:7} {r.conns} conn pin {r.pin:5}: {r.rate:7,.0f}/s p50 {r.p50:5.1f} µs "
        f"p99 {r.p99:6.1f} µs  server {r.server_cpu_us:4.1f} µs/lookup client {r.client_cpu:.2f} "
        f"other {r.other:.2f} conns/proc {r.spread} bad {r.mismatches}{waited}"
    )


def pair_line(pair: list[Result], number: int) -> str:
    """One round's rates and each srsd's ratio to PostSRSd of the same round."""
    base = next((r for r in pair if r.server == "PostSRSd"), None)
    cells = []
    for r in pair:
        cell = f"{r.server} {r.rate:,.0f}/s"
        if base is not None and r is not base:
            cell += f" ({r.rate / base.rate:.2f}x)"
        cells.append(cell)
    return f"  round {number}: " + ", ".join(cells)


def median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def pair_ratios(results: list[Result], map_name: str, conns: int, pin: str, name: str) -> list[float]:
    """srsd *name* / PostSRSd, round by round (same cell)."""

    def cell(server: str) -> dict[int, float]:
        return {r.round: r.rate for r in results if (r.map, r.conns, r.pin, r.server) == (map_name, conns, pin, server)}

    base, mine = cell("PostSRSd"), cell(name)
    return [mine[k] / base[k] for k in sorted(mine) if k in base and base[k]]


def median_result(results: list[Result]) -> tuple[Result, float, float]:
    rates = [r.rate for r in results]
    med = sorted(results, key=lambda r: r.rate)[len(results) // 2]
    return med, min(rates), max(rates)


def print_tables(results: list[Result], servers: list[str], args) -> None:
    groups: dict[tuple[str, int, str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.map, r.conns, r.pin, r.server), []).append(r)
    cells_order = [(m, c, pin) for m in args.maps for c in args.connections for pin in args.pin]
    mode = f"pipelined, depth {args.pipelined}" if args.pipelined else "request/response"
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    print(
        f"\nlookups/s ({mode}, {args.seconds:g} s each after {args.warmup:g} s warm-up{rounds}); "
        "(median of the round-by-round ratios to PostSRSd, their range); p50/p99 latency in µs"
    )
    print("| map | conns | pin | " + " | ".join(servers) + " |")
    print("|" + "---|" * (3 + len(servers)))
    for map_name, conns, pin in cells_order:
        base = groups.get((map_name, conns, pin, "PostSRSd"))
        base_rate = median_result(base)[0].rate if base else None
        cells = []
        for name in servers:
            med, lo, hi = median_result(groups[(map_name, conns, pin, name)])
            cell = f"{med.rate:,.0f}"
            ratios = pair_ratios(results, map_name, conns, pin, name) if base_rate and name != "PostSRSd" else []
            if ratios:
                cell += f" ({median(ratios):.2f}x, {min(ratios):.2f}-{max(ratios):.2f})"
            cells.append(cell + f" {med.p50:.0f}/{med.p99:.0f}")
        print(f"| {map_name} | {conns} | {pin} | " + " | ".join(cells) + " |")
    print(
        "\ndetails (median round). server µs = CPU per lookup (user+sys; sys in brackets), all daemon processes; "
        f"client, busy, other = cores (of {os.cpu_count()}) used by the load generator, the whole machine, "
        "and anything else; conns/proc = connections each daemon process holds"
    )
    print(
        "| map | conns | pin | server | lookups/s | min-max | p50 | p99 | p99.9 | server µs (sys) | client | busy "
        "| other | conns/proc | 500s | bad |"
    )
    print("|" + "---|" * 16)
    for map_name, conns, pin in cells_order:
        for name in servers:
            med, lo, hi = median_result(groups[(map_name, conns, pin, name)])
            print(
                f"| {map_name} | {conns} | {pin} | {name} | {med.rate:,.0f} | {lo:,.0f}-{hi:,.0f} | {med.p50:.1f} "
                f"| {med.p99:.1f} | {med.p999:.1f} | {med.server_cpu_us:.1f} ({med.server_sys_us:.1f}) "
                f"| {med.client_cpu:.2f} "
                f"| {med.busy:.2f} | {med.other:.2f} | {med.spread} | {med.n500} | {med.mismatches} |"
            )


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--connections", type=int_list, default=[1, 8], help="comma list (default 1,8)")
    p.add_argument(
        "--srsd",
        type=lambda s: [v for v in s.split(",") if v],
        default=["l2"],
        help="srsd layouts, comma list: lN = N lookup processes (uvloop), wN = lookups in N Twisted processes "
        "(lookup_processes = 0, --workers N: srsd before the lookup processes); default l2",
    )
    p.add_argument(
        "--answer-cache",
        type=int,
        default=None,
        metavar="N",
        help="srsd's limits.answer_cache (replies kept per endpoint and process; 0 = none; default: srsd's 20000)",
    )
    p.add_argument(
        "--maps",
        type=lambda s: s.split(","),
        default=["forward", "reverse"],
        help="comma list (default forward,reverse)",
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat every run, report the median (default 1)")
    p.add_argument("--keys", type=int, default=10000, help="distinct keys per map (default 10000)")
    p.add_argument(
        "--pipelined",
        type=int,
        nargs="?",
        const=32,
        default=0,
        metavar="DEPTH",
        help="keep DEPTH requests in flight per connection (default off; 32 if no DEPTH)",
    )
    p.add_argument(
        "--variants",
        type=lambda s: [v for v in s.split(",") if v],
        default=[],
        help="also run srsd patched by bench/srsd_variant.py, comma list of VARIANT[+VARIANT][:WORKERS] "
        "(WORKERS default 1); variants: " + ", ".join(variant_names()),
    )
    p.add_argument(
        "--pin",
        type=lambda s: s.split(","),
        default=["none"],
        help="CPU placement, comma list: none (the scheduler decides), same (client and server on "
        "CPU 0), split (client on CPU 0, server on CPU 1); default none",
    )
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=60,
        help="before each run wait up to this many seconds for an idle machine (0 = don't)",
    )
    p.add_argument(
        "--max-other",
        type=float,
        default=0.2,
        help="redo a run (up to --retries times) when other processes used more than this many cores during it "
        "(default 0.2); the least disturbed try is kept",
    )
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--no-postsrsd", action="store_true", help="srsd only")
    p.add_argument("--json", metavar="FILE", help="write every run's result to FILE")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args()
    if not args.no_postsrsd and not os.access(POSTSRSD, os.X_OK):
        return print(f"{POSTSRSD} not found (apt-get install postsrsd) or use --no-postsrsd") or 2
    if any(pin not in PINS for pin in args.pin) or ("split" in args.pin and (os.cpu_count() or 1) < 2):
        return print(f"--pin: one of {', '.join(PINS)} (split needs 2 CPUs)") or 2
    if not shutil.which("gcc"):
        return print("gcc is needed to build the load generator") or 2

    workdir = Path(tempfile.mkdtemp(prefix="srsd-bench-"))
    client = workdir / "lookupload"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(client), str(BENCH / "lookupload.c")], check=True)
    secret = secrets.token_urlsafe(24).encode()
    secrets_path = workdir / "secrets"
    secrets_path.write_bytes(secret + b"\n")
    forward, reverse = make_keys(secret, args.keys)
    maps = {"forward": forward, "reverse": reverse}
    maps = {m: maps[m] for m in args.maps}
    keyfiles = {}
    for name, keys in maps.items():
        keyfiles[name] = workdir / f"{name}.keys"
        write_keys(keyfiles[name], keys)

    servers: list[Server] = []
    try:
        if not args.no_postsrsd:
            servers.append(start_postsrsd(workdir, secrets_path))
        for spec in args.srsd:
            servers.append(start_srsd(workdir, secrets_path, spec, answer_cache=args.answer_cache))
        for spec in args.variants:  # patches of Twisted's path: lookups in the Twisted processes
            variant, _, workers = spec.partition(":")
            servers.append(start_srsd(workdir, secrets_path, f"w{workers or 1}", variant, args.answer_cache))
        ncpu = os.cpu_count()
        print(
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {ncpu} cores ({cpu_model()}), Python {sys.version.split()[0]}, "
            f"{len(forward if forward else reverse)} keys per map; load generator: C, one thread, epoll"
        )
        print(versions())
        print("forward mix: 85% plain senders, 10% SRS0 of other forwarders (-> SRS1), 5% local domain (-> 500)")
        print("reverse: valid SRS0 addresses minted for the plain senders; answers checked:")
        for line in check_sample(servers, maps):
            print(line)
        results = []
        depth = args.pipelined or 1
        # Alternating: every round runs each daemon once, one after the other (A B A B ...),
        # so a change of load on the machine hits both sides of a pair alike.
        for map_name in args.maps:
            for conns in args.connections:
                for pin in args.pin:
                    for number in range(1, args.rounds + 1):
                        pair = []
                        for server in servers:
                            tries = []
                            for _ in range(1 + max(args.retries, 0)):
                                tries.append(
                                    run_one(client, server, map_name, conns, depth, args, keyfiles[map_name], pin)
                                )
                                print(progress_line(tries[-1]), flush=True)
                                if tries[-1].other <= args.max_other:
                                    break
                            r = min(tries, key=lambda t: t.other)
                            r.round = number
                            results.append(r)
                            pair.append(r)
                        print(pair_line(pair, number), flush=True)
        print_tables(results, [s.name for s in servers], args)
        if args.json:
            Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
        bad = sum(r.mismatches for r in results)
        if bad:
            print(f"\n{bad} replies did not match the expected answer (see the lines above)")
        return 1 if bad else 0
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def versions() -> str:
    """srsd source digest (the tree has no commits to name), Twisted, PostSRSd."""
    import hashlib

    import twisted

    digest = hashlib.sha256()
    for path in sorted((REPO / "srsd").rglob("*.py")):
        digest.update(path.read_bytes())
    try:
        out = subprocess.run([POSTSRSD, "-v"], capture_output=True, text=True, timeout=5)
        postsrsd = "PostSRSd " + (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        postsrsd = "PostSRSd ?"
    return f"srsd sources sha256 {digest.hexdigest()[:12]}, Twisted {twisted.__version__}, {postsrsd}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def variant_names() -> list[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("srsd_variant", BENCH / "srsd_variant.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted(module.VARIANTS)


if __name__ == "__main__":
    sys.exit(main())
