"""srsd.dmarc: records, the DNS tree walk, alignment, policy, local action, A-R.

Lookups go to the real loopback DNS server (tests/dnsserver.py), which counts the
queries, through srsd's resolver (a fresh cache per test). Section numbers: RFC 9989.
"""

from __future__ import annotations

import authres
import authres.dmarc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srsd import dmarc
from srsd.config import ConfigError, parse_config
from srsd.dmarc import (
    ARCChain,
    DKIMOutcome,
    DMARCSettings,
    ResolverDNS,
    arc_sealers,
    author_domains,
    check,
    decide,
    evaluate,
    parse_record,
    walk_targets,
)
from srsd.dns import DNSTemporaryError, Resolver

A = {"A": "192.0.2.1"}


def txt(text):
    return [{"TXT": text}]


@pytest.fixture
def zone(dns_server):
    """Set the zone and return a fresh DMARCDNS over srsd's resolver (no cache carried over)."""

    def setup(records):
        dns_server.set_zone(records)
        dns_server.reset_counts()
        return ResolverDNS(Resolver([dns_server.address], timeout=0.5))

    return setup


def dmarc_queries(dns_server):
    return [q.name for q in dns_server.queries if q.name.startswith("_dmarc.")]


# -- record parsing (4.7, 4.8) ---------------------------------------------------------------


def test_record_defaults():
    record = parse_record("v=DMARC1; p=reject")
    assert (record.p, record.sp, record.np, record.adkim, record.aspf, record.t, record.psd, record.fo) == (
        "reject", None, None, "r", "r", False, "u", "0",
    )  # fmt: skip
    assert record.usable and record.invalid == () and record.ignored == ()


@pytest.mark.parametrize(
    "text",
    [
        "v=DMARC1",
        "v=DMARC1;",
        "v = DMARC1 ; p = none ;",
        " v=DMARC1;p=none",
        "V=DMARC1; p=none",  # ABNF literals are case-insensitive; only DMARC1 is not
        "v=DMARC1;\tp=quarantine",
    ],
)
def test_dmarc_records(text):
    assert parse_record(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "v=dmarc1; p=reject",  # %s"DMARC1": case-sensitive
        "p=reject; v=DMARC1",  # v must come first
        "v=DMARC1p=reject",
        "v=DMARC2; p=reject",
        "v=spf1 -all",
        "",
        "v DMARC1; p=reject",
    ],
)
def test_not_dmarc_records(text):
    assert parse_record(text) is None


def test_record_all_tags():
    record = parse_record(
        "v=DMARC1; p=Quarantine; sp=reject; np=none; adkim=s; aspf=S; t=y; psd=n; fo=1:d:s; "
        "rua=mailto:agg@example.com!10m, https://r.example/x; ruf=mailto:f@example.com"
    )
    assert (record.p, record.sp, record.np, record.adkim, record.aspf, record.t, record.psd, record.fo) == (
        "quarantine", "reject", "none", "s", "s", True, "n", "1:d:s",
    )  # fmt: skip
    assert record.rua == ("mailto:agg@example.com", "https://r.example/x")  # "!size" is obsolete (4.8)
    assert record.ruf == ("mailto:f@example.com",)


def test_removed_and_unknown_tags_are_ignored():
    record = parse_record("v=DMARC1; p=reject; pct=0; rf=afrf; ri=3600; foo=bar")
    assert record.p == "reject"  # pct=0 does not soften anything any more (A.6)
    assert record.ignored == ("pct", "rf", "ri", "foo")
    assert record.usable


def test_invalid_values_fall_back_to_defaults():
    record = parse_record("v=DMARC1; p=reject; adkim=x; aspf=; t=maybe; psd=q; fo=0:1; rua=not a uri")
    assert (record.adkim, record.aspf, record.t, record.psd, record.fo, record.rua) == ("r", "r", False, "u", "0", ())
    assert set(record.invalid) == {"adkim", "aspf", "t", "psd", "fo", "rua"}
    assert record.usable  # p is fine


@pytest.mark.parametrize(
    "text, usable",
    [
        ("v=DMARC1; p=rejectt", False),
        ("v=DMARC1; rua=mailto:a@example.com", False),  # no p: p=none only through rua (4.10.1)
        ("v=DMARC1; p=reject; sp=bogus", False),
        ("v=DMARC1; p=reject; np=", False),
        ("v=DMARC1; p=none", True),
    ],
)
def test_usable(text, usable):
    assert parse_record(text).usable is usable


