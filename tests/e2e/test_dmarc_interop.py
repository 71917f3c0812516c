"""srsd's DMARC verdicts against Mail::DMARC 1.20211209 and OpenDMARC 1.4.2 (Debian).

All three evaluate the same messages (From: domain, SPF result for MAIL FROM, DKIM
results) against the same loopback DNS zone: Mail::DMARC through Net::DNS
(tests/maildmarc.py), OpenDMARC as the real milter fed over the milter protocol, its
SPF/DKIM results in a trusted Authentication-Results field, its resolver pointed at the
zone from a private mount namespace (tests/opendmarc.py). Both implement RFC 7489
(Organizational Domain from the public suffix list); srsd RFC 9989 (DNS tree walk).
Where the RFCs agree the verdicts must be equal: result, and for a failure the policy
applied. Where they differ (tree walk vs PSL, np, psd, t, pct, several records, DNS
failure) each case asserts every side of the documented difference (docs/dmarc.md), so a
change on any side shows up.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from srsd.dmarc import DKIMOutcome, ResolverDNS, evaluate
from srsd.dns import Resolver
from tests import maildmarc, opendmarc
from tests.maildmarc import Case

A = {"A": "192.0.2.1"}

ZONE = {
    # example.com: p=reject, relaxed
    "_dmarc.example.com": [{"TXT": "v=DMARC1; p=reject; rua=mailto:agg@example.com"}],
    "example.com": [A],
    "mail.example.com": [A],
    # example.org: p=reject, sp=quarantine, np=reject
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=reject; sp=quarantine; np=reject"}],
    "example.org": [A],
    "shop.example.org": [A],
    # example.co.uk: strict DKIM, relaxed SPF
    "_dmarc.example.co.uk": [{"TXT": "v=DMARC1; p=quarantine; adkim=s; aspf=r"}],
    "example.co.uk": [A],
    # example.net: no record at the organization, one in the middle of the tree
    "example.net": [A],
    "_dmarc.b.example.net": [{"TXT": "v=DMARC1; p=reject"}],
    "a.b.example.net": [A],
    # a public suffix publishing a PSD policy (RFC 9989 psd=y)
    "_dmarc.co.uk": [{"TXT": "v=DMARC1; p=none; sp=reject; psd=y"}],
    "widgets.co.uk": [A],
    "news.widgets.co.uk": [A],
    # testing: RFC 7489's pct=0 and RFC 9989's t=y
    "_dmarc.pct.example.com": [{"TXT": "v=DMARC1; p=reject; pct=0"}],
    "pct.example.com": [A],
    "_dmarc.testing.example.com": [{"TXT": "v=DMARC1; p=reject; t=y"}],
    "testing.example.com": [A],
    # two DMARC records at one name
    "_dmarc.twice.example.com": [{"TXT": "v=DMARC1; p=none"}, {"TXT": "v=DMARC1; p=none; fo=1"}],
    "twice.example.com": [A],
    # a policy that cannot be read right now
    "_dmarc.slow.example.com": ["TIMEOUT"],
    "slow.example.com": [A],
}


@dataclass(frozen=True)
class Expect:
    """srsd's (result, policy), Mail::DMARC's (result, disposition) and OpenDMARC's
    (result, p= of its comment, for a failure); None = the same as the other side."""

    srsd: tuple[str, str | None] | None = None
    mail_dmarc: tuple[str, str] | None = None
    why: str = ""
    opendmarc: tuple[str, str | None] | None = None  # None: equal to srsd


CASES: dict[str, tuple[Case, Expect]] = {
    "pass via SPF (relaxed)": (Case("example.com", "pass", "mail.example.com"), Expect()),
    "pass via SPF (strict)": (Case("example.com", "pass", "example.com"), Expect()),
    "pass via DKIM": (Case("example.com", dkim=(("pass", "example.com"),)), Expect()),
    "pass via DKIM of a subdomain": (Case("example.com", dkim=(("pass", "mail.example.com"),)), Expect()),
    "fail: unaligned SPF, failed DKIM": (
        Case("example.com", "pass", "evil.example.net", (("fail", "example.com"),)),
        Expect(),
    ),
    "fail: SPF softfail": (Case("example.com", "softfail", "example.com"), Expect()),
    "none: no record": (Case("example.net", "pass", "example.net"), Expect()),
    "subdomain policy sp": (Case("shop.example.org"), Expect()),
    "subdomain passes": (Case("shop.example.org", "pass", "example.org"), Expect()),
    "strict DKIM alignment fails": (
        Case("example.co.uk", dkim=(("pass", "mail.example.co.uk"),)),
        Expect(opendmarc=("pass", None)),  # OpenDMARC 1.4.2 does not apply adkim=s here
    ),
    "relaxed SPF alignment passes": (Case("example.co.uk", "pass", "bounce.example.co.uk"), Expect()),
    "strict DKIM alignment passes": (Case("example.co.uk", dkim=(("pass", "example.co.uk"),)), Expect()),
    # -- where RFC 9989 differs from RFC 7489 ---------------------------------------------------
    "np: non-existent subdomain": (
        Case("gone.example.org"),
        Expect(("fail", "reject"), ("fail", "quarantine"), "RFC 7489 has no np: sp applies", ("fail", "quarantine")),
    ),
    "tree walk: a record between the Author Domain and its PSL organization": (
        Case("a.b.example.net"),
        Expect(("fail", "reject"), ("none", "none"), "the PSL skips b.example.net", ("none", None)),
    ),
    "tree walk: aligned through the intermediate record": (
        Case("a.b.example.net", "pass", "mail.b.example.net"),
        Expect(("pass", "reject"), ("none", "none"), "no record for RFC 7489 at all", ("none", None)),
    ),
    "psd=y: a public suffix's policy": (
        Case("news.widgets.co.uk"),
        Expect(("fail", "reject"), ("none", "none"), "RFC 7489 never asks a public suffix", ("none", None)),
    ),
    "pct=0 is gone": (
        Case("pct.example.com"),
        Expect(("fail", "reject"), ("fail", "quarantine"), "RFC 9989 removed pct (A.6); 7489 samples out"),
    ),
    "t=y applies one level below": (
        Case("testing.example.com"),
        Expect(("fail", "quarantine"), ("fail", "reject"), "RFC 7489 has no t", ("fail", "reject")),
    ),
    "two records at the Author Domain": (
        Case("twice.example.com"),
        # both records say p=none, so OpenDMARC's pick (the first in the answer) shows as none
        Expect(("fail", "reject"), ("fail", "none"), "9989 discards both, walks on to example.com", ("fail", "none")),
    ),
    "DNS timeout": (
        Case("slow.example.com", "pass", "evil.example.net"),
        Expect(("temperror", None), ("none", "none"), "a timeout reads as no record", ("fail", "reject")),
    ),
}


@pytest.fixture(scope="module")
def verdicts(dns_server_session):
    maildmarc.require()
    dns_server_session.reset()
    dns_server_session.set_zone(ZONE)
    names = sorted(CASES)
    theirs = maildmarc.mail_dmarc([CASES[n][0] for n in names], dns_server_session.port)
    ours = {}
    for name in names:
        case = CASES[name][0]
        dns = ResolverDNS(Resolver([dns_server_session.address], timeout=1.0))
        dkim = [DKIMOutcome(r, d, "s") for r, d in case.dkim]
        ours[name] = evaluate(case.header_from, dns, spf_result=case.spf_result, spf_domain=case.spf_domain, dkim=dkim)
    yield {name: (ours[name], mine) for name, mine in zip(names, theirs, strict=True)}
    dns_server_session.reset()


def _ours(result):
    return result.result, (result.policy if result.result == "fail" else None)


def _theirs(result):
    return result.result, (result.disposition if result.result == "fail" else None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_verdict_as_mail_dmarc(verdicts, name):
    case, expect = CASES[name]
    ours, theirs = verdicts[name]
    if expect.srsd is None:
        assert _ours(ours) == _theirs(theirs), (ours, theirs)
        if ours.result == "pass":
            assert theirs.disposition == "none"
    else:  # a documented difference: both sides as documented
        srsd_result, srsd_policy = expect.srsd
        assert (ours.result, ours.policy if ours.result != "temperror" else None) == (srsd_result, srsd_policy), ours
        assert (theirs.result, theirs.disposition) == expect.mail_dmarc, theirs


def _opendmarc_results(case: Case) -> list[str]:
    """The relay.test Authentication-Results OpenDMARC trusts; smtp.mailfrom as a bare
    domain (OpenDMARC 1.4.2 does not align ``smtp.mailfrom=local@domain``)."""
    out = [f"spf={case.spf_result} smtp.mailfrom={case.spf_domain}"] if case.spf_domain else []
    return out + [f"dkim={result} header.d={domain} header.s=s" for result, domain in case.dkim]


@pytest.fixture(scope="module")
def opendmarc_verdicts(tmp_path_factory):
    opendmarc.require()
    milter = opendmarc.OpenDMARC(tmp_path_factory.mktemp("opendmarc"), ZONE).start()
    try:
        out = {}
        for n, name in enumerate(sorted(CASES)):
            case = CASES[name][0]
            sender = f"bounce@{case.spf_domain}" if case.spf_domain else "bounce@unrelated.example.net"
            out[name] = milter.evaluate(case.header_from, sender, _opendmarc_results(case), f"DMARC{n:04d}")
    finally:
        milter.stop()
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_verdict_as_opendmarc(verdicts, opendmarc_verdicts, name):
    case, expect = CASES[name]
    ours, theirs = verdicts[name][0], opendmarc_verdicts[name]
    assert theirs.header_from == case.header_from
    got = (theirs.result, theirs.policy if theirs.result == "fail" else None)
    assert got == (expect.opendmarc or _ours(ours)), (theirs.field, ours)
