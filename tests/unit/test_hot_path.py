"""The SPF check's shortcuts around Deferreds and queries, and the serving processes' collector settings:
each gives what the long way gives."""

from __future__ import annotations

import subprocess
import sys

import dns.message
import dns.rrset
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from srsd.dns import Resolver
from srsd.dns_async import AsyncResolver
from srsd.spf import SPFChecker
from tests.srsd_daemon import REPO_ROOT


class OneReply:
    """An Exchange answering every query with a TXT record, counting the queries."""

    def __init__(self) -> None:
        self.queries = 0

    def __call__(self, wire, address, port, tcp, timeout):
        self.queries += 1
        query = dns.message.from_wire(wire)
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "TXT", '"v=spf1 -all"'))
        return defer.succeed(reply.to_wire())


@pytest.fixture
def async_resolver():
    exchange = OneReply()
    resolver = AsyncResolver(Resolver(nameservers=["127.0.0.1:53"]), Clock(), exchange)
    return resolver, exchange


def test_cached_gives_the_reading_lookup_kept(async_resolver):
    resolver, exchange = async_resolver
    assert resolver.cached("a.example", "TXT") is None
    first = resolver.lookup("a.example", "TXT").result
    assert resolver.cached("A.Example.", "TXT") is first
    assert resolver.lookup("a.example", "TXT").result is first
    assert exchange.queries == 1
    assert resolver.cached("a.example", "A") is None  # another type is not kept
    assert resolver.cached("bad..name", "TXT") is None  # lookup() says why it refuses it


def test_a_check_reads_kept_answers_without_a_query():
    exchange = OneReply()
    checker = SPFChecker(Clock(), Resolver(nameservers=["127.0.0.1:53"]), exchange=exchange, cache_size=0)
    first = checker.check("192.0.2.1", "a@b.example", "h.example")
    assert first.called and first.result.result == "fail"  # the reply came at once: no reactor turn
    again = checker.check("192.0.2.1", "a@b.example", "h.example")  # no result cache: checked again
    assert again.called and again.result.result == "fail"
    assert exchange.queries == 1  # the answer came from the DNS cache
    assert checker.pending == 0


def test_settle_heap_freezes_start_up_and_raises_the_young_threshold():
    code = (
        "import gc; from srsd.heap import settle_heap, YOUNG_THRESHOLD\n"
        "before = gc.get_threshold(); settle_heap(); after = gc.get_threshold()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert after == (YOUNG_THRESHOLD, before[1], before[2]), (before, after)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