def test_first_occurrence_of_a_tag_counts():
    assert parse_record("v=DMARC1; p=none; p=reject").p == "none"
    assert parse_record("v=DMARC1; p=bogus; p=reject").p is None  # the first was the bad one


# -- the tree walk (4.10) ---------------------------------------------------------------------


def test_walk_targets_short_and_long():
    assert walk_targets("a.mail.example.com") == ["a.mail.example.com", "mail.example.com", "example.com", "com"]
    assert walk_targets("com") == ["com"]
    eight = "a.b.c.d.e.f.example.com"
    assert len(eight.split(".")) == 8
    assert walk_targets(eight)[:2] == [eight, "b.c.d.e.f.example.com"]  # 8 labels: its parent has 7
    # 4.10's own example: twelve labels, eight queries
    assert walk_targets("a.b.c.d.e.f.g.h.i.j.mail.example.com") == [
        "a.b.c.d.e.f.g.h.i.j.mail.example.com",
        "g.h.i.j.mail.example.com",
        "h.i.j.mail.example.com",
        "i.j.mail.example.com",
        "j.mail.example.com",
        "mail.example.com",
        "example.com",
        "com",
    ]


def test_policy_from_the_author_domain_takes_one_query(zone, dns_server):
    dns = zone({"_dmarc.example.com": txt("v=DMARC1; p=reject; adkim=s; aspf=s"), "example.com": [A]})
    result = evaluate("example.com", dns, spf_result="pass", spf_domain="example.com")
    assert (result.result, result.policy, result.policy_domain) == ("pass", "reject", "example.com")
    assert dmarc_queries(dns_server) == ["_dmarc.example.com"]


def test_policy_walk_finds_the_organizational_domain(zone, dns_server):
    dns = zone({"_dmarc.example.com": txt("v=DMARC1; p=quarantine"), "a.mail.example.com": [A]})
    result = evaluate("a.mail.example.com", dns)
    assert (result.result, result.policy, result.policy_tag, result.policy_domain) == (
        "fail", "quarantine", "p", "example.com",
    )  # fmt: skip
    assert dmarc_queries(dns_server) == [
        "_dmarc.a.mail.example.com",
        "_dmarc.mail.example.com",
        "_dmarc.example.com",
        "_dmarc.com",  # the walk goes on to the top unless psd= stops it
    ]


def test_deep_name_costs_at_most_eight_queries(zone, dns_server):
    deep = "a.b.c.d.e.f.g.h.i.j.k.example.com"
    dns = zone({"_dmarc.example.com": txt("v=DMARC1; p=reject"), deep: [A]})
    result = evaluate(deep, dns, spf_result="pass", spf_domain="example.com")
    assert result.result == "pass"  # B.4.2
    asked = dmarc_queries(dns_server)
    assert len(asked) == dmarc.MAX_WALK_QUERIES
    assert asked[:2] == [f"_dmarc.{deep}", "_dmarc.g.h.i.j.k.example.com"]


def test_the_highest_record_is_the_organizational_domain(zone, dns_server):
    # B.4.1: records at signing.example.com and example.com: org of both is example.com
    dns = zone({
        "_dmarc.example.com": txt("v=DMARC1; p=reject"),
        "_dmarc.signing.example.com": txt("v=DMARC1; p=none"),
        "example.com": [A],
    })  # fmt: skip
    result = evaluate("example.com", dns, dkim=[DKIMOutcome("pass", "signing.example.com", "s1")])
    assert result.result == "pass"
    assert result.organizational_domain == "example.com"


def test_psd_y_makes_the_domain_below_the_organizational_domain(zone):
    # B.4.3 word for word
    records = {
        "_dmarc.bank.example": txt("v=DMARC1; p=reject; psd=y"),
        "_dmarc.giant.bank.example": txt("v=DMARC1; p=quarantine"),
        "giant.bank.example": [A],
        "mail.mega.bank.example": [A],
    }
    dns = zone(records)
    spf = evaluate("giant.bank.example", dns, spf_result="pass", spf_domain="mail.giant.bank.example")
    assert (spf.result, spf.policy, spf.policy_domain, spf.organizational_domain) == (
        "pass", "quarantine", "giant.bank.example", "giant.bank.example",
    )  # fmt: skip
    dns = zone(records)
    dkim = evaluate("giant.bank.example", dns, dkim=[DKIMOutcome("pass", "mail.mega.bank.example", "s")])
    assert dkim.result == "fail"  # mega.bank.example is another organization
    assert dkim.alignments[0].how == "relaxed: not under giant.bank.example"  # no walk needed to know


