"""The SPF check's shortcuts around Deferreds, and the serving processes' collector settings:
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
from srsd.dns_async import AsyncResolver, WaitingResolver
from srsd.greenpool import GreenPool, wait
from tests.srsd_daemon import REPO_ROOT


def run_job(f):
    """*f* as a GreenPool job on a fake clock; its Deferred (fired when f did not park)."""
    return GreenPool(Clock(), 2).run(10, f)


def test_wait_on_a_fired_deferred_returns_its_result_at_once():
    done = run_job(lambda: wait(defer.succeed(5)) + 1)
    assert done.called and done.result == 6


def test_wait_on_a_failed_deferred_raises_and_leaves_no_unhandled_error():
    failed = defer.fail(KeyError("gone"))

    def job():
        try:
            wait(failed)
        except KeyError as exc:
            return f"raised {exc}"
        return "returned"

    done = run_job(job)
    assert done.result == "raised 'gone'"
    assert failed.result is None  # consumed: no "Unhandled error in Deferred" when collected


def test_wait_on_a_pending_deferred_parks_until_it_fires():
    later: defer.Deferred = defer.Deferred()
    done = run_job(lambda: wait(later) * 2)
    assert not done.called
    later.callback(21)
    assert done.result == 42


def test_wait_on_a_paused_deferred_parks():
    paused = defer.succeed(3)
    paused.pause()
    done = run_job(lambda: wait(paused))
    assert not done.called
    paused.unpause()
    assert done.result == 3


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


def test_waiting_resolver_reads_kept_answers_without_a_query(async_resolver):
    resolver, exchange = async_resolver
    waiting = WaitingResolver(resolver)
    records = run_job(lambda: [waiting.records("b.example", "TXT"), waiting.records("b.example", "TXT")]).result
    assert records[0] == records[1] == [(("b.example", "TXT"), (b"v=spf1 -all",))]
    assert exchange.queries == 1


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
