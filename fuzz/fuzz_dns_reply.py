"""Fuzz target: srsd's DNS reply reader (:mod:`srsd.dns_wire`), against dnspython's.

Input: one byte choosing the question (bits 0-2: the type, A AAAA MX PTR TXT SPF CNAME and
A again; bits 3-5: one of eight names; bit 6: the reply came over TCP; bit 7: the reply's
id is not the query's), then the reply as it came off the wire.

Invariants:

* :func:`~srsd.dns_wire.read_reply` returns a :class:`~srsd.dns_wire.Reading`, or raises
  only :class:`~srsd.dns_wire.Unusual` (dnspython reads that one) or, over UDP,
  ``dns.message.Truncated``;
* whatever it reads, dnspython's resolver reads the same (:func:`~srsd.dns_wire.
  read_with_dnspython`): the same kind, records and rcode, an expiry within a second; a
  reply dnspython refuses (and drops the server for) is never read;
* ``Truncated`` only where dnspython says so too.
"""

from __future__ import annotations

import struct

from fuzz.harness import expect, instrumented, main

with instrumented(__name__):
    import dns.message

    from srsd.dns_wire import Reading, Unusual, read_reply, read_with_dnspython

__all__ = ["NAMES", "QTYPES", "question_of", "test_one_input"]

QTYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME", "A")
NAMES = ("example.org", "Mixed.Example.ORG", "_spf.a.b.example.com", "1.2.0.192.in-addr.arpa",
         "x", "a b.example", "xn--bcher-kva.example", "example.org.")  # fmt: skip


def question_of(head: int) -> tuple[str, str, bool, bool]:
    """(name, type, over TCP, id mismatched) that the first input byte *head* chooses."""
    return NAMES[(head >> 3) & 7], QTYPES[head & 7], bool(head & 0x40), bool(head & 0x80)


def _outcome(reader, wire: bytes, qid: int, name: str, qtype: str, tcp: bool) -> object:
    try:
        return reader(wire, qid, name, qtype, tcp=tcp)
    except Unusual:
        return "unusual"
    except dns.message.Truncated:
        return "truncated"
    except Exception as exc:  # dnspython refuses the reply
        return f"refused: {type(exc).__name__}"


def test_one_input(data: bytes) -> None:
    """*data*: a question byte and a reply (module docstring).

    :raises AssertionError: an invariant of the module docstring broke.
    """
    if len(data) < 3:
        return
    name, qtype, tcp, mismatched = question_of(data[0])
    wire = data[1:]
    qid = struct.unpack("!H", wire[:2])[0] ^ (1 if mismatched else 0)
    try:
        ours = read_reply(wire, qid, name, qtype, tcp=tcp)
    except Unusual:
        return
    except dns.message.Truncated:
        ours = "truncated"
    theirs = _outcome(read_with_dnspython, wire, qid, name, qtype, tcp)
    if ours == "truncated":
        expect(not tcp and theirs == "truncated", "truncated where dnspython is not", wire, theirs)
        return
    expect(isinstance(theirs, Reading), "read a reply dnspython refuses", wire, ours, theirs)
    assert isinstance(ours, Reading) and isinstance(theirs, Reading)
    same = (ours.kind, ours.records, ours.rcode) == (theirs.kind, theirs.records, theirs.rcode)
    expect(same and abs(ours.expires - theirs.expires) < 1.0, "read otherwise than dnspython", wire, ours, theirs)


if __name__ == "__main__":
    main(test_one_input)