def test_psd_policy_applies_when_the_organization_publishes_none(zone):
    # 4.10.1: the PSD's record is the last choice; for the org domain's subdomains: sp/np
    dns = zone({"_dmarc.bank.example": txt("v=DMARC1; p=none; sp=quarantine; np=reject; psd=y"),
                "shop.bank.example": [A]})  # fmt: skip
    result = evaluate("shop.bank.example", dns)
    assert (result.result, result.policy, result.policy_tag, result.policy_domain) == (
        "fail", "quarantine", "sp", "bank.example",
    )  # fmt: skip
    assert result.organizational_domain is None  # no alignment was attempted
    result = evaluate("gone.bank.example", dns)
    assert (result.policy, result.policy_tag) == ("reject", "np")


def test_psd_n_stops_the_walk(zone, dns_server):
    dns = zone({
        "_dmarc.mail.example.com": txt("v=DMARC1; p=reject; psd=n"),
        "_dmarc.example.com": txt("v=DMARC1; p=none"),
        "a.mail.example.com": [A],
    })  # fmt: skip
    result = evaluate("a.mail.example.com", dns, dkim=[DKIMOutcome("pass", "example.com")])
    # the organization is mail.example.com: its p=reject (as sp) applies, and example.com
    # is not aligned with it (11.8: psd=n is how owners keep a parent's record out)
    assert (result.result, result.policy, result.policy_domain) == ("fail", "reject", "mail.example.com")
    assert "_dmarc.example.com" not in dmarc_queries(dns_server)


def test_several_records_at_one_name_are_discarded(zone, dns_server):
    dns = zone({
        "_dmarc.sub.example.com": [{"TXT": "v=DMARC1; p=none"}, {"TXT": "v=DMARC1; p=reject"}],
        "_dmarc.example.com": txt("v=DMARC1; p=quarantine"),
        "sub.example.com": [A],
    })  # fmt: skip
    result = evaluate("sub.example.com", dns)
    assert (result.policy_domain, result.policy) == ("example.com", "quarantine")


def test_other_txt_records_at_dmarc_are_ignored(zone):
    dns = zone({"_dmarc.example.com": [{"TXT": "v=spf1 -all"}, {"TXT": ["v=DMARC1; ", "p=reject"]}],
                "example.com": [A]})  # fmt: skip
    result = evaluate("example.com", dns)  # the split character-strings are joined (4.5)
    assert (result.result, result.policy) == ("fail", "reject")


def test_no_record_anywhere_is_none(zone, dns_server):
    dns = zone({"example.com": [A]})
    result = evaluate("example.com", dns, spf_result="pass", spf_domain="example.com")
    assert result.result == "none" and result.policy is None
    assert dmarc_queries(dns_server) == ["_dmarc.example.com", "_dmarc.com"]


# -- policy branches (4.7, 4.10.1) --------------------------------------------------------------


SUBDOMAIN_ZONE = {
    "_dmarc.example.com": txt("v=DMARC1; p=reject; sp=quarantine; np=none"),
    "example.com": [A],
    "exists.example.com": [A],
    "leaf.node.example.com": [A],  # node.example.com: an empty non-terminal, which exists
}


@pytest.mark.parametrize(
    "author, policy, tag",
    [
        ("example.com", "reject", "p"),
        ("exists.example.com", "quarantine", "sp"),
        ("node.example.com", "quarantine", "sp"),  # NODATA is not NXDOMAIN (A.4)
        ("gone.example.com", "none", "np"),
        ("deeper.gone.example.com", "none", "np"),
    ],
)
def test_p_sp_np(zone, author, policy, tag):
    result = evaluate(author, zone(SUBDOMAIN_ZONE))
    assert (result.result, result.policy, result.policy_tag) == ("fail", policy, tag)


