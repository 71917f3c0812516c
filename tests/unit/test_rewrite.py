"""Forwarding decisions: local domains, re-lookup stability, fallback keys."""

import pytest

from srsd.domains import DomainSet
from srsd.rewrite import FOUND, NOTFOUND, REVERSE_NOT_OURS, Rewriter
from srsd.srs import SRS

NOW = 1795521600


@pytest.fixture
def rw():
    srs = SRS(["tops3cr3t", "old-secret"], "fwd.example")
    return Rewriter(srs, DomainSet(["local.example", ".sub.example", "Mixed.Example"]))


def test_plain_sender_is_rewritten(rw):
    assert rw.forward("alice@example.com", NOW) == (FOUND, "SRS0=Fl1s=JN=example.com=alice@fwd.example")


@pytest.mark.parametrize(
    "sender",
    [
        "x@local.example",
        "x@LOCAL.EXAMPLE",
        "x@a.sub.example",
        "x@a.b.sub.example",
        "x@mixed.example",
        "x@fwd.example",  # the SRS domain is always local
        "x@FWD.example",
    ],
)
def test_local_domains_untouched(rw, sender):
    assert rw.forward(sender, NOW).status == NOTFOUND


def test_parent_notation_excludes_the_domain_itself(rw):
    assert rw.forward("x@sub.example", NOW).status == FOUND
    assert rw.forward("x@notsub.example", NOW).status == FOUND


@pytest.mark.parametrize("key", ["", '""', "user", "@example.com", "user@"])
def test_null_sender_and_canonical_fallback_keys(rw, key):
    # "user" and "@domain" are canonical(5) fallback lookups: answering them would
    # rewrite a whole domain to one address.
    assert rw.forward(key, NOW).status == NOTFOUND


def test_result_is_stable_under_relookup(rw):
    first = rw.forward("alice@example.com", NOW)
    assert rw.forward(first.text, NOW).status == NOTFOUND
    back = rw.reverse(first.text, NOW)
    assert back == (FOUND, "alice@example.com")
    assert rw.reverse(back.text, NOW).status == NOTFOUND


def test_srs1_relookup_chain(rw):
    srs1 = rw.forward("SRS0=abcd=AB=orig.example=carol@hop1.example", NOW)
    assert srs1.text == "SRS1=KIT+=hop1.example==abcd=AB=orig.example=carol@fwd.example"
    assert rw.forward(srs1.text, NOW).status == NOTFOUND
    hop = rw.reverse(srs1.text, NOW)
    assert hop == (FOUND, "SRS0=abcd=AB=orig.example=carol@hop1.example")
    # Postfix looks the SRS0 at hop1 up again: not ours, not found.
    assert rw.reverse(hop.text, NOW).status == NOTFOUND


def test_always_rewrite_never_rewrites_own_srs():
    rw = Rewriter(SRS(["s"], "fwd.example"), DomainSet(["local.example"]), always_rewrite=True)
    assert rw.forward("x@local.example", NOW).status == FOUND
    out = rw.forward("x@fwd.example", NOW)
    assert out.status == FOUND
    assert rw.forward(out.text, NOW).status == NOTFOUND


def test_malformed_foreign_srs1_is_wrapped_so_its_bounce_returns(rw):
    sender = "SRS1=Xa1b=6ppn=3g=orig.example=user@hop2.example"
    out = rw.forward(sender, NOW)
    assert out.status == FOUND and out.text.startswith("SRS0=")
    assert rw.reverse(out.text, NOW) == (FOUND, sender)


@pytest.mark.parametrize(
    "sender",
    [
        "SRS0=2yAB=M5=example.org=user@fnet",  # fuzz/corpus/srs/crash-srs0-dotless-hop
        "SRS0=abcd=AB=orig.example=carol@hop1.example.",
        "SRS0=abcd=AB=orig.example=carol@.hop1.example",
    ],
)
def test_foreign_srs0_that_cannot_be_a_first_hop_is_wrapped(rw, sender):
    # As SRS1 its reverse would be refused ("first hop is not a domain"): the bounce lost.
    out = rw.forward(sender, NOW)
    assert out.status == FOUND and out.text.startswith("SRS0=")
    assert rw.reverse(out.text, NOW) == (FOUND, sender)


@pytest.mark.parametrize("sender", ["user@exa=mple.org", "SRS0=abcd=AB=o.example=c@hop=1.example"])
def test_sender_whose_domain_holds_the_separator_is_left_alone(rw, sender):
    # An SRS0 address for it would not reverse: its "=" splits the fields differently.
    assert rw.forward(sender, NOW).status == NOTFOUND


@pytest.mark.parametrize(
    "sender",
    [
        '"a@b"@example.org',
        # wrapped whole before (fuzz/corpus/srs/crash-at-in-srs1-local): "SRS0=...=SRS1=...@...@fwd.example"
        "SRS1=DBXV=first-hop.example=+ATf0=NP=orig.example=alice@x.example@second-hop.example",
        "SRS0=abcd=AB=orig.example=carol@x.example@hop1.example",
    ],
)
def test_malformed_sender_is_left_alone(rw, sender):
    assert rw.forward(sender, NOW).status == NOTFOUND


def test_oversize_result_is_not_found(rw):
    assert rw.forward('"' + "x" * 1300 + '"@lists.example.org', NOW).status == NOTFOUND


def test_reverse_only_at_the_srs_domain(rw):
    assert rw.reverse("SRS0=Fl1s=JN=example.com=alice@other.example", NOW).text in REVERSE_NOT_OURS
    assert rw.reverse("SRS0=Fl1s=JN=example.com=alice@FWD.EXAMPLE", NOW) == (FOUND, "alice@example.com")


def test_forged_reverse_is_not_found_with_reason(rw):
    answer = rw.reverse("SRS0=AAAA=JN=example.com=alice@fwd.example", NOW)
    assert answer.status == NOTFOUND
    assert "does not verify" in answer.text
    assert answer.text not in REVERSE_NOT_OURS


def test_ordinary_recipients_fast_path(rw):
    assert rw.reverse("postmaster@fwd.example", NOW).text in REVERSE_NOT_OURS
    assert rw.reverse("", NOW).status == NOTFOUND


def test_local_domains_container():
    d = DomainSet([" Example.COM. ", ".Parent.org", ""])
    assert "example.com" in d and "EXAMPLE.com" in d
    assert "x.parent.org" in d and "parent.org" not in d
    assert "example.org" not in d
    assert len(d) == 2


def test_reverse_domains_for_a_renamed_srs_domain():
    old = Rewriter(SRS(["s"], "old.example"), DomainSet([]))
    new = Rewriter(SRS(["s"], "new.example"), DomainSet([]), reverse_domains=["OLD.example"])
    minted = old.forward("a@example.org", NOW).text
    assert new.reverse(minted, NOW) == (FOUND, "a@example.org")
    assert new.forward("a@example.org", NOW).text.endswith("@new.example")
