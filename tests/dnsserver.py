"""A real DNS server on loopback for tests: UDP and TCP on one free port.

Zone data uses the ``zonedata`` shape of the SPF test suites (pyspf's YAML):
a dict mapping a name to a list of records, each a one-key map or the bare
string ``"TIMEOUT"``::

    {
        "example.com": [{"TXT": "v=spf1 mx -all"}, {"MX": [10, "mx.example.com"]}],
        "mx.example.com": [{"A": "192.0.2.1"}, {"AAAA": "2001:db8::1", "ttl": 1}],
        "sel._domainkey.example.com": [{"TXT": ["v=DKIM1; k=rsa; ", "p=MIIB..."]}],
        "slow.example.com": ["TIMEOUT"],
    }

Record types: ``TXT``/``SPF`` (a string, or a list of strings = one record made
of several character-strings; a string longer than 255 bytes is split into
255-byte pieces; the value ``"NONE"`` means "no record"), ``A``, ``AAAA``,
``MX: [preference, host]``, ``PTR``, ``CNAME``, and any other type dnspython
knows, given in zone-file text (``{"NS": "ns1.example."}``). A record map may
carry ``"ttl": seconds`` (default: the server's ``ttl``). Semantics:

* a name that is absent -> NXDOMAIN (unless it is an empty non-terminal, i.e.
  an ancestor of a listed name -> NODATA);
* a listed name without the asked type -> NODATA: NOERROR, empty answer, and a
  SOA in the authority section whose MINIMUM is ``negative_ttl``, so stub
  resolvers cache the negative answer (RFC 2308);
* ``"TIMEOUT"`` as a list item: queries for that name are never answered,
  unless records of the asked type are listed before it (those are answered;
  records after it are ignored) -- pyspf's test-runner convention; the value
  ``TIMEOUT`` of one type (``{"TXT": "TIMEOUT"}``) drops queries of that type;
* CNAMEs are followed inside the zone like an authoritative server does (chain
  in the answer section, loops stop at the first repeated name);
* UDP answers larger than the client's EDNS payload size (512 bytes without
  EDNS) are truncated (TC bit, no records) so the client retries over TCP.

Why dnspython + plain sockets, not twisted.names: Twisted's reactor is a
process-wide singleton, and tests in this repository run trial/Twisted code
in-process; a second reactor cannot run in a thread. This server is two
ordinary threads (a UDP loop and a TCP accept loop with a thread per
connection) that share the zone with the test through a lock, so tests can
swap zones, count queries and pause the server synchronously. dnspython
builds and parses the wire format (the resolver under test uses it too, so a
message both sides misread would go unnoticed; the formats used here are
basic RFC 1035 ones).
"""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.SPF
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

__all__ = ["DNSServer", "Query", "TIMEOUT", "zone_records"]

TIMEOUT = "TIMEOUT"
IN = dns.rdataclass.IN
_MAX_CNAME_CHAIN = 16
_TCP_IDLE = 10.0  # seconds a TCP connection may stay idle before the server closes it


@dataclass(frozen=True)
class Query:
    """One query the server received."""

    name: str  # lower case, no trailing dot (dnspython text form: odd bytes escaped)
    qtype: str  # "TXT", "A", ...
    transport: str  # "udp" or "tcp"
    answered: bool  # False: dropped (TIMEOUT record or paused server)


@dataclass(frozen=True)
class _Record:
    rdtype: int
    rdata: dns.rdata.Rdata | None  # None: this type times out
    ttl: int


def _key(name: str | dns.name.Name) -> dns.name.Name:
    """Zone key: an absolute, lower-cased name (labels may hold any byte: the
    suites have names with spaces and ``%``)."""
    if isinstance(name, str):
        name = dns.name.from_text(name if name.endswith(".") else name + ".")
    return name.canonicalize()


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True)


def _ancestors(names: Iterable[dns.name.Name]) -> set[dns.name.Name]:
    out: set[dns.name.Name] = set()
    for name in names:
        while len(name) > 1:
            name = name.parent()
            out.add(name)
    return out


def _target(text: str) -> dns.name.Name:
    return dns.name.from_text(text.rstrip(".") + "." if text not in ("", ".") else ".")