@pytest.mark.parametrize(
    "record, author, policy, tag",
    [
        ("v=DMARC1; p=reject; sp=quarantine", "gone.example.com", "quarantine", "sp"),  # np absent: sp
        ("v=DMARC1; p=reject", "gone.example.com", "reject", "p"),  # neither: p
        ("v=DMARC1; p=reject; np=none", "exists.example.com", "reject", "p"),  # sp absent: p
    ],
)
def test_policy_fallbacks(zone, record, author, policy, tag):
    result = evaluate(author, zone({**SUBDOMAIN_ZONE, "_dmarc.example.com": txt(record)}))
    assert (result.policy, result.policy_tag) == (policy, tag)


def test_no_existence_query_when_np_changes_nothing(zone, dns_server):
    dns = zone({"_dmarc.example.com": txt("v=DMARC1; p=reject; sp=none; np=none")})
    assert evaluate("gone.example.com", dns).policy == "none"
    assert dns_server.count("gone.example.com", "A") == 0


@pytest.mark.parametrize("published, applied", [("reject", "quarantine"), ("quarantine", "none"), ("none", "none")])
def test_testing_applies_one_level_below(zone, published, applied):
    dns = zone({"_dmarc.example.com": txt(f"v=DMARC1; p={published}; t=y"), "example.com": [A]})
    result = evaluate("example.com", dns)
    assert (result.result, result.published, result.policy, result.testing) == ("fail", published, applied, True)


@pytest.mark.parametrize(
    "record, result, policy",
    [
        ("v=DMARC1; p=bogus; rua=mailto:agg@example.com", "fail", "none"),  # acts as p=none
        ("v=DMARC1; rua=mailto:agg@example.com", "fail", "none"),
        ("v=DMARC1; p=reject; sp=bogus; rua=mailto:agg@example.com", "fail", "none"),
        ("v=DMARC1; p=bogus", "none", None),  # no DMARC processing
        ("v=DMARC1", "none", None),
    ],
)
def test_records_without_a_valid_p(zone, record, result, policy):
    dns = zone({"_dmarc.example.com": txt(record), "example.com": [A]})
    got = evaluate("example.com", dns)
    assert (got.result, got.policy) == (result, policy)


# -- Identifier Alignment (4.4, 4.10.2) ------------------------------------------------------------


ALIGN_ZONE = {
    "_dmarc.example.com": txt("v=DMARC1; p=reject"),
    "_dmarc.strict.example.org": txt("v=DMARC1; p=reject; adkim=s; aspf=s"),
    "example.com": [A],
    "strict.example.org": [A],
}


@pytest.mark.parametrize(
    "author, spf, dkim, result",
    [
        ("example.com", ("pass", "example.com"), [], "pass"),
        ("example.com", ("pass", "bounce.example.com"), [], "pass"),  # B.1.1 example 2
        ("news.example.com", ("pass", "foo.example.com"), [], "pass"),  # siblings: Table 1
        ("example.com", ("softfail", "example.com"), [], "fail"),  # only pass authenticates
        ("example.com", ("pass", "example.net"), [], "fail"),
        ("example.com", ("none", ""), [("pass", "example.com")], "pass"),
        ("child.example.com", ("none", ""), [("pass", "example.com")], "pass"),  # B.1.2 example 2
        ("example.com", ("none", ""), [("fail", "example.com")], "fail"),
        ("example.com", ("none", ""), [("pass", "com")], "fail"),  # a parent above the org: not aligned
        ("example.com", ("none", ""), [("pass", "example.net"), ("pass", "Example.COM.")], "pass"),
        ("strict.example.org", ("pass", "mail.strict.example.org"), [], "fail"),
        ("strict.example.org", ("none", ""), [("pass", "x.strict.example.org")], "fail"),
        ("strict.example.org", ("pass", "strict.example.org"), [], "pass"),
    ],
)
def test_alignment(zone, author, spf, dkim, result):
    dns = zone(ALIGN_ZONE)
    got = evaluate(author, dns, spf_result=spf[0], spf_domain=spf[1], dkim=[DKIMOutcome(r, d) for r, d in dkim])
    assert got.result == result, got


def test_unrelated_identifiers_cost_no_walk(zone, dns_server):
    dns = zone(ALIGN_ZONE)
    dkim = [DKIMOutcome("pass", "esp.example.net"), DKIMOutcome("pass", "lists.example.org")]
    assert evaluate("example.com", dns, dkim=dkim).result == "fail"
    assert not any("example.net" in q or "example.org" in q for q in dmarc_queries(dns_server))


