"""Fuzz target: message headers as srsd's DKIM/ARC/DMARC code reads them (:mod:`srsd.mailauth`,
:mod:`srsd.dmarc`), and what the milter concludes from them.

Input: the top of a message as Postfix receives it: header lines, an empty line, a body.
It is cut into fields the way Postfix hands them to the milter (a field starts with
``name:``, name printable ASCII but ``:``; a line starting with space or tab continues
it; anything else starts the body), values kept exactly (leading space, CRLF folding).
Fields ``X-DNS: NAME TEXT`` are the DNS zone (:mod:`fuzz.zone`): DKIM keys and DMARC
records travel with the message, so a signed seed stays valid.

Invariants:

* header splitting: dkimpy reads the bytes srsd builds (``message_bytes``) back into
  exactly the same fields and body;
* ``author_domain`` names one lower-case domain or says why not, never both; when it and
  DMARC's ``author_domains`` both find one domain, it is the same one;
* ``arc_sealers`` gives sorted (instance, lower-case domain) pairs; the Authentication-
  Results occurrences ``forged_results`` deletes, highest first, leave exactly the fields
  ``without_forged`` keeps;
* ``verify_signatures`` returns one RFC 8601 DKIM result per DKIM-Signature (at most 8)
  and ``verify_arc`` a cv of none/pass/fail, neither raising;
* DMARC's verdict over those results (``check_verdict`` of fuzz_dmarc).

The Authentication-Results field srsd writes from all this, and what it then signs and
seals, are :mod:`fuzz.fuzz_signing`'s (authres, which reads the field back, is slow).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import dkim

from fuzz.harness import check_authres, expect, instrumented, main, text

with instrumented(__name__, "dkim"):
    from fuzz.fuzz_dmarc import AUTHSERV_ID, SETTINGS, check_verdict
    from fuzz.zone import Zone, parse_entry
    from srsd import dmarc
    from srsd.config import is_domain
    from srsd.mailauth.author import author_domain
    from srsd.mailauth.key_lookup import KeyLookup, txt_lookup
    from srsd.mailauth.message import HeaderField, message_bytes
    from srsd.mailauth.results import authentication_results, forged_results, without_forged
    from srsd.mailauth.verify import ARCResult, SignatureResult, verify_arc, verify_signatures

__all__ = [
    "Results",
    "authentication_results_of",
    "read_back",
    "split_message",
    "test_one_input",
    "verified",
    "zone_of",
]

_NAME = re.compile(rb"([!-9;-~]+):")
_DKIM_RESULTS = ("pass", "fail", "neutral", "permerror", "temperror")


def split_message(data: bytes) -> tuple[list[HeaderField], bytes]:
    """(fields, body) as Postfix hands *data* to the milter (see the module docstring),
    values with CRLF folding; the body with CRLF line ends."""
    lines = [line.removesuffix(b"\r") for line in data.split(b"\n")]
    fields: list[list[bytes]] = []
    start = len(lines)
    for n, line in enumerate(lines):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1][1] += b"\r\n" + line
            continue
        match = _NAME.match(line)
        if match is None:
            start = n + (line == b"")
            break
        fields.append([match.group(1), line[match.end() :]])
    return [(text(name), text(value)) for name, value in fields], b"\r\n".join(lines[start:])


def zone_of(headers: list[HeaderField], own: dict[str, str] | None = None) -> Zone:
    """The DNS zone of the message's ``X-DNS`` fields, with *own* entries (name -> TXT)
    replacing any the message has for those names."""
    own = own or {}
    entries = []
    for name, value in headers:
        entry = parse_entry(re.sub(r"\r\n", "", value).lstrip(" \t")) if name.lower() == "x-dns" else None
        if entry is not None and entry[0] not in own:
            entries.append(entry)
    return Zone([*entries, *own.items()])


def _check_splitting(headers: list[HeaderField], body: bytes) -> bytes:
    message = message_bytes(headers, body)
    fields, parsed_body = dkim.rfc822_parse(message)
    want = [[n.encode(), v.encode("utf-8", "surrogateescape") + b"\r\n"] for n, v in headers]
    expect(fields == want and parsed_body == body, "dkimpy splits srsd's message differently", message, fields)
    return message


def _check_authors(headers: list[HeaderField]) -> None:
    author = author_domain(headers)
    expect(bool(author.domain) != bool(author.problem), "author: a domain xor a problem", author)
    expect(not author.domain or (is_domain(author.domain) and author.domain == author.domain.lower()), "author", author)
    found = dmarc.author_domains([v for n, v in headers if n.strip().lower() == "from"])
    expect(bool(found.domains) != bool(found.error), "author_domains: domains xor an error", found)
    for domain in found.domains:
        expect(domain.isascii() and domain == domain.lower().rstrip(".") and len(domain) <= 253, "domain", found)
    if author.domain and len(found.domains) == 1:
        expect(found.domains[0] == author.domain, "signer and DMARC disagree on the author", author, found)


def _check_results(headers: list[HeaderField]) -> None:
    sealers = dmarc.arc_sealers(headers)
    expect(list(sealers) == sorted(sealers), "arc_sealers not sorted", sealers)
    expect(all(i >= 0 and d and d == d.lower() and not d.endswith(".") for i, d in sealers), "sealer", sealers)
    ids = [AUTHSERV_ID.upper(), *(v.strip(" \t\r\n").split(";")[0] for n, v in headers if n.lower().startswith("auth"))]
    for authserv_id in ids[:3]:
        kept = list(headers)
        occurrences = forged_results(headers, authserv_id)
        expect(occurrences == sorted(set(occurrences), reverse=True), "occurrences not highest first", occurrences)
        for occurrence in occurrences:
            where = [i for i, (n, _) in enumerate(kept) if n.lower() == "authentication-results"]
            del kept[where[occurrence - 1]]
        expect(kept == without_forged(headers, authserv_id), "deleting forged A-R != without_forged", authserv_id)


def verified(
    headers: list[HeaderField], body: bytes, lookup: KeyLookup, limit: int = 8
) -> tuple[list[SignatureResult], ARCResult]:
    """``verify_signatures`` (the top *limit* signatures) and ``verify_arc`` of a message,
    their results' shapes checked."""
    signatures = verify_signatures(headers, body, lookup, limit)
    count = sum(1 for name, _ in headers if name.lower().rstrip() == "dkim-signature")
    expect(len(signatures) == min(count, limit), "not one result per signature", count, signatures)
    expect(all(s.result in _DKIM_RESULTS for s in signatures), "DKIM results", signatures)
    arc = verify_arc(headers, body, lookup)
    expect(arc.cv in ("none", "pass", "fail") and arc.instances >= 0, "ARC result", arc)
    return signatures, arc


