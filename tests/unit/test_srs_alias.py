"""The short SRS0 form for long senders (srsd/srs_alias.py) and the Rewriter around it: key
format, length, expiry, forgery, and why it never collides with a plain SRS0."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srsd.domains import DomainSet
from srsd.rewrite import ALIAS, FOUND, NOTFOUND, Rewriter
from srsd.srs import SRS, BadHash, BadTimestamp, MalformedAddress, SRSError, srs_tag
from srsd.srs_alias import KEY_LENGTH, AliasAddresses, alias_local_length

NOW = 1795521600  # 2026-11-24T12:00:00Z, day 20781, TT "JN"
DAY = 86400
LONG = "bounces+1234-abcdef0123456789=example.org@mailer.lists.example.net"  # 66 octets
SIXTY = "bounces+9876543210-abcdefghijk=example.org@lists.example.net"  # 60 octets
ALIAS_FORM = re.compile(rf"^SRS0=[A-Za-z0-9+/]{{4}}=JN==[A-Z2-7]{{{KEY_LENGTH}}}@fwd\.example$")


@pytest.fixture
def srs():
    return SRS(["tops3cr3t", "old-secret"], "fwd.example")


@pytest.fixture
def aliases(srs):
    return AliasAddresses(srs)


def test_a_60_octet_sender_gets_a_short_alias(srs, aliases):
    assert len(SIXTY) == 60
    long = srs.forward(SIXTY, NOW)
    assert len(long.split("@")[0]) > 64  # why the alias exists: 553 5.1.7 at strict receivers

    alias = aliases.shorten(long, NOW)

    assert ALIAS_FORM.match(alias.address), alias
    assert len(alias.address.split("@")[0]) == alias_local_length(4) == 30
    assert alias.target == SIXTY
    assert aliases.key_of(alias.address, NOW) == alias.key


def test_local_parts_up_to_the_limit_are_not_aliased(srs):
    aliases = AliasAddresses(srs, max_local_part=64)
    # SRS0=HHHH=TT= is 13 octets, then domain=local: 50 octets of domain and local make 64.
    at_limit = srs.forward("a" * 34 + "@" + "b" * 8 + ".example", NOW)
    over = srs.forward("a" * 35 + "@" + "b" * 8 + ".example", NOW)
    assert len(at_limit.split("@")[0]) == 64 and len(over.split("@")[0]) == 65
    assert aliases.shorten(at_limit, NOW) is None
    assert aliases.shorten(over, NOW) is not None


def test_the_key_is_derived_from_the_sender_and_the_secret(srs, aliases):
    first = aliases.shorten(srs.forward(LONG, NOW), NOW)
    a_week_later = aliases.shorten(srs.forward(LONG, NOW + 7 * DAY), NOW + 7 * DAY)
    other_sender = aliases.shorten(srs.forward(LONG.replace("1234", "1235"), NOW), NOW)
    other_secret = AliasAddresses(SRS(["another"], "fwd.example")).key(LONG)

    assert first.key == a_week_later.key  # repeats add no rows
    assert first.address != a_week_later.address  # new timestamp, new hash
    assert len({first.key, other_sender.key, other_secret}) == 3
    assert re.fullmatch(rf"[A-Z2-7]{{{KEY_LENGTH}}}", first.key)
    # The key leaks nothing readable of the sender.
    assert not any(part.upper() in first.key for part in ("BOUNCES", "EXAMPLE", "1234"))


def test_every_node_with_the_same_secrets_mints_the_same_alias(srs):
    other_node = AliasAddresses(SRS(["tops3cr3t", "old-secret"], "fwd.example"))
    mine = AliasAddresses(srs).shorten(srs.forward(LONG, NOW), NOW)
    assert other_node.shorten(srs.forward(LONG, NOW), NOW) == mine
    assert other_node.key_of(mine.address, NOW) == mine.key


def test_the_alias_leads_where_the_long_form_would(srs, aliases):
    """SRS0 and SRS1 senders keep their semantics: the target is the long form's reverse."""
    hop1 = "SRS0=abcd=AB=orig.example=" + "c" * 40 + "@hop1.example"
    long = srs.forward(hop1, NOW)
    assert long.startswith("SRS1=")
    assert aliases.shorten(long, NOW).target == srs.reverse(long, NOW) == hop1


def test_expiry_follows_the_srs0_timestamp(srs, aliases):
    alias = aliases.shorten(srs.forward(LONG, NOW), NOW)
    # Valid through day + max_age_days (21), i.e. until the end of that day.
    assert alias.expires == (NOW // DAY + 22) * DAY
    assert aliases.key_of(alias.address, NOW + 21 * DAY) == alias.key
    with pytest.raises(BadTimestamp):
        aliases.key_of(alias.address, NOW + 22 * DAY)
    with pytest.raises(BadTimestamp):
        aliases.key_of(alias.address, NOW - DAY)  # from the future


def test_any_case_verifies(srs, aliases):
    alias = aliases.shorten(srs.forward(LONG, NOW), NOW)
    assert aliases.key_of(alias.address.lower(), NOW) == alias.key  # smtpd lower-cases recipients
    assert aliases.key_of(alias.address.upper(), NOW) == alias.key


def test_old_secret_still_verifies(srs):
    old_only = AliasAddresses(SRS(["old-secret"], "fwd.example"))
    minted = old_only.mint(old_only.key(LONG), NOW)
    assert AliasAddresses(srs).key_of(minted, NOW) == old_only.key(LONG)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda a: a[:5] + ("A" if a[5].lower() != "a" else "B") + a[6:],  # hash
        lambda a: a.replace("==", "==" + ("Q" if a[a.index("==") + 2] != "Q" else "R"), 1)[:-13] + "@fwd.example",
        lambda a: a.replace("=JN=", "=JM=", 1),  # another day
    ],
    ids=["hash", "key", "timestamp"],
)
def test_forged_aliases_are_refused_before_any_store(srs, aliases, mangle):
    alias = aliases.shorten(srs.forward(LONG, NOW), NOW)
    forged = mangle(alias.address)
    assert forged != alias.address
    with pytest.raises(BadHash):
        aliases.key_of(forged, NOW)