def test_alignment_records_each_identifier(zone):
    dns = zone(ALIGN_ZONE)
    dkim = [DKIMOutcome("pass", "mail.example.com", "s1"), DKIMOutcome("pass", "example.org")]
    got = evaluate("example.com", dns, spf_result="pass", spf_domain="example.net", dkim=dkim)
    assert got.result == "pass"
    assert [(a.method, a.domain, a.aligned) for a in got.alignments] == [
        ("spf", "example.net", False),
        ("dkim", "mail.example.com", True),
        ("dkim", "example.org", None),  # not needed after a pass
    ]


# -- DNS failures: temperror, never fail (5.3.6) ---------------------------------------------------


def test_policy_lookup_timeout_is_temperror(zone):
    dns = zone({"_dmarc.example.com": ["TIMEOUT"], "example.com": [A]})
    result = evaluate("example.com", dns, spf_result="pass", spf_domain="other.example")
    assert result.result == "temperror"
    assert "_dmarc.example.com" in result.reason


def test_walk_timeout_is_temperror(zone):
    dns = zone({"_dmarc.com": ["TIMEOUT"], "sub.example.com": [A]})
    assert evaluate("sub.example.com", dns).result == "temperror"


def test_dead_server_is_temperror(zone, dns_server):
    dns = zone(ALIGN_ZONE)
    dns_server.pause()
    assert evaluate("example.com", dns, spf_result="pass", spf_domain="evil.example").result == "temperror"


def test_undecided_identifier_gives_temperror_not_fail(zone):
    dns = zone({**ALIGN_ZONE, "_dmarc.mail.example.com": ["TIMEOUT"]})
    got = evaluate("example.com", dns, dkim=[DKIMOutcome("pass", "mail.example.com")])
    assert got.result == "temperror"
    assert got.alignments[0].aligned is None


def test_a_pass_does_not_need_the_failed_lookup(zone):
    dns = zone({**ALIGN_ZONE, "_dmarc.mail.example.com": ["TIMEOUT"]})
    got = evaluate(
        "example.com", dns, dkim=[DKIMOutcome("pass", "mail.example.com"), DKIMOutcome("pass", "example.com")]
    )
    assert got.result == "pass"


@pytest.mark.parametrize(
    "author, spf, dkim, result",
    [
        ("example.com", ("temperror", "example.com"), [], "temperror"),  # SPF could still pass and align
        ("example.com", ("temperror", "bounce.example.com"), [], "temperror"),  # relaxed: aligns too
        ("example.com", ("temperror", "example.net"), [], "fail"),  # would not align anyway
        ("example.com", ("none", ""), [("temperror", "example.com")], "temperror"),
        ("example.com", ("none", ""), [("temperror", "example.net"), ("fail", "example.com")], "fail"),
        ("example.com", ("temperror", "example.com"), [("pass", "example.com")], "pass"),  # no retry needed
        ("strict.example.org", ("temperror", "strict.example.org"), [], "temperror"),
        ("strict.example.org", ("temperror", "bounce.strict.example.org"), [], "fail"),  # aspf=s
    ],
)
def test_a_temporary_spf_or_dkim_error_that_would_align_is_temperror(zone, author, spf, dkim, result):
    dns = zone(ALIGN_ZONE)
    got = evaluate(author, dns, spf_result=spf[0], spf_domain=spf[1], dkim=[DKIMOutcome(r, d) for r, d in dkim])
    assert got.result == result, got
    if result == "temperror":
        assert "would align" in got.reason, got.reason


def test_existence_timeout_is_temperror(zone):
    dns = zone({**SUBDOMAIN_ZONE, "gone.example.com": [{"A": "TIMEOUT"}]})
    assert evaluate("gone.example.com", dns).result == "temperror"


def test_lookup_budget(dns_server):
    dns_server.set_zone(ALIGN_ZONE)
    dns = ResolverDNS(Resolver([dns_server.address], timeout=0.5), deadline=0.0)  # already spent
    result = evaluate("example.com", dns)
    assert result.result == "temperror" and "budget" in result.reason


