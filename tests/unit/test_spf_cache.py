"""The SPF result cache: what it keeps, for whom, how long, how many (srsd.spf_cache),
and SPFChecker answering from it over a real loopback DNS server (queries counted)."""

from __future__ import annotations

from srsd.dns import Resolver
from srsd.spf import SPFChecker, SPFResult
from srsd.spf_cache import SPFResultCache

IP, HELO = "192.0.2.1", "mx.client.example"
HEADER = (
    "Pass (fwd.example: domain of example.org designates 192.0.2.1 as permitted sender) "
    'client-ip=192.0.2.1; envelope-from="alice@example.org"; helo=mx.client.example; '
    "receiver=fwd.example; mechanism=mx; identity=mailfrom"
)
PASS = SPFResult("pass", "", header=HEADER, ttl=300)


def test_a_domain_result_serves_every_sender_of_the_domain_with_its_own_envelope_from():
    cache = SPFResultCache()
    cache.put(IP, "alice@example.org", HELO, PASS, now=0)
    bob = cache.get(IP, "bob@EXAMPLE.org", HELO, now=10)
    assert bob.result == "pass"
    assert 'envelope-from="bob@EXAMPLE.org";' in bob.header and "alice" not in bob.header
    assert cache.get(IP, "alice@example.org", HELO, now=10) is PASS


def test_the_key_is_ip_helo_and_domain():
    cache = SPFResultCache()
    cache.put(IP, "alice@example.org", HELO, PASS, now=0)
    assert cache.get("192.0.2.2", "alice@example.org", HELO, now=1) is None
    assert cache.get(IP, "alice@example.org", "other.example", now=1) is None  # %{h} may differ
    assert cache.get(IP, "alice@example.net", HELO, now=1) is None
    cache.put(IP, "", HELO, SPFResult("pass", "", "helo", ttl=60), now=0)  # the HELO identity
    assert cache.get(IP, "", HELO, now=1).identity == "helo"


def test_sender_specific_results_serve_only_their_sender():
    cache = SPFResultCache()
    cache.put(IP, "alice@macro.example", HELO, SPFResult("pass", "", ttl=300, sender_specific=True), now=0)
    assert cache.get(IP, "alice@macro.example", HELO, now=1).result == "pass"
    assert cache.get(IP, "mallory@macro.example", HELO, now=1) is None
    cache.put(IP, "mallory@macro.example", HELO, SPFResult("fail", "", ttl=300, sender_specific=True), now=1)
    assert cache.get(IP, "mallory@macro.example", HELO, now=2).result == "fail"
    assert cache.get(IP, "alice@macro.example", HELO, now=2).result == "pass"


def test_results_live_for_their_ttl_capped_by_max_ttl():
    cache = SPFResultCache(max_ttl=100)
    cache.put(IP, "a@short.example", HELO, SPFResult("fail", "", ttl=30), now=0)
    cache.put(IP, "a@long.example", HELO, SPFResult("pass", "", ttl=86400), now=0)
    assert cache.get(IP, "a@short.example", HELO, now=29.9) is not None
    assert cache.get(IP, "a@short.example", HELO, now=30) is None
    assert cache.get(IP, "a@long.example", HELO, now=99) is not None
    assert cache.get(IP, "a@long.example", HELO, now=100) is None
    assert len(cache) == 0  # expired entries are dropped when met


def test_temperror_ttl_less_results_and_a_zero_size_are_never_kept():
    cache = SPFResultCache()
    cache.put(IP, "a@example.org", HELO, SPFResult("temperror", "timed out", ttl=300), now=0)
    cache.put(IP, "a@nx.example", HELO, SPFResult("none", "", ttl=None), now=0)
    assert len(cache) == 0
    off = SPFResultCache(max_entries=0)
    off.put(IP, "a@example.org", HELO, PASS, now=0)
    assert off.get(IP, "a@example.org", HELO, now=0) is None


def test_bounded_the_oldest_go_first():
    cache = SPFResultCache(max_entries=3)
    for i in range(5):
        cache.put(IP, f"a@d{i}.example", HELO, PASS, now=i)
    assert len(cache) == 3
    assert [cache.get(IP, f"a@d{i}.example", HELO, now=5) is not None for i in range(5)] == [False, False] + [True] * 3


ZONE = {
    "example.org": [{"TXT": "v=spf1 include:_spf.example.org -all", "ttl": 300}],
    "_spf.example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all", "ttl": 300}],
    "flaky.example": ["TIMEOUT"],
}


def test_checker_answers_a_second_sender_of_the_domain_without_dns(dns_server, fake_reactor):
    dns_server.set_zone(ZONE)
    checker = SPFChecker(
        fake_reactor, Resolver([dns_server.address], cache_size=0), threads=2, budget=5, exchange=fake_reactor.exchange
    )
    first = fake_reactor.wait(checker.check(IP, "alice@example.org", HELO))
    asked = dns_server.query_count
    assert first.result == "pass" and asked >= 2
    second = fake_reactor.wait(checker.check(IP, "bob@example.org", HELO))
    assert second.result == "pass" and "bob@example.org" in second.header
    assert dns_server.query_count == asked  # the kept result, not the resolver
    assert checker.cached("198.51.100.9", "bob@example.org", HELO) is None
    assert fake_reactor.wait(checker.check("198.51.100.9", "bob@example.org", HELO)).result == "fail"


def test_checker_shares_a_running_check_and_never_keeps_a_temperror(dns_server, fake_reactor):
    dns_server.set_zone(ZONE)
    checker = SPFChecker(
        fake_reactor,
        Resolver([dns_server.address], timeout=0.3, cache_size=0),
        threads=2,
        budget=5,
        exchange=fake_reactor.exchange,
    )
    same = [checker.check(IP, "a@example.org", HELO) for _ in range(3)]
    assert [fake_reactor.wait(d).result for d in same] == ["pass"] * 3
    assert dns_server.count("example.org", "TXT") == 1  # one check for the three callers
    flaky = fake_reactor.wait(checker.check(IP, "a@flaky.example", HELO))
    assert flaky.result == "temperror"
    assert checker.cached(IP, "a@flaky.example", HELO) is None
