"""NSD (NLnet Labs' authoritative server, Debian's ``nsd``) on loopback, serving a bench's zone.

The SPF bench's own server (tests/dnsserver.py) is Python: dnspython parses each query and
builds each reply, ~0.25 ms of CPU a query on one thread, so at a few hundred cold checks a
second (4 queries each) it is the bottleneck of both sides and squeezes their ratio towards
1. A real host asks a C resolver (unbound, a site's caches); NSD answers a query in
microseconds, so what the bench then measures is the policy daemons.

    with NSDServer(zone, ttl=3600, workdir=tmp) as dns:
        dns.port  # UDP and TCP on 127.0.0.1

*zone* has tests/dnsserver.py's ``zonedata`` shape for the record types the benches use
(TXT -- a string or a list of strings --, A, AAAA, MX, CNAME, PTR); every name must end in
``.example`` (one zone, ``example.``, holds them all). Absent names are NXDOMAIN, listed
names without the asked type NODATA, both with the SOA whose MINIMUM is *ttl* (RFC 2308).

Replies are minimal (``minimal-responses: yes``): an answer carries no authority NS
records and no glue, as a host's recursive resolver answers its stub clients (unbound's
default since 1.16, BIND's ``minimal-responses no-auth-recursive`` since 9.16); a negative
answer keeps its SOA. An authoritative server's full replies would make both sides of a
bench parse records no mail host's resolver sends it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

NSD = "/usr/sbin/nsd"
ORIGIN = "example"


def available() -> bool:
    return shutil.which(NSD) is not None or Path(NSD).exists()


def _quoted(piece: bytes) -> str:
    return '"' + "".join(chr(b) if 0x20 < b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03d}" for b in piece) + '"'


def _txt(value: Any) -> str:
    strings = [value] if isinstance(value, str) else list(value)
    pieces = []
    for s in strings:
        raw = s.encode()
        pieces += [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return " ".join(_quoted(p) for p in pieces)


def _rdata(rtype: str, value: Any) -> str:
    if rtype in ("TXT", "SPF"):
        return _txt(value)
    if rtype == "MX":
        preference, host = value
        return f"{preference} {host.rstrip('.')}."
    if rtype in ("CNAME", "PTR", "NS"):
        return value.rstrip(".") + "."
    return str(value)


def zone_text(zone: dict, ttl: int) -> str:
    """The master file (RFC 1035 5) of *zone* under ``example.``."""
    lines = [
        f"$ORIGIN {ORIGIN}.",
        f"$TTL {ttl}",
        f"@ IN SOA ns.{ORIGIN}. hostmaster.{ORIGIN}. 1 3600 600 86400 {ttl}",
        f"@ IN NS ns.{ORIGIN}.",
        "ns IN A 127.0.0.1",
    ]
    for name, records in zone.items():
        owner = name.rstrip(".")
        if owner != ORIGIN and not owner.endswith("." + ORIGIN):
            raise ValueError(f"{name}: the NSD bench zone holds only names under {ORIGIN}.")
        for record in records:
            if not isinstance(record, dict):
                raise ValueError(f"{name}: {record!r} (TIMEOUT and the like are tests/dnsserver.py's)")
            record_ttl = record.get("ttl", ttl)
            for rtype, value in record.items():
                if rtype == "ttl":
                    continue
                lines.append(f"{owner}. {record_ttl} IN {rtype} {_rdata(rtype, value)}")
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (NSD binds it a moment later)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the bench dies (prctl(2) PR_SET_PDEATHSIG),
    so a killed bench leaves no NSD behind; NSD stops its own server processes on it."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class NSDServer:
    """``nsd -d`` on 127.0.0.1:port with one server process, *zone* loaded; stopped on exit.

    :param workdir: where its configuration, zone file and state go (created).
    :raises RuntimeError: NSD is missing, or did not answer within 20 s.
    """

    def __init__(self, zone: dict, ttl: int, workdir: Path) -> None:
        self.zone, self.ttl, self.workdir = zone, ttl, Path(workdir)
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> NSDServer:
        if not available():
            raise RuntimeError(f"{NSD} is missing: `apt-get install nsd` (bash .ci/install does)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "example.zone").write_text(zone_text(self.zone, self.ttl))
        self.port = _free_port()
        conf = self.workdir / "nsd.conf"
        conf.write_text(
            "server:\n"
            f"  ip-address: 127.0.0.1@{self.port}\n"
            f"  port: {self.port}\n"
            '  username: ""\n'
            '  chroot: ""\n'
            '  database: ""\n'
            f"  zonesdir: {self.workdir}\n"
            f"  zonelistfile: {self.workdir}/zone.list\n"
            f"  xfrdfile: {self.workdir}/xfrd.state\n"
            f"  xfrdir: {self.workdir}\n"
            f"  pidfile: {self.workdir}/nsd.pid\n"
            f"  logfile: {self.workdir}/nsd.log\n"
            "  server-count: 1\n"
            "  verbosity: 1\n"
            "  tcp-count: 200\n"
            "  minimal-responses: yes\n"
            "remote-control:\n"
            "  control-enable: no\n"
            "zone:\n"
            f"  name: {ORIGIN}.\n"
            "  zonefile: example.zone\n"
        )
        self.process = subprocess.Popen([NSD, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.workdir / "nsd.stderr", "wb"),
                                        preexec_fn=_stop_with_parent)  # fmt: skip
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import dns.message
        import dns.query

        deadline = time.monotonic() + 20
        query = dns.message.make_query(f"ns.{ORIGIN}.", "A")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                logs = [self.workdir / "nsd.stderr", self.workdir / "nsd.log"]
                said = " ".join(p.read_text()[-500:] for p in logs if p.exists())
                raise RuntimeError(f"nsd exited: {said}")
            try:
                reply = dns.query.udp(query, "127.0.0.1", timeout=0.2, port=self.port)
                if reply.answer:
                    return
            except Exception:  # not listening yet, or zone not loaded
                pass
            time.sleep(0.05)
        raise RuntimeError("nsd did not answer within 20 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
