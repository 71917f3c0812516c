"""The SPF conformance suites (RFC 7208 and the older RFC 4408 one) run through
:func:`srsd.spf.check_host` with :class:`srsd.dns.Resolver` over real DNS: a
loopback server (tests/dnsserver.py) serves each scenario's ``zonedata``. The RFC 7208
suite runs a second time the daemon's way: :class:`srsd.spf.SPFChecker`
(srsd.dns_async) on a real reactor.

Runner conventions follow pyspf's own runner (test/testspf.py), see
tests/data/spf/README.md: a name with SPF (type 99) records but no TXT entry
also serves them as TXT; ``DEFAULT`` as the expected explanation means "the
implementation's default explanation" (pyspf's runner sets it to the literal
``DEFAULT``; here it is srsd.spf_eval.DEFAULT_EXPLANATIONS). The per-test ``strict``
key is ignored: srsd's evaluator has one mode, pyspf's strict one (a syntax error anywhere
is permerror).

Every test gets a fresh Resolver (no cache shared between tests). Scenarios
with TIMEOUT records use a short per-query timeout to keep the run fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from srsd.dns import Resolver
from srsd.spf import SPFChecker, check_host
from srsd.spf_eval import DEFAULT_EXPLANATIONS

DATA = Path(__file__).resolve().parents[1] / "data" / "spf"
FAST_TIMEOUT = 0.3  # seconds per query in scenarios with TIMEOUT records
NORMAL_TIMEOUT = 2.0

# (suite, test id) -> why it cannot pass over real DNS with srsd's resolver.
# Strict xfails: if one starts passing, remove it here.
KNOWN_LIMITATIONS = {
    ("rfc7208", "null-text"): (
        "the zone holds an SPF/TXT RR with zero character-strings (illegal, RFC 1035 3.3.14); "
        "on the wire its RDLENGTH is 0 and dnspython refuses to parse such a reply (TXT 'the list "
        "of strings must not be empty'); its UDP client drops unparseable replies as if forged, so "
        "the query times out -> temperror. pyspf's in-memory DNS hands pyspf an empty tuple instead."
    ),
}


def suite_zone(zonedata: dict) -> dict:
    """pyspf's runner convention: SPF records double as TXT unless TXT is listed."""
    zone = {}
    for name, records in zonedata.items():
        records = list(records)
        has_txt = any(isinstance(r, dict) and "TXT" in r for r in records)
        if not has_txt:
            records += [{"TXT": r["SPF"]} for r in records if isinstance(r, dict) and "SPF" in r]
        zone[name] = records
    return zone


def has_timeout(zonedata: dict) -> bool:
    return any(
        r == "TIMEOUT" or (isinstance(r, dict) and "TIMEOUT" in r.values())
        for records in zonedata.values()
        for r in records
    )


def load_suite(suite: str) -> list:
    params = []
    with open(DATA / f"{suite}-tests.yml", "rb") as fp:
        for scenario in yaml.safe_load_all(fp):
            slug = re.sub(r"[^a-z0-9]+", "-", scenario["description"].lower()).strip("-")
            zone = suite_zone(scenario["zonedata"])
            timeout = FAST_TIMEOUT if has_timeout(scenario["zonedata"]) else NORMAL_TIMEOUT
            for name, test in scenario["tests"].items():
                marks = []
                if (suite, name) in KNOWN_LIMITATIONS:
                    marks.append(pytest.mark.xfail(reason=KNOWN_LIMITATIONS[suite, name], strict=True))
                params.append(pytest.param(zone, timeout, test, id=f"{slug}/{name}", marks=marks))
    return params


def run_test(dns_server, zone: dict, timeout: float, test: dict, loop=None) -> None:
    """One test through check_host and the blocking resolver (the CLI's path), or with
    *loop* (a tests/reactor_thread.py ReactorThread) through the daemon's: SPFChecker's
    checks over srsd.dns_async on a real reactor."""
    dns_server.set_zone(zone)
    resolver = Resolver([dns_server.address], timeout=timeout)
    if loop is None:
        outcome = check_host(resolver, test["host"], test["mailfrom"], test["helo"])
    else:
        checker = loop.call(SPFChecker, loop.reactor, resolver, cache_size=0)
        outcome = loop.call(checker.check, test["host"], test["mailfrom"], test["helo"])
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    detail = f"{test.get('spec')}: {test.get('description', '')} got {outcome}"
    assert outcome.result in expected, detail
    if "explanation" in test:
        want = test["explanation"]
        if want == "DEFAULT":
            want = DEFAULT_EXPLANATIONS[outcome.result]
        assert outcome.explanation == want, detail


@pytest.mark.parametrize(("zone", "timeout", "test"), load_suite("rfc7208"))
def test_rfc7208(dns_server, zone, timeout, test):
    run_test(dns_server, zone, timeout, test)


@pytest.mark.parametrize(("zone", "timeout", "test"), load_suite("rfc7208"))
def test_rfc7208_in_the_daemon(dns_server, reactor_thread, zone, timeout, test):
    run_test(dns_server, zone, timeout, test, reactor_thread)


@pytest.mark.parametrize(("zone", "timeout", "test"), load_suite("rfc4408"))
def test_rfc4408(dns_server, zone, timeout, test):
    run_test(dns_server, zone, timeout, test)