# -- the Author Domain (5.3.1, 11.5) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "values, domains",
    [
        ([" Alice <alice@Example.COM>"], ("example.com",)),
        ([' "ceo@bank.example" <x@evil.example>'], ("evil.example",)),  # the display name is not an address
        ([" a@x.example, b@y.example, c@X.example"], ("x.example", "y.example")),
        ([" a@x.example", " b@y.example"], ("x.example", "y.example")),
        ([" =?utf-8?q?B=C3=BCcher?= <info@b\u00fccher.example>"], ("xn--bcher-kva.example",)),
        ([" Bob\r\n <bob@example.com>"], ("example.com",)),
    ],
)
def test_author_domains(values, domains):
    assert author_domains(values).domains == domains


@pytest.mark.parametrize(
    "values",
    [
        [],
        [" undisclosed-recipients:;"],
        [" <>"],
        [" garbage"],
        [" a@"],
        [" @example.com"],
        [" a@[192.0.2.1]"],
        [" a@b..example"],
        [" alice@example.com."],  # a dot-atom never ends in a dot
        [" alice@example.org)<bob@example.com>"],  # parsers disagree on which one it is
        [" a@bank.example (x) <b@evil.example>"],
        [" Bob <bob@ex ample.com>"],
        [" x@" + "a" * 64 + ".example"],
    ],
)
def test_unusable_from_is_an_error(values):
    got = author_domains(values)
    assert got.domains == () and got.error


def test_check_permerror_for_a_garbage_from(zone, dns_server):
    dns = zone(ALIGN_ZONE)
    verdict = check([" alice@example.org)<bob@example.com>"], dns)
    assert verdict.result.result == "permerror"
    assert verdict.decision.disposition == "accept"
    assert dns_server.query_count == 0


def test_check_takes_the_most_severe_author_domain(zone):
    dns = zone({**ALIGN_ZONE, "_dmarc.example.net": txt("v=DMARC1; p=quarantine"), "example.net": [A]})
    verdict = check([" a@example.net, b@example.com"], dns, spf_result="pass", spf_domain="example.net")
    assert [r.result for r in verdict.results] == ["pass", "fail"]
    assert (verdict.result.author_domain, verdict.result.policy) == ("example.com", "reject")


def test_check_refuses_too_many_author_domains(zone, dns_server):
    dns = zone(ALIGN_ZONE)
    verdict = check([", ".join(f" a@d{n}.example" for n in range(dmarc.MAX_AUTHOR_DOMAINS + 1))], dns)
    assert verdict.result.result == "permerror" and dns_server.query_count == 0


# -- the local decision and ARC -----------------------------------------------------------------------


def failing(policy, testing=False):
    return dmarc.DMARCResult("fail", "example.com", policy=policy, published=policy, testing=testing)


@pytest.mark.parametrize(
    "action, policy, disposition",
    [
        ("header", "reject", "accept"),
        ("quarantine", "reject", "quarantine"),
        ("quarantine", "quarantine", "quarantine"),
        ("quarantine", "none", "accept"),
        ("enforce", "reject", "reject"),
        ("enforce", "quarantine", "quarantine"),
        ("enforce", "none", "accept"),
        ("enforce", None, "accept"),
    ],
)
def test_actions(action, policy, disposition):
    assert decide(failing(policy), DMARCSettings(action=action)).disposition == disposition


def test_reject_reply():
    decision = decide(failing("reject"), DMARCSettings(action="enforce"))
    assert (decision.code, decision.enhanced) == ("550", "5.7.1")
    assert "DMARC" in decision.reply and "example.com" in decision.reply  # 7.2


def test_testing_policy_is_never_rejected(zone):
    dns = zone({"_dmarc.example.com": txt("v=DMARC1; p=reject; t=y"), "example.com": [A]})
    verdict = check([" x@example.com"], dns, DMARCSettings(action="enforce"))
    assert (verdict.result.policy, verdict.decision.disposition) == ("quarantine", "quarantine")


@pytest.mark.parametrize("result", ["pass", "none", "permerror"])
def test_only_fail_is_enforced(result):
    assert (
        decide(dmarc.DMARCResult(result, "example.com", policy="reject"), DMARCSettings(action="enforce")).disposition
        == "accept"
    )


