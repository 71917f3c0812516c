"""srsd.dns_wire against dnspython: every reply tests/dnsserver.py gives to the SPF
conformance suites' questions reads the same through srsd's reader and dnspython's
(fuzz/fuzz_dns_reply.py tries what no server sends), and the shapes srsd leaves to
dnspython are left to it."""

from __future__ import annotations

import struct

import dns.message
import dns.name
import pytest
import yaml

from srsd.dns_wire import QTYPES, Unusual, qname_wire, query_wire, read_reply, read_with_dnspython
from tests.dnsserver import DNSServer
from tests.spf.test_conformance import DATA, suite_zone


def scenarios():
    for suite in ("rfc7208", "rfc4408"):
        with open(DATA / f"{suite}-tests.yml", "rb") as fp:
            for number, scenario in enumerate(yaml.safe_load_all(fp)):
                yield pytest.param(suite_zone(scenario["zonedata"]), id=f"{suite}-{number}")


def same(ours, theirs) -> bool:
    return (ours.kind, ours.records, ours.rcode) == (theirs.kind, theirs.records, theirs.rcode) and abs(
        ours.expires - theirs.expires
    ) < 1


@pytest.mark.parametrize("zone", scenarios())
def test_every_reply_of_the_conformance_zones_reads_as_dnspython_reads_it(zone):
    server = DNSServer(zone)  # not started: its answers are built in process
    read = 0
    for name in [*zone, "nowhere.example.com", "MiXeD.Example.COM."]:
        for qtype in QTYPES:
            query = query_wire(4242, name, qtype)
            for transport in ("udp", "tcp"):
                reply = server._respond(query, transport)
                if reply is None:  # a TIMEOUT record
                    continue
                try:
                    theirs = read_with_dnspython(reply, 4242, name, qtype, tcp=transport == "tcp")
                except dns.message.Truncated:
                    with pytest.raises(dns.message.Truncated):
                        read_reply(reply, 4242, name, qtype)
                    continue
                except Exception:  # e.g. the empty TXT record dnspython refuses
                    with pytest.raises(Unusual):
                        read_reply(reply, 4242, name, qtype, tcp=transport == "tcp")
                    continue
                try:
                    ours = read_reply(reply, 4242, name, qtype, tcp=transport == "tcp")
                except Unusual:
                    continue
                assert same(ours, theirs), (name, qtype, ours, theirs)
                read += 1
    assert read > 0


def reply_with_answers(name: str, qtype: str, *records: bytes, flags: int = 0x8180) -> bytes:
    question = qname_wire(name) + struct.pack("!HH", QTYPES[qtype], 1)
    return struct.pack("!HHHHHH", 7, flags, 1, len(records), 0, 0) + question + b"".join(records)


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 300) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


QNAME = b"\xc0\x0c"  # a pointer to the question's name


def test_a_later_cname_replaces_an_earlier_one_as_in_dnspython():
    # two CNAMEs for one name: dnspython keeps the last (a singleton type)
    wire = reply_with_answers("a.example", "TXT", rr(QNAME, 5, qname_wire("b.example")),
                              rr(QNAME, 5, qname_wire("c.example")),
                              rr(qname_wire("c.example"), 16, b"\x05hello"))  # fmt: skip
    ours, theirs = read_reply(wire, 7, "a.example", "TXT"), read_with_dnspython(wire, 7, "a.example", "TXT")
    assert same(ours, theirs)
    assert ours.records[0] == ((None, "CNAME"), "c.example")


def test_truncation_and_what_is_left_to_dnspython():
    txt = rr(QNAME, 16, b"\x05hello")
    with pytest.raises(dns.message.Truncated):
        read_reply(reply_with_answers("a.example", "TXT", flags=0x8380), 7, "a.example", "TXT")
    unusual = {
        "a forward pointer": reply_with_answers("a.example", "TXT", rr(b"\xc0\x40", 16, b"\x01x")),
        "trailing bytes": reply_with_answers("a.example", "TXT", txt) + b"\x00",
        "another id": reply_with_answers("a.example", "TXT", txt).replace(b"\x00\x07", b"\x00\x08", 1),
        "another question": reply_with_answers("b.example", "TXT", txt),
        "an unknown type": reply_with_answers("a.example", "TXT", rr(QNAME, 46, b"\x00" * 18)),
        "a name with a space": reply_with_answers("a.example", "MX", rr(QNAME, 15, b"\x00\x01\x03a b\x00")),
        "an empty TXT": reply_with_answers("a.example", "TXT", rr(QNAME, 16, b"")),
    }
    for why, wire in unusual.items():
        with pytest.raises(Unusual):
            read_reply(wire, 7, "a.example", "TXT" if "MX" not in why else "MX")


@pytest.mark.parametrize("name", ["a" * 64 + ".example", ".".join(["abcdefghi"] * 30), "a..b.example", "bad\\escape\\"])
def test_impossible_names_are_value_errors_as_in_dnspython(name):
    with pytest.raises(ValueError):
        query_wire(1, name, "A")


@pytest.mark.parametrize("name", ["example.org", "Example.ORG.", "a b.example", "_spf.x.example", "bücher.example",
                                  "a\\.b.example", "@", "*.example"])  # fmt: skip
def test_query_names_are_dnspythons(name):
    assert qname_wire(name) == dns.name.from_text(name).to_wire()
