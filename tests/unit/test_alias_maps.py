"""SRSMaps with an alias store (a real SQLite file, called at once as the CLI does): long
senders leave with an alias, aliases reverse; a store that cannot answer is TEMP, never a
wrong answer; the cap and a missing store fall back to the long form."""

from __future__ import annotations

import time

import pytest
from twisted.internet import defer

from srsd.alias_store import DeferredStore, SQLiteStore
from srsd.domains import DomainSet
from srsd.rewrite import FOUND, NOTFOUND, TEMP, Rewriter
from srsd.srs import SRS
from srsd.srs_maps import SRSMaps

LONG = "bounces+1234-abcdef0123456789=example.org@mailer.lists.example.net"
OTHER_LONG = "bounces+5678-abcdef0123456789=example.org@mailer.lists.example.net"


def rewriter() -> Rewriter:
    return Rewriter(SRS(["s3cret"], "fwd.example"), DomainSet(["local.example"]))


def maps_over(store: SQLiteStore | None) -> SRSMaps:
    return SRSMaps(rewriter(), store=DeferredStore(store) if store else None)


def answer(result):
    """The Answer of a lookup (its Deferred has fired: the store is called at once)."""
    if isinstance(result, defer.Deferred):
        out = []
        result.addBoth(out.append)
        assert out, "the lookup's Deferred has not fired"
        result = out[0]
    return result


@pytest.fixture
def store(tmp_path):
    return SQLiteStore(str(tmp_path / "aliases.sqlite"), max_new_per_day=100, timeout=1)


@pytest.fixture
def broken(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    return SQLiteStore(str(tmp_path / "not-a-dir" / "aliases.sqlite"), max_new_per_day=100, timeout=1)


def test_long_sender_round_trip(store):
    maps = maps_over(store)
    status, address = answer(maps.lookup("forward", LONG))
    assert status == FOUND and len(address.split("@")[0]) <= 64, address
    assert answer(maps.lookup("reverse", address)) == (FOUND, LONG)
    assert answer(maps.lookup("reverse", address.lower())) == (FOUND, LONG)
    assert answer(maps.lookup("forward", address)) == (NOTFOUND, "already rewritten")
    assert answer(maps.lookup("forward", LONG)).text == address  # same day, same sender: same alias
    assert store.check().endswith(": 1 aliases")


def test_short_senders_and_plain_srs_never_touch_the_store(broken):
    maps = maps_over(broken)
    status, srs0 = answer(maps.lookup("forward", "alice@example.org"))
    assert status == FOUND and srs0.startswith("SRS0=")
    assert answer(maps.lookup("reverse", srs0)) == (FOUND, "alice@example.org")


def test_store_down_is_a_temporary_failure_both_ways(store, broken):
    address = answer(maps_over(store).lookup("forward", LONG)).text
    maps = maps_over(broken)
    status, text = answer(maps.lookup("forward", LONG))
    assert status == TEMP and text.startswith("alias store unavailable: sqlite "), text
    assert answer(maps.lookup("reverse", address)).status == TEMP


def test_forged_alias_is_refused_before_the_store(store, broken):
    address = answer(maps_over(store).lookup("forward", LONG)).text
    forged = "SRS0=" + ("A" if address[5] not in "Aa" else "B") + address[6:]
    # The broken store would answer TEMP: a plain not-found shows it was never asked.
    status, reason = answer(maps_over(broken).lookup("reverse", forged))
    assert status == NOTFOUND and "does not verify" in reason


def test_alias_missing_from_the_store_is_not_found(store, tmp_path):
    address = answer(maps_over(store).lookup("forward", LONG)).text
    wiped = SQLiteStore(str(tmp_path / "wiped.sqlite"), max_new_per_day=100, timeout=1)
    status, reason = answer(maps_over(wiped).lookup("reverse", address))
    assert status == NOTFOUND and "not in the alias store" in reason


def test_at_the_daily_cap_the_long_form_goes_out(tmp_path):
    capped = SQLiteStore(str(tmp_path / "a.sqlite"), max_new_per_day=1, timeout=1)
    maps = maps_over(capped)
    first = answer(maps.lookup("forward", LONG)).text
    second = answer(maps.lookup("forward", OTHER_LONG))
    assert len(first.split("@")[0]) <= 64
    assert second.status == FOUND and second.text.endswith("=" + OTHER_LONG.split("@")[0] + "@fwd.example")
    # The long form reverses without the store; the stored sender keeps its alias.
    assert answer(maps.lookup("reverse", second.text)) == (FOUND, OTHER_LONG)
    assert answer(maps.lookup("forward", LONG)).text == first


def test_without_a_store_long_senders_keep_the_long_form(store):
    address = answer(maps_over(store).lookup("forward", LONG)).text
    maps = maps_over(None)
    status, long_form = answer(maps.lookup("forward", LONG))
    assert status == FOUND and len(long_form.split("@")[0]) > 64
    status, reason = answer(maps.lookup("reverse", address))
    assert status == NOTFOUND and "no alias store" in reason


def test_an_alias_from_yesterday_still_reverses(store, monkeypatch):
    maps = maps_over(store)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - 86400)
    address = answer(maps.lookup("forward", LONG)).text
    monkeypatch.setattr(time, "time", lambda: now)
    assert answer(maps.lookup("reverse", address)) == (FOUND, LONG)
