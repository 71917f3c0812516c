"""Fuzz target: DMARC policy records (:func:`srsd.dmarc.parse_record`) and what the
verdict does with them (:func:`srsd.dmarc.check`: tree walk, alignment, policy, the
``dmarc=`` result).

Input: lines of text (UTF-8, bad bytes replaced, as :class:`srsd.dmarc.ResolverDNS`
decodes TXT records). Each line, and the whole input, is parsed as a record. Lines of a
message's facts: ``from: VALUE`` (a From field), ``spf: RESULT DOMAIN``,
``dkim: RESULT DOMAIN``, ``arc: CV I SEALER``; every other line is a DNS entry
``NAME TEXT`` (:mod:`fuzz.zone`), e.g. ``_dmarc.example.org v=DMARC1; p=reject``.

Invariants:

* ``parse_record`` returns None exactly when the text does not start with the tag
  ``v=DMARC1``, else a record whose every field has its documented shape (policies among
  none/quarantine/reject, ``adkim``/``aspf`` r or s, URIs, tag names);
* ``check`` never raises; its result is one of the five, each TXT name is asked at most
  once per Author Domain (the walks share a memo), every walk stays within eight names;
  the decision is one of accept/quarantine/reject/defer and refuses only a fail under a
  quarantine or reject policy (or defers a temperror);
* the ``dmarc=`` result, written into Authentication-Results, parses back with authres
  (an RFC 8601 reader) to the same result -- whatever the record or the From field held.
"""

from __future__ import annotations

import re
from typing import Any

from fuzz.harness import check_authres, expect, instrumented, main

with instrumented(__name__):
    from fuzz.zone import Zone, parse_entry
    from srsd import dmarc
    from srsd.config import DMARCSettings

__all__ = ["AUTHSERV_ID", "SETTINGS", "check_verdict", "test_one_input"]

AUTHSERV_ID = "fwd.example.net"
# enforcing: every disposition (reject, quarantine, defer, override) reachable
SETTINGS = DMARCSettings(action="enforce", trusted_arc_sealers=("sealer.example",))
_POLICIES = (None, "none", "quarantine", "reject")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+")
_RESULTS = (dmarc.PASS, dmarc.FAIL, dmarc.NONE, dmarc.TEMPERROR, dmarc.PERMERROR)
_FACT = re.compile(r"(from|spf|dkim|arc): ?(.*)", re.DOTALL)


def check_record(text: str) -> None:
    """``parse_record(text)``: None or a well-formed record (see the module docstring)."""
    record = dmarc.parse_record(text)
    # 4.7: "v" (any case) is the first tag of the list, with the value DMARC1
    parts = [part.strip(" \t\r\n") for part in text.split(";")]
    first = next((part.partition("=") for part in parts if part), ("", "", ""))
    is_dmarc = first[0].strip(" \t\r\n").lower() == "v" and bool(first[1]) and first[2].strip(" \t\r\n") == "DMARC1"
    expect((record is not None) == is_dmarc, "record recognised wrongly", text, record)
    if record is None:
        return
    expect(record.text == text, "record text", text, record)
    expect(record.p in _POLICIES and record.sp in _POLICIES and record.np in _POLICIES, "policy", record)
    expect(record.adkim in ("r", "s") and record.aspf in ("r", "s"), "alignment mode", record)
    expect(record.psd in ("y", "n", "u") and type(record.t) is bool, "psd or t", record)
    expect(all(_URI.fullmatch(u) for u in record.rua + record.ruf), "report URI", record)
    expect(all(p in ("0", "1", "d", "s") for p in record.fo.split(":")), "fo", record)
    expect(not set(record.invalid) & set(record.ignored), "a tag both invalid and ignored", record)
    expect(record.usable == (record.p is not None and not {"p", "sp", "np"} & set(record.invalid)), "usable", record)


def check_verdict(verdict: dmarc.DMARCVerdict, *, read_back: bool = True) -> None:
    """A :func:`srsd.dmarc.check` verdict has its documented shape and (*read_back*) its
    ``dmarc=`` result parses back (:func:`check_authres`)."""
    result, decision = verdict.result, verdict.decision
    expect(result.result in _RESULTS and result in verdict.results, "verdict result", verdict)
    for one in verdict.results:
        expect(len(set(one.queried)) == len(one.queried), "a TXT name asked twice", one)
    expect(decision.disposition in ("accept", "quarantine", "reject", "defer"), "disposition", decision)
    if decision.disposition in ("quarantine", "reject"):
        expect(result.result == dmarc.FAIL and result.policy in ("quarantine", "reject"), "refused", verdict)
    if decision.disposition == "reject":
        expect(result.policy == "reject" and decision.code == "550", "rejected without p=reject", verdict)
    if decision.disposition == "defer":
        expect(result.result == dmarc.TEMPERROR and decision.code == "451", "deferred", verdict)
    if not read_back:
        return
    parsed = check_authres(f"{AUTHSERV_ID}; {verdict.authres}")
    expect([(r.method, r.result) for r in parsed.results] == [("dmarc", result.result)], "dmarc= read back", verdict)


def _facts(lines: list[str]) -> tuple[list[str], dict[str, Any], list[tuple[str, str]]]:
    """(From values, check()'s keyword arguments, zone entries) from the input's lines."""
    froms: list[str] = []
    spf: tuple[str, str] = (dmarc.NONE, "")
    dkim: list[dmarc.DKIMOutcome] = []
    sealers: list[tuple[int, str]] = []
    cv = "none"
    entries = []
    for line in lines:
        fact = _FACT.fullmatch(line)
        if fact is None:
            entry = parse_entry(line)
            if entry is not None:
                entries.append(entry)
            continue
        kind, rest = fact.groups()
        words = rest.split(" ")
        if kind == "from":
            froms.append(rest)
        elif kind == "spf" and len(words) == 2:
            spf = (words[0], words[1])
        elif kind == "dkim" and len(words) == 2:
            dkim.append(dmarc.DKIMOutcome(words[0], words[1]))
        elif kind == "arc" and len(words) == 3 and words[1].isdigit():
            cv = words[0]
            sealers.append((int(words[1]), words[2]))
    arc = dmarc.ARCChain(cv, tuple(sealers))
    return froms, {"spf_result": spf[0], "spf_domain": spf[1], "dkim": dkim, "arc": arc}, entries


def test_one_input(data: bytes) -> None:
    """*data* as records and a message's facts (see the module docstring).

    :raises AssertionError: an invariant of the module docstring broke.
    """
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    for record in {text, *lines}:
        check_record(record)
    for domain in (text, *lines[:4]):
        expect(len(dmarc.walk_targets(domain)) <= dmarc.MAX_WALK_QUERIES, "walk too long", domain)
    froms, facts, entries = _facts(lines)
    check_verdict(dmarc.check(froms, dmarc.ResolverDNS(Zone(entries)), SETTINGS, **facts))


if __name__ == "__main__":
    main(test_one_input)