@pytest.mark.parametrize(
    "action, temperror, disposition",
    [("header", "defer", "accept"), ("enforce", "defer", "defer"), ("quarantine", "accept", "accept")],
)
def test_temperror(action, temperror, disposition):
    decision = decide(dmarc.DMARCResult("temperror", "example.com"), DMARCSettings(action=action, temperror=temperror))
    assert decision.disposition == disposition
    if disposition == "defer":
        assert decision.code == "451"


TRUSTED = DMARCSettings(action="enforce", trusted_arc_sealers=("lists.example",))


@pytest.mark.parametrize(
    "arc, disposition, override",
    [
        (ARCChain("pass", ((1, "lists.example"),)), "accept", True),
        (ARCChain("pass", ((1, "other.example"), (2, "lists.example"))), "accept", True),
        (ARCChain("pass", ((1, "lists.example"), (2, "other.example"))), "reject", False),  # newest untrusted
        (ARCChain("fail", ((1, "lists.example"),)), "reject", False),
        (ARCChain("none", ()), "reject", False),
        (None, "reject", False),
    ],
)
def test_arc_override(arc, disposition, override):
    decision = decide(failing("reject"), TRUSTED, arc)
    assert decision.disposition == disposition
    assert bool(decision.override) is override


def test_arc_override_is_recorded_as_a_fail(zone):
    dns = zone(ALIGN_ZONE)
    verdict = check([" x@example.com"], dns, TRUSTED, spf_result="pass", spf_domain="lists.example",
                    arc=ARCChain("pass", ((1, "lists.example"),)))  # fmt: skip
    text = str(verdict.authres)
    assert text.startswith("dmarc=fail (p=reject dis=none)")
    assert 'reason="local policy: ARC chain sealed by trusted lists.example"' in text
    assert "policy.dmarc=reject" in text and "header.from=example.com" in text


def test_arc_sealers():
    headers = [
        ("ARC-Seal", " i=2; a=rsa-sha256; cv=pass; d=Lists.Example.;\r\n\ts=s2; t=1; b=abc"),
        ("Subject", " x"),
        ("arc-seal", " i=1; a=rsa-sha256; cv=none; d=origin.example; s=s1; b=def"),
        ("ARC-Seal", " i=x; d=broken.example; b=g"),
        ("ARC-Seal", " i=3; s=nodomain; b=h"),
    ]
    assert arc_sealers(headers) == ((1, "origin.example"), (2, "lists.example"))
    assert ARCChain("pass", arc_sealers(headers)).newest_sealer == "lists.example"


# -- Authentication-Results (RFC 8601, RFC 9989 9.1 / 9.2) ------------------------------------------------


def test_authentication_results_round_trip(zone):
    dns = zone(
        {"_dmarc.example.com": txt("v=DMARC1; p=reject; sp=quarantine"), "example.com": [A], "sub.example.com": [A]}
    )
    results = [
        check([" a@example.com"], dns, spf_result="pass", spf_domain="example.com").authres,
        check([" a@sub.example.com"], dns).authres,
        check([" a@example.net"], dns).authres,
        check([" garbage"], dns).authres,
    ]
    features = authres.FeatureContext(authres.dmarc)
    header = features.header(authserv_id="fwd.example", results=results)
    parsed = features.parse("Authentication-Results: " + str(header).split(": ", 1)[1]).results
    assert [(r.result, r.header_from, r.policy) for r in parsed] == [
        ("pass", "example.com", "reject"),
        ("fail", "sub.example.com", "quarantine"),
        ("none", "example.net", None),
        ("permerror", None, None),
    ]
    assert str(results[0]) == "dmarc=pass (p=reject dis=none) header.from=example.com policy.dmarc=reject"
    assert str(results[1]) == "dmarc=fail (sp=quarantine dis=none) header.from=sub.example.com policy.dmarc=quarantine"


def test_reasons_in_the_comment_are_one_escaped_line(zone):
    dns = zone(ALIGN_ZONE)
    text = str(check([" a@x (c) <b@example.com>\r\n\t(more)"], dns).authres)
    assert text.startswith("dmarc=permerror (malformed From: field ") and "\r" not in text and "\n" not in text
    # every parenthesis in the reason escaped: the comment closes where authres expects
    inner = text[len("dmarc=permerror (") : text.rindex(")")]
    assert all(inner[i - 1] == "\\" for i, ch in enumerate(inner) if ch in "()")
    parsed = authres.FeatureContext(authres.dmarc).parse(f"Authentication-Results: fwd.example; {text}")
    assert [r.result for r in parsed.results] == ["permerror"]