def test_a_libsrs2_hash_with_the_same_secret_does_not_verify(srs, aliases):
    """A plain SRS0 signer (PostSRSd, Mail::SRS) with our secret over the same fields
    (TT + "" + KEY) cannot make an alias: the alias hash uses derived secrets."""
    key = aliases.key(LONG)
    plain_hash = srs.sign("JN" + key)
    with pytest.raises(BadHash):
        aliases.key_of(f"SRS0={plain_hash}=JN=={key}@fwd.example", NOW)


@pytest.mark.parametrize(
    "address",
    [
        "SRS0=abcd=JN==SHORT@fwd.example",
        "SRS0=abcd=JN==" + "A" * (KEY_LENGTH + 1) + "@fwd.example",
        "SRS0=abcd=JN==" + "1" * KEY_LENGTH + "@fwd.example",  # 0, 1, 8, 9 are not base32
    ],
)
def test_malformed_keys_are_refused(aliases, address):
    with pytest.raises(MalformedAddress):
        aliases.key_of(address, NOW)


def test_the_form_never_collides_with_a_plain_srs0(srs, aliases):
    # Plain SRS0 always carries the sender's domain; PostSRSd 2.x's database alias carries "1".
    def is_alias(local):
        return aliases.is_alias(local, srs_tag(local))

    assert not is_alias(srs.forward(LONG, NOW).split("@")[0])
    assert not is_alias("SRS0=abcd=JN=1=" + "0" * 32)
    assert not is_alias("SRS1=abcd=hop.example==abcd=JN==" + "A" * KEY_LENGTH)
    assert is_alias("SRS0+abcd=JN==" + "A" * KEY_LENGTH)  # any separator
    # srsd never mints a plain SRS0 with an empty domain field: such a sender is refused.
    rewriter = Rewriter(srs, DomainSet([]))
    assert rewriter.forward("someone@", NOW) == (NOTFOUND, "not a complete address")


@pytest.mark.parametrize("hash_length", [4, 8, 27])
def test_short_at_every_hash_length(hash_length):
    srs = SRS(["s"], "fwd.example", hash_length=hash_length)
    alias = AliasAddresses(srs).shorten(srs.forward(LONG, NOW), NOW)
    assert len(alias.address.split("@")[0]) == alias_local_length(hash_length) <= 64


class TestRewriter:
    @pytest.fixture
    def rewriter(self, srs):
        return Rewriter(srs, DomainSet(["local.example"]), reverse_domains=["old.example"])

    def test_reverse_answers_alias_with_the_key(self, rewriter):
        alias = rewriter.aliases.shorten(rewriter.srs.forward(LONG, NOW), NOW)
        assert rewriter.reverse(alias.address, NOW) == (ALIAS, alias.key)
        # An earlier SRS domain (srs.reverse_domains) reverses its aliases too.
        assert rewriter.reverse(alias.address.replace("fwd.example", "OLD.example"), NOW) == (ALIAS, alias.key)

    def test_reverse_refuses_forged_and_foreign_aliases(self, rewriter):
        alias = rewriter.aliases.shorten(rewriter.srs.forward(LONG, NOW), NOW)
        forged = "SRS0=AAAA" + alias.address[9:]
        status, reason = rewriter.reverse(forged, NOW)
        assert status == NOTFOUND and "does not verify" in reason
        assert rewriter.reverse(alias.address.replace("fwd.example", "elsewhere.example"), NOW) == (
            NOTFOUND,
            "not the SRS domain",
        )

    def test_our_alias_is_a_fixed_point_of_forward(self, rewriter):
        """cleanup looks every result up again: the alias must not be rewritten again."""
        alias = rewriter.aliases.shorten(rewriter.srs.forward(LONG, NOW), NOW)
        assert rewriter.forward(alias.address, NOW) == (NOTFOUND, "already rewritten")

    def test_short_senders_are_untouched(self, rewriter):
        answer = rewriter.forward("alice@example.com", NOW)
        assert answer.status == FOUND
        assert rewriter.aliases.shorten(answer.text, NOW) is None


@given(st.text(max_size=80), st.sampled_from(["=", "+", "-"]))
@settings(max_examples=2000, deadline=None)
def test_arbitrary_alias_shaped_input_is_refused_cleanly(tail, separator):
    """Whatever follows the tag, reverse either refuses with an SRSError (answered
    not-found) or, for a real alias only, returns its key; nothing else escapes."""
    aliases = AliasAddresses(SRS(["tops3cr3t"], "fwd.example"))
    address = f"SRS0{separator}{tail}@fwd.example"
    try:
        key = aliases.key_of(address, NOW)
    except SRSError:
        return
    assert aliases.mint(key, NOW).lower().split("@")[0][5:] == address.lower().split("@")[0][5:]
