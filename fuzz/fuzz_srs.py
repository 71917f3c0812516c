"""Fuzz target: SRS reverse (SRS0, SRS1, srsd's short alias form) and the forward/reverse
round trip, as the tcp_table/socketmap maps decide them (:mod:`srsd.srs`,
:mod:`srsd.srs_alias`, :class:`srsd.rewrite.Rewriter`).

Input: one lookup key as the wire adapters decode it (UTF-8 with surrogateescape), e.g.
``SRS0=bhpX=NR=example.org=user@fwd.example.net``. The schemes are the test vectors'
(``tests/data/srs_vectors.json``: secret ``vector-secret-A``, ``fwd.example.net``, the
vectors' fixed clock), so their addresses verify here and seed the corpus.

Invariants, for two schemes (libsrs2's defaults; 8-character urlsafe hashes, ``+``):

* ``SRS.reverse`` returns ``local@domain`` or raises an :class:`~srsd.srs.SRSError`; the
  same for ``AliasAddresses.key_of`` (a key of 16 upper-case base32 characters);
  ``Rewriter.reverse`` never raises and answers FOUND (the same address), ALIAS (the key)
  or NOTFOUND;
* reversing is blind to ASCII case (smtpd lower-cases recipients): the lower-cased key
  reverses the same way, to the lower-cased result;
* a key is only SRS when it starts with SRS0/SRS1 in ASCII, any case;
* round trip: whenever forward rewrites the key (taken as a sender), reversing the result
  gives back where a bounce must go -- the sender itself (a plain sender; an SRS0 one, at
  its domain), the first hop's SRS0 address (SRS1) -- and its alias leads there too;
* re-lookup: forward answers NOTFOUND for its own result (cleanup looks results up again).
"""

from __future__ import annotations

import re

from fuzz.harness import expect, instrumented, main, text

with instrumented(__name__):
    from srsd.domains import DomainSet
    from srsd.rewrite import ALIAS, FOUND, NOTFOUND, Rewriter
    from srsd.srs import SRS, SRSError, srs_tag
    from srsd.srs_alias import AliasAddresses, alias_local_length

__all__ = ["NOW", "SCHEMES", "test_one_input"]

NOW = 1718452800  # the vectors' N0 (2024-06-15T12:00:00Z)
SCHEMES = (
    SRS(["vector-secret-A", "vector-secret-B"], "fwd.example.net"),
    SRS(["vector-secret-A"], "fwd.example.net", hash_length=8, hash_minimum=5, separator="+",
        urlsafe_hash=True, max_age_days=7),
)  # fmt: skip
_REWRITERS = tuple(
    (Rewriter(s, DomainSet(["local.example"]), reverse_domains=["old.example.net"]), AliasAddresses(s)) for s in SCHEMES
)
_KEY = re.compile(r"[A-Z2-7]{16}")
_ASCII_TAG = re.compile(r"[Ss][Rr][Ss][01][=+-]")  # not (?i): it lets "ſ" (U+017F) match "s"


def _ascii_lower(value: str) -> str:
    """A-Z lowered, nothing else (bytes.lower(), as the SRS hash and libsrs2 do)."""
    return value.encode("utf-8", "surrogateescape").lower().decode("utf-8", "surrogateescape")


def _reverse(srs: SRS, address: str) -> str | None:
    """``srs.reverse(address)``, None for an SRSError; checks the result's shape."""
    try:
        result = srs.reverse(address, NOW)
    except SRSError:
        return None
    expect(type(result) is str and "@" in result, "reverse result is not local@domain", address, result)
    expect(_ASCII_TAG.match(address), "reversed a key not tagged SRS0/SRS1 in ASCII", address, result)
    return result


def _check_reverse(srs: SRS, rewriter: Rewriter, aliases: AliasAddresses, address: str) -> None:
    result = _reverse(srs, address)
    lowered = _reverse(srs, _ascii_lower(address))
    expect(
        (result is None) == (lowered is None) and (result is None or _ascii_lower(result) == _ascii_lower(lowered)),
        "reverse depends on ASCII case", address, result, lowered,
    )  # fmt: skip
    try:
        key = aliases.key_of(address, NOW)
    except SRSError:
        key = None
    else:
        expect(_KEY.fullmatch(key), "alias key is not 16 base32 characters", address, key)
        local = address.rpartition("@")[0]
        expect(aliases.is_alias(local, srs_tag(local)), "key_of accepted a non-alias", address)
    answer = rewriter.reverse(address, NOW)
    expect(answer.status in (FOUND, NOTFOUND, ALIAS), "reverse status", address, answer)
    if answer.status == FOUND:
        expect(answer.text == result, "Rewriter.reverse differs from SRS.reverse", address, answer, result)
    elif answer.status == ALIAS:
        expect(answer.text == key, "Rewriter.reverse alias key differs from key_of", address, answer, key)


def _bounce_target(sender: str) -> str:
    """Where a bounce to the rewritten *sender* must go, ASCII lower-cased: the sender, or
    for an SRS1 sender the SRS0 address at its first hop."""
    local, _, domain = sender.rpartition("@")
    if srs_tag(local) == "SRS1":
        _hash, hop, opaque = SRS.parse_srs1(local)
        return _ascii_lower(f"SRS0{opaque}@{hop}")
    return _ascii_lower(sender)


def _check_round_trip(srs: SRS, rewriter: Rewriter, aliases: AliasAddresses, sender: str) -> None:
    answer = rewriter.forward(sender, NOW)
    expect(answer.status in (FOUND, NOTFOUND), "forward status", sender, answer)
    if answer.status != FOUND:
        return
    rewritten = answer.text
    expect(rewritten.lower().endswith("@" + srs.domain), "forward left the SRS domain", sender, rewritten)
    expect(rewriter.forward(rewritten, NOW).status == NOTFOUND, "forward rewrote its own result", sender, rewritten)
    back = rewriter.reverse(rewritten, NOW)
    try:
        want = _bounce_target(sender)
    except SRSError:  # a malformed foreign SRS1: forward wrapped it whole, as a plain sender
        want = _ascii_lower(sender)
    expect(back.status == FOUND, "forward result does not reverse", sender, rewritten, back)
    expect(_ascii_lower(back.text) == want, "round trip lost the bounce address", sender, rewritten, back.text, want)
    alias = aliases.shorten(rewritten, NOW)
    if alias is not None:
        local = alias.address.rpartition("@")[0]
        expect(len(local) == alias_local_length(srs.hash_length), "alias local part length", alias)
        expect(rewriter.reverse(alias.address, NOW) == (ALIAS, alias.key), "alias does not reverse", alias)
        expect(alias.target == back.text, "alias target is not the reverse", alias, back.text)


def test_one_input(data: bytes) -> None:
    """One key: reversed as an address, and forwarded then reversed as a sender.

    :raises AssertionError: an invariant of the module docstring broke.
    """
    key = text(data)
    for srs, (rewriter, aliases) in zip(SCHEMES, _REWRITERS, strict=True):
        _check_reverse(srs, rewriter, aliases, key)
        _check_round_trip(srs, rewriter, aliases, key)


if __name__ == "__main__":
    main(test_one_input)