def _strings(value: Any) -> tuple[bytes, ...]:
    parts = [value] if isinstance(value, (str, bytes)) else list(value)
    out: list[bytes] = []
    for part in parts:
        raw = part.encode() if isinstance(part, str) else bytes(part)
        out += [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return tuple(out)


def _rdata(rtype: str, value: Any) -> dns.rdata.Rdata:
    rdtype = dns.rdatatype.from_text(rtype)
    if rtype in ("TXT", "SPF"):
        strings = _strings(value)
        if not strings:
            # Zero character-strings: illegal (RFC 1035 3.3.14) but the SPF
            # suites use it; dnspython's TXT class refuses it, so send raw RDATA.
            return dns.rdata.GenericRdata(IN, rdtype, b"")
        cls = dns.rdtypes.ANY.TXT.TXT if rtype == "TXT" else dns.rdtypes.ANY.SPF.SPF
        return cls(IN, rdtype, strings)
    if rtype == "A":
        return dns.rdtypes.IN.A.A(IN, rdtype, str(ipaddress.IPv4Address(value)))
    if rtype == "AAAA":
        return dns.rdtypes.IN.AAAA.AAAA(IN, rdtype, str(ipaddress.IPv6Address(value)))
    if rtype == "MX":
        preference, host = value
        return dns.rdtypes.ANY.MX.MX(IN, rdtype, int(preference), _target(str(host)))
    if rtype == "PTR":
        return dns.rdtypes.ANY.PTR.PTR(IN, rdtype, _target(str(value)))
    if rtype == "CNAME":
        return dns.rdtypes.ANY.CNAME.CNAME(IN, rdtype, _target(str(value)))
    return dns.rdata.from_text(IN, rdtype, str(value))


class DNSServer:
    """An authoritative-for-everything DNS server on ``127.0.0.1:<free port>``.

    :param zone: initial zone data (see the module docstring).
    :param ttl: default TTL of records, seconds (read when a zone is set).
    :param negative_ttl: TTL (and SOA MINIMUM) of negative answers; default ``ttl``
        (read per answer).
    :param max_udp: the largest UDP answer sent, whatever the client's EDNS
        payload says (at least 512 is always allowed).
    :param port: the port to bind (UDP and TCP); 0 = a free one. Only for a tool
        that cannot be told a port (a resolver reading /etc/resolv.conf needs 53).
    """

    def __init__(
        self,
        zone: Mapping[str, Iterable[Any]] | None = None,
        *,
        ttl: int = 300,
        negative_ttl: int | None = None,
        max_udp: int = 1232,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._defaults = (ttl, ttl if negative_ttl is None else negative_ttl, max_udp)
        self.ttl, self.negative_ttl, self.max_udp = self._defaults
        self.host = host
        self.port = 0
        self._wanted_port = port  # 0: any free port (a tool that only speaks to port 53 needs 53)
        self._lock = threading.Lock()
        self._zone: dict[dns.name.Name, list[_Record | str]] = {}
        self._ancestors: set[dns.name.Name] = set()
        self._queries: list[Query] = []
        self._paused = False
        self._running = False
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        if zone:
            self.set_zone(zone)

    # -- lifecycle ----------------------------------------------------------------

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"`` (for ``srsd.dns.Resolver(nameservers=[...])``)."""
        return f"{self.host}:{self.port}"

    def start(self) -> DNSServer:
        """Bind UDP and TCP on one free port and serve in background threads."""
        if self._running:
            return self
        for _attempt in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, self._wanted_port))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:  # the TCP side of that port is taken: try another
                udp.close()
                tcp.close()
                continue
            tcp.listen(64)
            break
        else:  # pragma: no cover
            raise RuntimeError("no free port for both UDP and TCP")
        self._udp, self._tcp, self.port = udp, tcp, port
        self._wakeup = socket.socketpair()
        self._running = True
        for target, name in ((self._serve_udp, "udp"), (self._serve_tcp, "tcp")):
            thread = threading.Thread(target=target, name=f"dnsserver-{name}-{port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, close every socket, join the threads."""
        if not self._running:
            return
        self._running = False
        assert self._wakeup is not None
        self._wakeup[1].send(b"x")
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for sock in (self._udp, self._tcp, *self._wakeup):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = self._wakeup = None

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls ------------------------------------------------------------

    def set_zone(self, zone: Mapping[str, Iterable[Any]]) -> None:
        """Replace the whole zone (validated first: a bad record raises here)."""
        compiled: dict[dns.name.Name, list[_Record | str]] = {}
        for name, records in zone.items():
            compiled.setdefault(_key(name), []).extend(self._compile(records))
        ancestors = _ancestors(compiled)
        with self._lock:
            self._zone, self._ancestors = compiled, ancestors

    def add(self, name: str, *records: Any) -> None:
        """Append records to *name* (keeping the rest of the zone)."""
        extra = self._compile(records)
        with self._lock:
            zone = dict(self._zone)
            zone[_key(name)] = [*zone.get(_key(name), []), *extra]
            self._zone, self._ancestors = zone, self._ancestors | _ancestors([_key(name)])

    def _compile(self, records: Iterable[Any]) -> list[_Record | str]:
        if isinstance(records, (str, Mapping)):
            records = [records]
        out: list[_Record | str] = []
        for item in records:
            if item == TIMEOUT:
                out.append(TIMEOUT)
                continue
            if not isinstance(item, Mapping):
                raise ValueError(f"bad zone record {item!r}")
            ttl = int(item.get("ttl", self.ttl))
            for rtype, value in item.items():
                if rtype == "ttl":
                    continue
                rtype = rtype.upper()
                rdtype = dns.rdatatype.from_text(rtype)
                if value == TIMEOUT:
                    out.append(_Record(rdtype, None, ttl))
                elif rtype in ("TXT", "SPF") and value == "NONE":
                    continue
                else:
                    out.append(_Record(rdtype, _rdata(rtype, value), ttl))
        return out

    def pause(self) -> None:
        """Drop every query from now on (a dead server) until :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def queries(self) -> list[Query]:
        """Every query received since the last :meth:`reset_counts`, oldest first."""
        with self._lock:
            return list(self._queries)

    @property
    def query_count(self) -> int:
        with self._lock:
            return len(self._queries)

    def count(self, name: str | None = None, qtype: str | None = None) -> int:
        """Queries received for *name* and/or *qtype* (any when None)."""
        try:
            key = None if name is None else _key(name)
        except dns.exception.DNSException:
            return 0  # an impossible name cannot have been asked for
        return sum(
            1
            for q in self.queries
            if (key is None or _key(q.name) == key) and (qtype is None or q.qtype == qtype.upper())
        )

    def reset_counts(self) -> None:
        with self._lock:
            self._queries.clear()

    def reset(self) -> None:
        """Empty zone, not paused, no queries counted, constructor TTLs and UDP limit."""
        self.ttl, self.negative_ttl, self.max_udp = self._defaults
        self.set_zone({})
        self.resume()
        self.reset_counts()

    # -- answering ------------------------------------------------------------------

    def _lookup(self, qname: dns.name.Name, rdtype: int) -> tuple[int, list[dns.rrset.RRset]] | None:
        """(rcode, answer RRsets), or None to drop the query."""
        with self._lock:
            zone, ancestors = self._zone, self._ancestors
        answer: list[dns.rrset.RRset] = []
        owner, seen = qname, set()
        for _hop in range(_MAX_CNAME_CHAIN):
            key = _key(owner)
            seen.add(key)
            entries = zone.get(key)
            if entries is None:
                return (dns.rcode.NOERROR if key in ancestors else dns.rcode.NXDOMAIN), answer
            matches: list[_Record] = []
            cnames: list[_Record] = []
            for entry in entries:
                if entry == TIMEOUT:
                    if not matches and not cnames:
                        return None
                    break
                assert isinstance(entry, _Record)
                if entry.rdata is None:
                    if entry.rdtype == rdtype:
                        return None
                    continue
                if entry.rdtype == rdtype:
                    matches.append(entry)
                elif entry.rdtype == dns.rdatatype.CNAME:
                    cnames.append(entry)
            if matches:
                answer.append(self._rrset(owner, rdtype, matches))
                return dns.rcode.NOERROR, answer
            if not cnames:
                return dns.rcode.NOERROR, answer
            answer.append(self._rrset(owner, dns.rdatatype.CNAME, cnames[:1]))
            owner = cnames[0].rdata.target  # type: ignore[union-attr]
            if _key(owner) in seen:  # a loop: stop like an authoritative server
                return dns.rcode.NOERROR, answer
        return dns.rcode.NOERROR, answer

    @staticmethod
    def _rrset(owner: dns.name.Name, rdtype: int, records: list[_Record]) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(owner, IN, rdtype)
        ttl = min(r.ttl for r in records)
        for record in records:
            rrset.add(record.rdata, ttl)  # type: ignore[arg-type]
        return rrset

    def _soa(self) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(dns.name.root, IN, dns.rdatatype.SOA)
        soa = dns.rdtypes.ANY.SOA.SOA(
            IN,
            dns.rdatatype.SOA,
            dns.name.from_text("ns.test."),
            dns.name.from_text("hostmaster.test."),
            1,
            3600,
            600,
            86400,
            self.negative_ttl,
        )
        rrset.add(soa, self.negative_ttl)
        return rrset

    def _respond(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query message, or None to stay silent."""
        try:
            request = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            if len(wire) < 12:
                return None
            # FORMERR with the request's ID and opcode, no question
            flags = (struct.unpack("!H", wire[2:4])[0] & 0x7800) | dns.flags.QR | dns.rcode.FORMERR
            return struct.pack("!HHHHHH", struct.unpack("!H", wire[:2])[0], flags, 0, 0, 0, 0)
        if len(request.question) != 1:
            return None
        question = request.question[0]
        name, qtype = _text(_key(question.name)), dns.rdatatype.to_text(question.rdtype)
        result = None if self._paused else self._lookup(question.name, question.rdtype)
        with self._lock:
            self._queries.append(Query(name, qtype, transport, result is not None))
        if result is None:
            return None
        rcode, answer = result
        response = dns.message.make_response(request)
        response.flags |= dns.flags.AA
        response.set_rcode(rcode)
        response.answer = answer
        if rcode == dns.rcode.NXDOMAIN or not answer or answer[-1].rdtype != question.rdtype:
            response.authority = [self._soa()]  # negative answer: SOA for its TTL (RFC 2308)
        if transport == "tcp":
            return response.to_wire(max_size=65535)
        limit = 512
        if request.edns >= 0:
            limit = max(512, min(request.payload, self.max_udp))
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer, response.authority, response.additional = [], [], []
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    # -- network loops ----------------------------------------------------------------

    def _serve_udp(self) -> None:
        assert self._udp is not None and self._wakeup is not None
        udp, wake = self._udp, self._wakeup[0]
        while self._running:
            readable, _, _ = select.select([udp, wake], [], [])
            if wake in readable or not self._running:
                return
            try:
                wire, peer = udp.recvfrom(65535)
            except OSError:
                continue
            reply = self._respond(wire, "udp")
            if reply is not None:
                try:
                    udp.sendto(reply, peer)
                except OSError:
                    pass

    def _serve_tcp(self) -> None:
        assert self._tcp is not None and self._wakeup is not None
        listener, wake = self._tcp, self._wakeup[0]
        while self._running:
            readable, _, _ = select.select([listener, wake], [], [])
            if wake in readable or not self._running:
                return
            try:
                conn, _peer = listener.accept()
            except OSError:
                continue
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(_TCP_IDLE)
        try:
            while self._running:
                header = _recv_exactly(conn, 2)
                if header is None:
                    return
                wire = _recv_exactly(conn, struct.unpack("!H", header)[0])
                if wire is None:
                    return
                reply = self._respond(wire, "tcp")
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


_TXT_LINE = re.compile(r"^(\S+)\.\s+IN\s+TXT\s+(\".*\")\s*$")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def zone_records(text: str) -> dict[str, list[str]]:
    """The TXT records of zone-file *text* (what dkim-keygen and dns-records print):
    {name: [character-string, ...]}; every line that is neither empty nor a comment
    must be one."""
    records: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        match = _TXT_LINE.match(line)
        assert match, f"not a TXT record line: {line!r}"
        strings = [re.sub(r"\\(.)", r"\1", s) for s in _QUOTED.findall(match.group(2))]
        assert strings and all(len(s.encode()) <= 255 for s in strings), line
        assert match.group(1) not in records, f"{match.group(1)} printed twice"
        records[match.group(1)] = strings
    return records
