"""DNS messages as an SPF check needs them: a query, and a reply read into the records
SPF evaluation asks for (RFC 1035 4.1, 3.3; RFC 6891 6 for the OPT record; RFC 2308 5 for the
negative TTL).

Only the shapes recursive resolvers send for SPF's questions are read here: one question,
A/AAAA/MX/PTR/TXT/SPF/CNAME answers, SOA/NS authority, A/AAAA/OPT additional records, the
owner and target names in plain letters. Anything else -- another type, an EDNS option, a
name needing escapes, a pointer forward, trailing bytes -- raises :class:`Unusual`, and
the caller reads that reply with dnspython instead (:func:`read_with_dnspython`), so
every reply means the same on both paths. Why not dnspython for all: its parse, rdata
objects and Answer cost ~200 µs a reply here (docs/performance.md), most of an SPF
check's CPU; this reader costs a tenth. ``fuzz/fuzz_dns_reply.py`` checks that both
readers agree on whatever this one accepts.

A reply's reading (:class:`Reading`): ``kind`` "answer" (``records`` in srsd.dns.spf_records'
shape, every answer-section RRset, as :func:`srsd.dns.spf_records` gives them), "nodata"
or "nxdomain"; ``expires``, ``time.time()`` seconds until which it may be kept (the
smallest TTL of the CNAME chain and the answer, or for a negative answer the SOA's
``min(TTL, MINIMUM)``, dnspython's ``Answer.expiration``); or ``kind`` "error" for any
other rcode (the server failed: try the next one).
"""

from __future__ import annotations

import functools
import socket
import struct
import time
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

__all__ = ["QTYPES", "Reading", "Unusual", "query_wire", "read_reply", "read_with_dnspython"]

#: the types SPF evaluation asks for -> their code (SPF, type 99, kept for callers that ask for it)
QTYPES = {"A": 1, "AAAA": 28, "MX": 15, "PTR": 12, "TXT": 16, "SPF": 99, "CNAME": 5}
_TYPE_TEXT = {code: text for text, code in QTYPES.items()}
_NS, _SOA, _OPT = 2, 6, 41
_SINGLETONS = (5, _SOA)  # an RRset of one RR (dnspython.rdatatype.is_singleton)
_IN = 1
_PAYLOAD = 1232  # EDNS UDP payload size: dnspython's default (DNS flag day 2020)
_MAX_CHAIN = 16  # CNAMEs followed: dnspython.message.MAX_CHAIN
_MAX_POINTERS = 16  # compression pointers in one name: dnspython.name.MAX_COMPRESSION_POINTER_CHAIN
_NEGATIVE_TTL_WITHOUT_SOA = 300  # dnspython.message.NEGATIVE_TTL_WITHOUT_SOA
_PLAIN = frozenset(range(0x21, 0x7F)) - frozenset(b'"().;\\@$')  # what dnspython's to_text leaves unescaped
_PLAIN_QUERY = frozenset(range(0x20, 0x7F)) - frozenset(b"\\@")  # what from_text reads byte for byte


class Unusual(Exception):
    """Not a shape this reader handles: read it with dnspython."""


@dataclass
class Reading:
    kind: str  # "answer", "nodata", "nxdomain", "error"
    records: list = field(default_factory=list)
    expires: float = 0.0
    rcode: int = 0


def query_wire(qid: int, name: str, qtype: str) -> bytes:
    """The query for *name*/*qtype* (RD set, EDNS0 with a 1232-byte payload), id *qid*.

    :raises ValueError: *name* is not a DNS name (an empty label, a label over 63 bytes,
        over 255 bytes in all), as dnspython's ``from_text`` says.
    """
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1) + qname_wire(name) + _question_tail(qtype)


def _question_tail(qtype: str) -> bytes:
    return struct.pack("!HH", QTYPES[qtype], _IN) + b"\x00" + struct.pack("!HHIH", _OPT, _PAYLOAD, 0, 0)


@functools.lru_cache(maxsize=4096)  # a check asks for a name up to three times (key, query, reply)
def qname_wire(name: str) -> bytes:
    """*name* in wire form (dnspython's ``from_text(name).to_wire()``).

    :raises ValueError: as :func:`query_wire`.
    """
    text = name.encode("ascii", "replace") if name.isascii() else b""
    if text and text != b"." and _PLAIN_QUERY.issuperset(text):
        labels = text[:-1].split(b".") if text.endswith(b".") else text.split(b".")
        if all(0 < len(label) < 64 for label in labels):
            wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"
            if len(wire) <= 255:
                return wire
    try:  # escapes, IDNA, "@", the limits: dnspython's reading of the text, and its errors
        return dns.name.from_text(name).to_wire()
    except dns.exception.DNSException as exc:  # a label or name too long, an empty label, a bad escape
        raise ValueError(f"bad DNS name {name!r}: {exc}") from None


