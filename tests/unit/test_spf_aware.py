"""SPF-aware rewriting decisions and their cache (a scripted checker; real DNS and
Postfix runs are in tests/e2e/test_postfix_spf.py)."""

from twisted.internet import defer

from srsd.spf import SPFResult
from srsd.spf_aware import SPFAwareForward


class ScriptedChecker:
    """check() returns a Deferred the test fires; records every call."""

    def __init__(self):
        self.calls = []

    def check(self, ip, sender, helo, budget=None):
        d = defer.Deferred()
        self.calls.append((ip, sender, d))
        return d


def fire(checker, result: SPFResult):
    for _ip, _sender, d in checker.calls:
        if not d.called:
            d.callback(result)


def answer(value):
    out = []
    if isinstance(value, defer.Deferred):
        value.addCallback(out.append)
        return out[0] if out else None
    return value


PASS = SPFResult("pass", "", ttl=300)


def test_keeps_sender_only_when_every_egress_ip_passes():
    checker = ScriptedChecker()
    aware = SPFAwareForward(checker, ["192.0.2.1", "192.0.2.2"])
    d = aware.results("a@example.org")
    checker.calls[0][2].callback(PASS)
    checker.calls[1][2].callback(SPFResult("softfail", "", ttl=300))
    keep, summary = aware.keep_sender(answer(d))
    assert not keep
    assert summary == "192.0.2.1: pass, 192.0.2.2: softfail"


def test_domain_results_cached_and_shared():
    checker = ScriptedChecker()
    aware = SPFAwareForward(checker, ["192.0.2.1"])
    first = aware.results("a@Example.org")
    second = aware.results("a@example.org")  # in flight: shares the check
    assert len(checker.calls) == 1
    fire(checker, PASS)
    assert answer(first)[0].result == answer(second)[0].result == "pass"
    cached = aware.results("b@EXAMPLE.org")  # another sender, same domain: cached
    assert isinstance(cached, list) and cached[0].result == "pass"
    assert len(checker.calls) == 1


def test_sender_specific_results_are_not_shared_by_the_domain():
    checker = ScriptedChecker()
    aware = SPFAwareForward(checker, ["192.0.2.1"])
    aware.results("alice@example.org")
    fire(checker, SPFResult("pass", "", ttl=300, sender_specific=True))
    assert isinstance(aware.results("alice@example.org"), list)  # cached for alice
    assert isinstance(aware.results("mallory@example.org"), defer.Deferred)  # not for mallory
    assert len(checker.calls) == 2


def test_temperror_and_ttl_less_results_are_not_cached():
    checker = ScriptedChecker()
    aware = SPFAwareForward(checker, ["192.0.2.1"])
    aware.results("a@example.org")
    fire(checker, SPFResult("temperror", "timed out", ttl=300))
    aware.results("a@example.org")
    fire(checker, SPFResult("none", "", ttl=None))  # e.g. NXDOMAIN: no TTL known
    aware.results("a@example.org")
    assert len(checker.calls) == 3


def test_skip_results_configurable():
    checker = ScriptedChecker()
    aware = SPFAwareForward(checker, ["192.0.2.1"], skip_results=["pass", "neutral"])
    assert aware.keep_sender([SPFResult("neutral", "")])[0]
    assert not aware.keep_sender([SPFResult("none", "")])[0]


def test_check_host_flags_local_part_macros(dns_server):
    """Over real DNS: a record with %{l} makes the result sender-specific."""
    from srsd.dns import Resolver
    from srsd.spf import check_host

    dns_server.set_zone(
        {
            "plain.example": [{"TXT": "v=spf1 ip4:192.0.2.1 -all"}],
            "macro.example": [{"TXT": "v=spf1 include:inc.macro.example -all"}],
            "inc.macro.example": [{"TXT": "v=spf1 exists:%{l}.allow.macro.example -all"}],
            "alice.allow.macro.example": [{"A": "127.0.0.2"}],
        }
    )
    resolver = Resolver([dns_server.address], timeout=2.0)
    plain = check_host(resolver, "192.0.2.1", "x@plain.example", "h.example")
    assert (plain.result, plain.sender_specific) == ("pass", False)
    alice = check_host(resolver, "192.0.2.1", "alice@macro.example", "h.example")
    mallory = check_host(resolver, "192.0.2.1", "mallory@macro.example", "h.example")
    assert (alice.result, alice.sender_specific) == ("pass", True)
    assert (mallory.result, mallory.sender_specific) == ("fail", True)
