"""SPF-aware rewriting decisions (a scripted checker; the result cache is tested in
test_spf_cache.py, real DNS and Postfix runs are in tests/e2e/test_postfix_spf.py)."""

from twisted.internet import defer

from srsd.spf import SPFResult
from srsd.spf_aware import SPFAwareForward


class ScriptedChecker:
    """check() returns a Deferred the test fires; records every call."""

    def __init__(self):
        self.calls = []
        self.kept = {}  # ip -> the result SPFChecker.cached would give

    def cached(self, ip, sender, helo):
        return self.kept.get(ip)

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


def test_results_the_checker_keeps_answer_at_once():
    checker = ScriptedChecker()
    checker.kept = {"192.0.2.1": PASS}
    aware = SPFAwareForward(checker, ["192.0.2.1", "192.0.2.2"])
    d = aware.results("a@example.org")  # one kept, one to check
    assert [c[0] for c in checker.calls] == ["192.0.2.2"]
    fire(checker, PASS)
    assert [r.result for r in answer(d)] == ["pass", "pass"]
    checker.kept["192.0.2.2"] = PASS
    assert aware.results("a@example.org") == [PASS, PASS]  # both kept: a list, no check
    assert len(checker.calls) == 1


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