class _Reader:
    """A cursor over one reply."""

    __slots__ = ("wire", "pos")

    def __init__(self, wire: bytes) -> None:
        self.wire, self.pos = wire, 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.wire):
            raise Unusual("short")
        out = self.wire[self.pos : end]
        self.pos = end
        return out

    def name(self) -> tuple[bytes, ...]:
        """Labels of the name here. As dnspython reads them: a pointer goes back, before the
        one followed last, and what it points to ends before the part that pointed."""
        wire, pos, labels, resume, size = self.wire, self.pos, [], 0, 1
        floor = start = pos
        limit, hops = len(wire), 0
        while True:
            if pos >= limit:
                raise Unusual("short name")
            n = wire[pos]
            if n == 0:
                pos += 1
                break
            if n >= 0xC0:
                if pos + 1 >= limit:
                    raise Unusual("short pointer")
                target = ((n & 0x3F) << 8) | wire[pos + 1]
                if target >= floor:
                    raise Unusual("pointer forward")
                hops += 1
                if hops > _MAX_POINTERS:
                    raise Unusual("pointer chain")
                if not resume:
                    resume = pos + 2
                limit, pos = start, target
                floor = start = target
                continue
            if n > 63:
                raise Unusual("label type")
            if pos + 1 + n > limit:
                raise Unusual("short label")
            size += n + 1
            if size > 255:
                raise Unusual("long name")
            labels.append(wire[pos + 1 : pos + 1 + n])
            pos += n + 1
        self.pos = resume or pos
        return tuple(labels)


def _text(labels: tuple[bytes, ...]) -> str:
    """dnspython's ``to_text(omit_final_dot=True)`` of a name read from the wire."""
    if not labels:
        return "."
    for label in labels:
        if not _PLAIN.issuperset(label):
            raise Unusual("escapes")
    return b".".join(labels).decode("ascii")


