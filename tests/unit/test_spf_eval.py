"""srsd's SPF evaluator beyond the conformance suites (tests/spf): what a hostile record
or a failing resolver can do to a check."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srsd.spf import check_host
from srsd.spf_macro import MAX_DOMAIN, MAX_EXPANSION, expand
from srsd.spf_record import SPFPermError

SENDER = "a" * 60 + "@" + "b." * 30 + "example"


class Zone:
    """check_host's resolver over a dict ``{(name, qtype): [value, ...]}``; a value that is
    an exception is raised."""

    timeout = 5.0

    def __init__(self, records: dict) -> None:
        self.records_by_key = records

    def start_ttl_tracking(self) -> None:
        pass

    def tracked_ttl(self) -> float:
        return 60.0

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list:
        values = self.records_by_key.get((name, qtype), [])
        if isinstance(values, Exception):
            raise values
        return [((name, qtype), v) for v in values]


def naive_fit(domain: str) -> str:
    """RFC 7208 7.3's rule as written: drop the leftmost label while over 253 bytes."""
    while len(domain) > MAX_DOMAIN and "." in domain:
        domain = domain.split(".", 1)[1]
    return domain


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 90), min_size=1, max_size=40))
def test_a_long_expansion_keeps_the_labels_rfc_7208_keeps(lengths):
    rng = random.Random(len(lengths))
    domain = ".".join("x" * n if rng.random() < 0.9 else "" for n in lengths)
    assert expand(domain + "%{d}", lambda _letter: "") == naive_fit(domain)


def test_an_expansion_past_the_cap_is_a_permerror():
    spec = "%{s}" * (MAX_EXPANSION // len(SENDER) + 2) + ".x.example"
    with pytest.raises(SPFPermError):
        expand(spec, lambda _letter: SENDER)
    # Under the cap, a long expansion is cut to its last 253 bytes at a label boundary.
    short = expand("%{s}" * 40 + ".x.example", lambda _letter: SENDER)
    assert len(short) <= MAX_DOMAIN and short.endswith(".x.example")


def test_a_record_of_thousands_of_macros_is_a_permerror_not_a_stall():
    # 16,000 %{s} in one domain-spec (a 64 KB record over TCP): megabytes of expansion and,
    # before the cap and the one-search cut, seconds of the reactor thread
    record = ("v=spf1 exists:" + "%{s}" * 16000 + ".x.example -all").encode()
    zone = Zone({("hostile.example", "TXT"): [(record,)]})
    result = check_host(zone, "192.0.2.1", "u@hostile.example", "h.example")
    assert result.result == "permerror"
    assert "macro expansion" in result.explanation


def test_a_resolver_that_raises_something_unexpected_gives_temperror():
    zone = Zone({("raises.example", "TXT"): RuntimeError("a resolver bug")})
    result = check_host(zone, "192.0.2.1", "u@raises.example", "h.example")
    assert (result.result, result.explanation) == ("temperror", "SPF Temporary Error: DNS lookup failed")