class Results(NamedTuple):
    """What the milter concludes about a forwarded message: its Authentication-Results
    *field*, the ARC result, and the (method, result) pairs the field must read back as."""

    field: HeaderField
    arc: ARCResult
    expected: list[tuple[str, str]]


def authentication_results_of(headers: list[HeaderField], body: bytes, own: dict[str, str] | None = None) -> Results:
    """The milter's conclusions about a forwarded message (SPF pass, every DKIM signature,
    ARC, DMARC), the verdicts' shapes checked. *own*: DNS entries that are not the message's
    to set (:func:`zone_of`)."""
    zone = zone_of(headers, own)
    signatures, arc = verified(headers, body, txt_lookup(zone))
    froms = [v for n, v in headers if n.lower() == "from"]
    chain = dmarc.ARCChain(arc.cv, dmarc.arc_sealers(headers))
    verdict = dmarc.check(froms, dmarc.ResolverDNS(zone), SETTINGS, dkim=signatures, arc=chain)
    check_verdict(verdict, read_back=False)  # fuzz_signing reads the whole field back
    field = authentication_results(AUTHSERV_ID, spf=("pass", "smtp.mailfrom", "example.org"),
                                   dkim_results=signatures, arc=arc, extra=[verdict.authres])  # fmt: skip
    expected = [("spf", "pass"), *(("dkim", s.result) for s in signatures or [SignatureResult("none")]),
                ("arc", arc.cv), ("dmarc", verdict.result.result)]  # fmt: skip
    return Results(field, arc, expected)


def read_back(results: Results) -> None:
    """The field parses with authres (:func:`fuzz.harness.check_authres`) to one result per
    method, in order, as concluded."""
    methods = [(r.method, r.result) for r in check_authres(results.field[1]).results]
    expect(methods == results.expected, "Authentication-Results read back differently", results, methods)


def test_one_input(data: bytes) -> None:
    """*data* as a message's header and body (see the module docstring).

    :raises AssertionError: an invariant of the module docstring broke.
    """
    headers, body = split_message(data)
    _check_splitting(headers, body)
    _check_authors(headers)
    _check_results(headers)
    authentication_results_of(headers, body)


if __name__ == "__main__":
    main(test_one_input)