def _lower(labels: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(map(bytes.lower, labels))


def _is_subdomain(labels: tuple[bytes, ...], of: tuple[bytes, ...]) -> bool:
    return len(of) <= len(labels) and labels[len(labels) - len(of) :] == of


def read_reply(wire: bytes, qid: int, name: str, qtype: str, *, tcp: bool = False) -> Reading:
    """Read the reply *wire* to query *qid* for *name*/*qtype* (see the module docstring).

    :raises dns.message.Truncated: TC set on a UDP reply (ask again over TCP).
    :raises Unusual: anything this reader does not handle, a reply to another question
        included: :func:`read_with_dnspython` decides.
    """
    r = _Reader(wire)
    rid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", r.take(12))
    if rid != qid or not flags & 0x8000 or flags & 0x7800 or qd != 1:
        raise Unusual("header")  # not a response, another opcode, no single question
    if flags & 0x0200:
        if not tcp:
            raise dns.message.Truncated
        raise Unusual("truncated over TCP")
    asked = _lower(r.name())
    if asked != _asked_labels(name) or r.take(4) != struct.pack("!HH", QTYPES[qtype], _IN):
        raise Unusual("question")
    rcode = flags & 0x000F
    sections: list[list[tuple]] = [[], [], []]
    opt = 0
    for section, count in ((0, an), (1, ns), (2, ar)):
        for _ in range(count):
            owner = r.name()
            rtype, rclass, ttl, rdlength = struct.unpack("!HHIH", r.take(10))
            end = r.pos + rdlength
            if rtype == _OPT:
                if section != 2 or owner or opt or rdlength or ttl & 0xFFFF0000:
                    raise Unusual("OPT")  # options, an extended rcode: dnspython's to read
                opt += 1
                r.take(rdlength)
                continue
            if rclass != _IN or ttl >= 0x80000000:
                raise Unusual("class or TTL")
            value = _rdata(r, rtype, rdlength, section)
            if r.pos != end:
                raise Unusual("rdata length")
            sections[section].append((owner, rtype, ttl, value))
    if r.pos != len(wire):
        raise Unusual("trailing bytes")
    if rcode not in (0, 3):
        return Reading("error", rcode=rcode)
    return _reading(asked, QTYPES[qtype], rcode, name, _rrsets(sections[0]), _rrsets(sections[1]))


@functools.lru_cache(maxsize=4096)
def _asked_labels(name: str) -> tuple[bytes, ...]:
    """*name*'s labels, lower case."""
    wire, labels, pos = qname_wire(name), [], 0
    while wire[pos]:
        labels.append(wire[pos + 1 : pos + 1 + wire[pos]].lower())
        pos += wire[pos] + 1
    return tuple(labels)


def _rdata(r: _Reader, rtype: int, rdlength: int, section: int) -> object:
    if rtype == 1 and section != 1:
        if rdlength != 4:
            raise Unusual("A length")
        return socket.inet_ntop(socket.AF_INET, r.take(4))
    if rtype == 28 and section != 1:
        if rdlength != 16:
            raise Unusual("AAAA length")
        return socket.inet_ntop(socket.AF_INET6, r.take(16))
    if section == 0:
        if rtype == 15:
            (preference,) = struct.unpack("!H", r.take(2))
            return (preference, _text(r.name()), "mx")
        if rtype in (12, 5):
            labels = r.name()
            return (_text(labels), labels)
        if rtype in (16, 99):
            strings, end = [], r.pos + rdlength
            while r.pos < end:
                strings.append(r.take(r.take(1)[0]))
            if not strings:
                raise Unusual("empty TXT")  # dnspython refuses it
            return tuple(strings)
    if section == 1:
        if rtype == _SOA:
            r.name(), r.name()
            return struct.unpack("!IIIII", r.take(20))[4]  # MINIMUM
        if rtype == _NS:
            r.name()
            return None
    raise Unusual("type")


def _same(rtype: int, value: object) -> object:
    """What dnspython compares two rdatas by: names case-insensitively."""
    if rtype == 15:
        return (value[0], value[1].lower())  # type: ignore[index]
    if rtype in (12, 5):
        return _lower(value[1])  # type: ignore[index]
    return value


def _rrsets(records: list[tuple]) -> dict[tuple, tuple]:
    """RRs merged as dnspython merges them: (lower owner, type) -> (owner, TTL, values),
    in order of first appearance, the smallest TTL, each value once (a singleton type's
    last)."""
    out: dict[tuple, tuple] = {}
    seen: dict[tuple, set] = {}
    for owner, rtype, ttl, value in records:
        key = (_lower(owner), rtype)
        had = out.get(key)
        same = _same(rtype, value)
        if had is None:
            out[key] = (owner, ttl, [value])
            seen[key] = {same}
        else:
            if rtype in _SINGLETONS:  # dnspython keeps the last one (a CNAME, an SOA)
                had[2][:] = [value]
            elif same not in seen[key]:
                seen[key].add(same)
                had[2].append(value)
            out[key] = (had[0], min(had[1], ttl), had[2])
    return out


def _reading(asked: tuple, qtype: int, rcode: int, name: str, answer: dict, authority: dict) -> Reading:
    """dnspython's ``resolve_chaining``, then the records :func:`srsd.dns.spf_records` gives."""
    qname, min_ttl, final = asked, 0x7FFFFFFF, None
    for _ in range(_MAX_CHAIN):
        final = answer.get((qname, qtype))
        if final is not None:
            min_ttl = min(min_ttl, final[1])
            break
        cname = answer.get((qname, 5)) if qtype != 5 else None
        if cname is None:
            break
        min_ttl = min(min_ttl, cname[1])
        qname = _lower(cname[2][0][1])
    else:
        raise Unusual("chain too long")  # dnspython: ChainTooLong, a failed server
    if rcode == 3 and final is not None:
        raise Unusual("answer with NXDOMAIN")
    if final is None:
        minimum = None
        for (owner, rtype), (_o, ttl, values) in authority.items():
            if rtype == _SOA and _is_subdomain(qname, owner):
                # dnspython takes the SOA nearest the name: walk up from it
                if minimum is None or len(owner) > minimum[0]:
                    minimum = (len(owner), min(ttl, values[0]))
        min_ttl = min(min_ttl, minimum[1] if minimum else _NEGATIVE_TTL_WITHOUT_SOA)
        return Reading("nxdomain" if rcode == 3 else "nodata", expires=time.time() + min_ttl)
    records: list = []
    for (owner_lower, rtype), (owner, _ttl, values) in answer.items():
        text = None if owner_lower == asked else _text(owner)
        kind = _TYPE_TEXT[rtype]
        for value in values:
            if rtype in (12, 5):
                value = value[0]
            elif rtype == 15:
                value = value[:2]
            records.append(((text, kind), value))
    return Reading("answer", records, time.time() + min_ttl)


def read_with_dnspython(wire: bytes, qid: int, name: str, qtype: str, *, tcp: bool = False) -> Reading:
    """:func:`read_reply` by dnspython's parser and ``Answer``: the reference, and the
    reader of every reply :func:`read_reply` calls :class:`Unusual`.

    :raises dns.message.Truncated: TC set on a UDP reply.
    :raises Exception: a reply dnspython refuses (dnspython's resolver then drops the server).
    """
    from srsd.dns import spf_records

    request = dns.message.make_query(dns.name.from_wire(qname_wire(name), 0)[0], qtype)
    request.id = qid
    request.use_edns(0, 0, _PAYLOAD)
    response = dns.message.from_wire(wire, raise_on_truncation=not tcp)
    if not request.is_response(response):
        raise dns.exception.FormError("a reply to another question")
    rcode = response.rcode()
    if rcode == dns.rcode.NOERROR:
        answer = dns.resolver.Answer(request.question[0].name, dns.rdatatype.from_text(qtype), dns.rdataclass.IN,
                                     response)  # fmt: skip
        if answer.rrset is None:
            return Reading("nodata", expires=answer.expiration)
        asked = name.rstrip(".")
        records = [((None if owner == asked else owner, rtype), value) for (owner, rtype), value in
                   spf_records(answer, name)]  # fmt: skip
        return Reading("answer", records, answer.expiration)
    if rcode == dns.rcode.NXDOMAIN:
        answer = dns.resolver.Answer(request.question[0].name, dns.rdatatype.ANY, dns.rdataclass.IN, response)
        return Reading("nxdomain", expires=answer.expiration)
    return Reading("error", rcode=int(rcode))
