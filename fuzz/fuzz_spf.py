"""Fuzz target: srsd's SPF evaluator (:mod:`srsd.spf_record`, :mod:`srsd.spf_macro`,
:mod:`srsd.spf_eval`) on records anyone can publish.

Input: one byte choosing the client (bit 0: IPv6; bit 1: the HELO identity instead of
MAIL FROM; bits 2-3: which local part), then TXT text: a ``\\x00`` splits it into the
checked domain's record and the one every other name publishes (an include's, a redirect's,
an exp='s), so includes, redirects and explanations all meet hostile text. Every name has
one A and one AAAA address, three MX names (one of them the client's) and a PTR name.

Invariants:

* :func:`~srsd.spf_record.parse_record` returns a record or raises only
  :class:`~srsd.spf_record.SPFPermError`;
* check_host() returns one of RFC 7208's seven results, never raises, and asks at most
  :data:`MAX_QUESTIONS` questions (the limits of RFC 7208 4.6.4 hold whatever the record);
* the same check asked twice gives the same result (nothing leaks between checks: the
  evaluator keeps no state but its parsed records);
* its Received-SPF text is one ASCII line once srsd's policy service has written it.
"""

from __future__ import annotations

from fuzz.harness import expect, instrumented, main

with instrumented(__name__):
    from srsd.header_text import one_line
    from srsd.spf import RESULTS, check_host
    from srsd.spf_record import SPFPermError, parse_record

__all__ = ["MAX_QUESTIONS", "test_one_input"]

#: 10 lookup terms, each at most 1 + 10 MX names' addresses; 10 PTR names + their
#: addresses for %{p} and ptr; the exp= lookup; the first record
MAX_QUESTIONS = 1 + 10 * 11 + 11 + 2
_LOCALS = ("alice", "", "a.b+c", "%{l}")
_CLIENTS = ("192.0.2.1", "2001:db8::1")


class _Zone:
    """check_host's resolver: every name answers, from the two records of the input."""

    timeout = 5.0

    def __init__(self, first: bytes, rest: bytes, ip: str) -> None:
        self.first, self.rest, self.ip = first, rest, ip
        self.questions = 0

    def start_ttl_tracking(self) -> None:
        pass

    def tracked_ttl(self) -> float:
        return 60.0

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list:
        self.questions += 1
        key = (name, qtype)
        if qtype == "TXT":
            return [(key, (self.first if name == "checked.example" else self.rest,))]
        if qtype == "A":
            return [(key, "192.0.2.1" if len(name) % 2 else "198.51.100.7")]
        if qtype == "AAAA":
            return [(key, "2001:db8::1" if len(name) % 2 else "2001:db8::7")]
        if qtype == "MX":
            return [(key, (10, "mx1.example")), (key, (20, f"mx.{name}")), (key, (5, "mx2.example"))]
        if qtype == "PTR":
            return [(key, "checked.example"), (key, "host.example")]
        return []


def test_one_input(data: bytes) -> None:
    """*data*: a client byte and two records (module docstring).

    :raises AssertionError: an invariant of the module docstring broke.
    """
    if not data:
        return
    head, body = data[0], data[1:]
    first, _, rest = body.partition(b"\x00")
    text = first.decode("latin-1")
    if text.isascii():
        try:
            parse_record(text)
        except SPFPermError:
            pass
    ip = _CLIENTS[head & 1]
    sender = "" if head & 2 else f"{_LOCALS[(head >> 2) & 3]}@checked.example"
    outcomes = []
    for _ in range(2):
        zone = _Zone(first, rest, ip)
        result = check_host(zone, ip, sender, "checked.example", budget=60.0)
        expect(result.result in RESULTS, "not an RFC 7208 result", data, result)
        expect(zone.questions <= MAX_QUESTIONS, "past the lookup limits", data, zone.questions)
        outcomes.append((result.result, result.explanation, result.header))
    expect(outcomes[0][:1] == outcomes[1][:1], "the same check gave another result", data, outcomes)
    line = one_line(outcomes[0][2], 10_000)
    expect(line.isascii() and line.isprintable(), "Received-SPF not one ASCII line", data, line)


if __name__ == "__main__":
    main(test_one_input)
