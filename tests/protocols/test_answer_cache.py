"""The answer cache in the lookup adapters: what is served from it, when it is skipped,
and which answers SRSMaps lets into it (srsd/answer_cache.py, SRSMaps.cacheable)."""

import time

import pytest

from srsd.answer_cache import AnswerCache
from srsd.domains import DomainSet
from srsd.protocols.socketmap import SocketmapFactory
from srsd.protocols.tcp_table import TcpTableFactory
from srsd.rewrite import FOUND, NOTFOUND, TEMP, Answer, Rewriter
from srsd.srs import SRS
from srsd.srs_maps import SRSMaps
from tests.protocols.conftest import connect


def _cacheable(map_name, answer):
    return None if answer.status == TEMP else (map_name, answer.status)


def cached_factory(lookups, cls=TcpTableFactory, **extra):
    args = ("tcp_forward", "forward") if cls is TcpTableFactory else ("socketmap",)
    cache = AnswerCache(100)
    return cls(lookups, *args, cache=cache, cacheable=_cacheable, **extra), cache


def test_a_repeated_request_is_answered_from_the_cache(lookups):
    factory, cache = cached_factory(lookups)
    proto, t = connect(factory)
    for _ in range(3):
        proto.dataReceived(b"get a@b.example\n")
    assert t.value() == b"200 FORWARD(a@b.example)\n" * 3
    assert lookups.calls == [("forward", "a@b.example")]
    assert cache.entries == {b"get a@b.example\n": (b"200 FORWARD(a@b.example)\n", ("forward", FOUND))}


def test_temp_and_pipelined_requests_are_not_cached(lookups):
    factory, cache = cached_factory(lookups)
    proto, t = connect(factory)
    proto.dataReceived(b"get temp@x\n")
    proto.dataReceived(b"get temp@x\n")
    proto.dataReceived(b"get a@b.example\nget c@d.example\n")  # not one request alone in its read
    assert lookups.calls == [("forward", "temp@x")] * 2 + [("forward", "a@b.example"), ("forward", "c@d.example")]
    assert cache.entries == {}


def test_a_hit_waits_behind_a_slow_answer_and_a_partial_line(lookups):
    factory, cache = cached_factory(lookups)
    proto, t = connect(factory)
    proto.dataReceived(b"get a@b.example\n")
    t.clear()
    proto.dataReceived(b"get slow:x\n")
    proto.dataReceived(b"get a@b.example\n")  # cached, but must not overtake the slow one
    assert t.value() == b""
    lookups.pending["slow:x"].callback(Answer(FOUND, "late"))
    assert t.value() == b"200 late\n200 FORWARD(a@b.example)\n"
    t.clear()
    proto.dataReceived(b"get a@")  # an unfinished line: the next read is its tail, not a request
    proto.dataReceived(b"get a@b.example\n")
    assert t.value() == b"200 FORWARD(a@get%20a@b.example)\n"  # the joined line, not the cached reply


def test_socketmap_caches_a_whole_netstring(lookups):
    factory, cache = cached_factory(lookups, SocketmapFactory)
    proto, t = connect(factory)
    proto.dataReceived(b"19:forward a@b.example,")
    proto.dataReceived(b"19:forward a@b.example,")
    assert t.value() == b"23:OK FORWARD(a@b.example),23:OK FORWARD(a@b.example),"
    assert lookups.calls == [("forward", "a@b.example")]
    proto.dataReceived(b"19:forward a@")  # half a netstring ...
    proto.dataReceived(b"b.example,")  # ... its tail is no cache key
    assert t.value().endswith(b"),23:OK FORWARD(a@b.example),") and len(lookups.calls) == 2


def test_entries_end_with_the_utc_day(monkeypatch):
    cache = AnswerCache(10)
    now = [86400 * 20000 + 86399.5]  # half a second before 00:00 UTC
    monkeypatch.setattr(time, "time", lambda: now[0])
    cache.put(b"k", b"v", ("forward", "found"))
    assert cache.get(b"k") == b"v"
    now[0] += 1  # the next day: yesterday's timestamp must not be served
    assert cache.get(b"k") is None
    cache.put(b"k2", b"v2", ("forward", "found"))
    assert cache.entries == {b"k2": (b"v2", ("forward", "found"))}


def test_a_full_cache_drops_its_oldest_half():
    cache = AnswerCache(4)
    for i in range(5):
        cache.put(b"%d" % i, b"r", ("forward", "found"))
    assert list(cache.entries) == [b"2", b"3", b"4"]


@pytest.fixture
def maps():
    return SRSMaps(Rewriter(SRS(["s3cr3t"], "fwd.example"), DomainSet(["local.example"])))


def test_what_srsmaps_lets_into_the_cache(maps):
    forward = maps.lookup("forward", "alice@orig.example")
    # each cacheable answer with the (map, outcome) its replays count as (srsd.metrics)
    assert forward.status == FOUND and maps.cacheable("forward", forward) == ("forward", "found")
    assert maps.cacheable("forward", maps.lookup("forward", "bob@local.example")) == ("forward", "local_domain")
    good = maps.lookup("reverse", forward.text)
    assert good == Answer(FOUND, "alice@orig.example") and maps.cacheable("reverse", good) == ("reverse", "found")
    assert maps.cacheable("reverse", maps.lookup("reverse", "bob@elsewhere.example")) == ("reverse", "not_srs")
    forged = maps.lookup("reverse", "SRS0=AAAA=" + forward.text.split("=", 2)[2])
    # a refusal is logged once a day per address (srsd.lookup_outcomes): its replays are only counted
    assert forged.status == NOTFOUND and maps.cacheable("reverse", forged) == ("reverse", "forged")
    assert maps.cacheable("forward", Answer(TEMP, "x")) is None
    maps.debug = True  # every lookup logged
    assert maps.cacheable("forward", forward) is None


def test_spf_aware_answers_are_not_cached(maps):
    maps.spf_aware = object()  # configured: the answer of a rewrite rests on SPF data
    assert maps.cacheable("forward", Answer(FOUND, "SRS0=x@fwd.example")) is None
    assert maps.cacheable("forward", Answer(NOTFOUND, "local domain")) == ("forward", "local_domain")