def test_temperror_authentication_result(zone):
    dns = zone({"_dmarc.example.com": ["TIMEOUT"]})
    text = str(check([" a@example.com"], dns).authres)
    assert text.startswith("dmarc=temperror (") and "header.from=example.com" in text
    assert "policy.dmarc" not in text


# -- settings: [dmarc] in srsd.config ------------------------------------------------------------------


def dmarc_section(tmp_path, table):
    (tmp_path / "s").write_text("x\n")
    return parse_config({"srs": {"domain": "fwd.example", "secrets_file": str(tmp_path / "s")}, "dmarc": table})


def test_settings_defaults(tmp_path):
    assert dmarc_section(tmp_path, {}).dmarc == DMARCSettings()
    assert DMARCSettings().action == "header"  # the seed's policy: check, never discard
    config = dmarc_section(tmp_path, {"action": "enforce", "trusted_arc_sealers": ["Lists.Example."],
                                      "temperror": "accept"})  # fmt: skip
    assert config.dmarc.trusted_arc_sealers == ("lists.example",)
    # an action without the milter that applies it: said, not refused
    assert any(w.startswith("dmarc.action: ") for w in config.warnings), config.warnings


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"action": "discard"}, "dmarc.action"),
        ({"action": "reject"}, "dmarc.action"),  # "enforce" says what it does: p=quarantine is held
        ({"enabled": "yes"}, "dmarc.enabled"),
        ({"temperror": "retry"}, "dmarc.temperror"),
        ({"trusted_arc_sealers": "lists.example"}, "dmarc.trusted_arc_sealers"),
        ({"trusted_arc_sealers": ["not a domain"]}, "dmarc.trusted_arc_sealers"),
        ({"trusted_arc_sealers": ["com"]}, "dmarc.trusted_arc_sealers"),
        ({"pct": 100}, "dmarc.pct"),
    ],
)
def test_settings_errors_name_the_key(tmp_path, raw, key):
    with pytest.raises(ConfigError) as info:
        dmarc_section(tmp_path, raw)
    assert str(info.value).startswith(key + ":")


# -- srsd.dns.Resolver.exists (what np needs) -----------------------------------------------------------------


def test_resolver_exists(dns_server):
    dns_server.set_zone({"host.example.com": [A], "txt.example.com": txt("x"), "a.b.example.com": [A],
                         "slow.example.com": ["TIMEOUT"]})  # fmt: skip
    resolver = Resolver([dns_server.address], timeout=0.5)
    assert resolver.exists("host.example.com")
    assert resolver.exists("txt.example.com")  # NODATA for A: exists (A.4)
    assert resolver.exists("b.example.com")  # empty non-terminal
    assert not resolver.exists("gone.example.com")
    assert not resolver.exists("below.gone.example.com")
    with pytest.raises(DNSTemporaryError):
        resolver.exists("slow.example.com")
    with pytest.raises(ValueError):
        resolver.exists("a" * 64 + ".example.com")


# -- untrusted input never raises (property tests) ----------------------------------------------------------------

_RECORDISH = st.text(alphabet=st.sampled_from(list("vV=DMARC1;pspnatdkimfuo rejctqnl:!@.,\t\x00é")), max_size=80)
_FROMISH = st.text(alphabet=st.sampled_from(list('ab@<>.,;:"()\\ \t\r\n=?[]-_é\x00')), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_RECORDISH, st.text(max_size=80)))
def test_parse_record_never_raises(text):
    record = parse_record(text)
    if record is not None:
        assert record.p in (None, "none", "quarantine", "reject")
        assert record.adkim in ("r", "s") and record.psd in ("y", "n", "u")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_FROMISH, st.text(max_size=60)), max_size=3))
def test_author_domains_never_raises(values):
    got = author_domains(values)
    assert bool(got.domains) != bool(got.error)
    for domain in got.domains:
        assert domain == domain.lower() and domain.isascii() and not domain.endswith(".")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ARC-Seal", "arc-seal", "From"]), st.text(max_size=60)), max_size=4))
def test_arc_sealers_never_raises(headers):
    for instance, domain in arc_sealers(headers):
        assert instance >= 0 and domain
