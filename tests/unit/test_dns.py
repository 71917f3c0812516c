"""srsd.dns.Resolver against a real DNS server on loopback (tests/dnsserver.py),
check_host over it, and SPFChecker on a fake clock (its DNS on real sockets, or held)."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time

import dns.exception
import dns.message
import dns.rrset
import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python import failure

import srsd.spf_eval
from srsd.dns import DNSTemporaryError, Resolver, parse_nameserver
from srsd.spf import SPFChecker, check_host
from tests.reactor_thread import ReactorResolver

SPF_ZONE = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.1 a:alias.example.org -all"}, {"MX": [10, "mx.example.org"]}],
    "mx.example.org": [{"A": "192.0.2.25"}, {"AAAA": "2001:db8::25"}],
    "alias.example.org": [{"CNAME": "hop.example.org"}],
    "hop.example.org": [{"CNAME": "host.example.net."}],
    "host.example.net": [{"A": "192.0.2.7"}],
    "25.2.0.192.in-addr.arpa": [{"PTR": "mx.example.org."}],
    "multi.example.org": [{"TXT": ["v=spf1 ip4:192.0.2.1", " -all"]}],
}


@pytest.fixture(params=["blocking", "reactor"])
def make_resolver(request):
    """``Resolver(...)`` as the CLI uses it, or the same over srsd.dns_async on a real
    reactor (what the daemon's SPF checks use): every resolver test runs over both."""
    if request.param == "blocking":
        return Resolver
    loop = request.getfixturevalue("reactor_thread")
    return lambda *args, **kwargs: ReactorResolver(Resolver(*args, **kwargs), loop)


@pytest.fixture
def resolver(make_resolver, dns_server):
    dns_server.set_zone(SPF_ZONE)
    return make_resolver([dns_server.address], timeout=2.0)


# -- parse_nameserver -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[::1]", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::53]:65535", ("2001:db8::53", 65535)),
    ],
)
def test_parse_nameserver(text, expected):
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        "dns.example:53",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:",
        "127.0.0.1:x",
        "[::1]x",
        "[::1]:",
        "[::1]:0",
        "[127.0.0.1",
        "300.1.1.1",
    ],
)
def test_parse_nameserver_rejects(text):
    with pytest.raises(ValueError):
        parse_nameserver(text)


# -- answers in the shape srsd.spf_eval reads ----------------------------------------------------------


def test_spf_lookup_formats(resolver):
    assert resolver.records("example.org", "MX") == [(("example.org", "MX"), (10, "mx.example.org"))]
    assert resolver.records("mx.example.org", "A") == [(("mx.example.org", "A"), "192.0.2.25")]
    assert resolver.records("mx.example.org", "AAAA") == [(("mx.example.org", "AAAA"), "2001:db8::25")]
    assert resolver.records("25.2.0.192.in-addr.arpa", "PTR") == [
        (("25.2.0.192.in-addr.arpa", "PTR"), "mx.example.org")
    ]
    assert resolver.records("example.org", "TXT") == [
        (("example.org", "TXT"), (b"v=spf1 ip4:192.0.2.1 a:alias.example.org -all",))
    ]


def test_txt_multi_string_kept_as_character_strings(resolver):
    assert resolver.records("multi.example.org", "TXT") == [
        (("multi.example.org", "TXT"), (b"v=spf1 ip4:192.0.2.1", b" -all"))
    ]
    assert check_host(resolver, "192.0.2.1", "a@multi.example.org", "h").result == "pass"


def test_big_txt_falls_back_to_tcp(make_resolver, dns_server):
    key = "v=DKIM1; k=rsa; p=" + "A" * 1500  # > 512 bytes: TC over UDP, then TCP
    dns_server.set_zone({"sel._domainkey.example.org": [{"TXT": key}]})
    answer = make_resolver([dns_server.address]).records("sel._domainkey.example.org", "TXT")
    assert b"".join(answer[0][1]) == key.encode()
    assert [q.transport for q in dns_server.queries] == ["udp", "tcp"]


def test_cname_chain(resolver):
    assert resolver.records("alias.example.org", "A") == [
        (("alias.example.org", "CNAME"), "hop.example.org"),
        (("hop.example.org", "CNAME"), "host.example.net"),
        (("host.example.net", "A"), "192.0.2.7"),
    ]
    assert resolver.records("alias.example.org", "AAAA") == []  # chain ends in NODATA
    assert check_host(resolver, "192.0.2.7", "a@example.org", "h").result == "pass"


def test_cname_to_missing_name(make_resolver, dns_server):
    dns_server.set_zone({"dangling.example": [{"CNAME": "gone.example"}]})
    assert make_resolver([dns_server.address]).records("dangling.example", "TXT") == []


def test_owner_is_the_asked_name_even_with_odd_bytes(make_resolver, dns_server):
    # SPF macros can expand to names with spaces (%_); the evaluator reads the answer
    # under the exact name it asked for, so it must not come back escaped.
    dns_server.set_zone({"a b.example": [{"A": "192.0.2.9"}]})
    assert make_resolver([dns_server.address]).records("a b.example", "A") == [(("a b.example", "A"), "192.0.2.9")]


# -- caching --------------------------------------------------------------------------


def test_positive_and_negative_answers_are_cached(resolver, dns_server):
    for _ in range(3):
        assert resolver.resolve("mx.example.org", "A") is not None
        assert resolver.resolve("nowhere.example.org", "A") is None  # NXDOMAIN
        assert resolver.resolve("mx.example.org", "TXT") is None  # NODATA
    assert dns_server.count("mx.example.org", "A") == 1
    assert dns_server.count("nowhere.example.org") == 1
    assert dns_server.count("mx.example.org", "TXT") == 1
    assert dns_server.query_count == 3


def test_repeated_answers_come_from_the_front_cache(dns_server, monkeypatch):
    # dnspython's own cache costs ~20 µs a hit (Name objects, a resolution state, and a
    # raised NXDOMAIN); srsd's thread resolver keeps answers and NXDOMAINs in front of
    # it, each for its TTL
    dns_server.set_zone(SPF_ZONE)
    resolver = Resolver([dns_server.address])
    first = resolver.resolve("mx.example.org", "A")
    assert resolver.resolve("nowhere.example.org", "A") is None
    monkeypatch.setattr(resolver.dnspython, "resolve", lambda *a, **k: pytest.fail("not from the front cache"))
    assert resolver.resolve("mx.example.org", "A") is first
    assert resolver.resolve("nowhere.example.org", "A") is None
    assert resolver.exists("nowhere.example.org") is False  # the same NXDOMAIN, asked as A


def test_cache_entries_expire_with_their_ttl(make_resolver, dns_server):
    dns_server.ttl = dns_server.negative_ttl = 1
    dns_server.set_zone({"short.example": [{"A": "192.0.2.1"}], "long.example": [{"A": "192.0.2.2", "ttl": 600}]})
    resolver = make_resolver([dns_server.address])
    lookups = [("short.example", "A"), ("long.example", "A"), ("short.example", "TXT"), ("none.example", "A")]
    for _ in range(2):
        for name, qtype in lookups:
            resolver.resolve(name, qtype)
    assert dns_server.query_count == 4
    time.sleep(1.1)
    for name, qtype in lookups:
        resolver.resolve(name, qtype)
    # the 1 s answers (positive, NODATA, NXDOMAIN) were asked again; the 600 s one not
    assert dns_server.count("short.example", "A") == 2
    assert dns_server.count("short.example", "TXT") == 2
    assert dns_server.count("none.example") == 2
    assert dns_server.count("long.example") == 1


def test_check_host_reports_the_ttl_it_rests_on(make_resolver, dns_server):
    dns_server.set_zone({"example.org": [{"TXT": "v=spf1 a -all", "ttl": 60}, {"A": "192.0.2.1", "ttl": 30}]})
    result = check_host(make_resolver([dns_server.address]), "192.0.2.1", "a@example.org", "h")
    assert result.result == "pass"
    assert 25 < result.ttl <= 30


# -- failures ---------------------------------------------------------------------------


def test_dead_server_is_a_temporary_error_within_the_timeout(make_resolver, dns_server):
    dns_server.set_zone(SPF_ZONE)
    dns_server.pause()
    resolver = make_resolver([dns_server.address], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DNSTemporaryError):
        resolver.resolve("example.org", "TXT")
    # dnspython may sleep its 0.1 s retry backoff before noticing the lifetime is over
    assert time.monotonic() - started < 0.3 + 0.1 + 0.25  # + scheduling slack
    with pytest.raises(DNSTemporaryError):
        resolver.records("example.org", "TXT")
    assert check_host(resolver, "192.0.2.1", "a@example.org", "h").result == "temperror"
    assert dns_server.query_count >= 3 and not any(q.answered for q in dns_server.queries)
    dns_server.resume()  # failures are not cached
    assert check_host(resolver, "192.0.2.1", "a@example.org", "h").result == "pass"


def test_timeout_record_times_out_only_its_name(make_resolver, dns_server):
    dns_server.set_zone({"slow.example": ["TIMEOUT"], "fast.example": [{"A": "192.0.2.1"}]})
    resolver = make_resolver([dns_server.address], timeout=0.3)
    with pytest.raises(DNSTemporaryError):
        resolver.resolve("slow.example", "A")
    assert resolver.resolve("fast.example", "A") is not None


LONG_LABEL = "x" * 70 + ".example"
LONG_NAME = "abcdefghi." * 30 + "example"  # 307 characters


@pytest.mark.parametrize("name", [LONG_LABEL, LONG_NAME, "a..b.example", "bad\\escape\\"])
def test_impossible_names(resolver, dns_server, name):
    with pytest.raises(ValueError):
        resolver.resolve(name, "TXT")
    with pytest.raises(ValueError):
        resolver.records(name, "TXT")
    assert check_host(resolver, "192.0.2.1", f"user@{name}", "helo.example").result in ("none", "permerror")
    assert check_host(resolver, "192.0.2.1", "", name).result in ("none", "permerror")
    dns_server.set_zone({"example.org": [{"TXT": f"v=spf1 a:{name} -all"}]})
    # a target that cannot be queried either fails to parse or matches nothing
    assert check_host(resolver, "192.0.2.1", "a@example.org", "h").result in ("fail", "permerror")
    assert dns_server.count(name) == 0


# -- SPFChecker on a fake clock ------------------------------------------------------------------


class ThreadedClockReactor(MemoryReactorClock):
    """Fake reactor for SPFChecker: a Clock for timeouts, plus callFromThread,
    whose calls run when the test pumps them (in the test's thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kwargs):  # noqa: N802 (Twisted's name)
        self.from_threads.put((f, args, kwargs))

    def exchange(self, wire, address, port, tcp, timeout):
        """SPFChecker's DNS exchange for this reactor: the datagram sent and its reply
        read on a thread (a fake reactor does no I/O), delivered through callFromThread."""
        d = defer.Deferred()

        def blocking():
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as sock:
                    sock.settimeout(timeout)
                    if tcp:
                        sock.connect((address, port))
                        sock.sendall(struct.pack("!H", len(wire)) + wire)
                        head = sock.recv(2, socket.MSG_WAITALL)
                        reply = sock.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                    else:
                        sock.sendto(wire, (address, port))
                        reply = sock.recv(65535)
                result = reply
            except TimeoutError:
                result = failure.Failure(dns.exception.Timeout(timeout=timeout))
            except OSError as exc:
                result = failure.Failure(exc)
            self.callFromThread(d.errback if isinstance(result, failure.Failure) else d.callback, result)

        threading.Thread(target=blocking, daemon=True).start()
        return d

    def pump(self, timeout: float = 5.0) -> None:
        """Run one call delivered by a worker thread (waiting for it)."""
        f, args, kwargs = self.from_threads.get(timeout=timeout)
        f(*args, **kwargs)

    def wait(self, d, timeout: float = 5.0):
        """Pump until Deferred *d* fires; return its result."""
        out: list = []
        d.addBoth(out.append)
        deadline = time.monotonic() + timeout
        while not out:
            self.pump(max(0.01, deadline - time.monotonic()))
        return out[0]

    def shutdown(self) -> None:
        for f, args, kwargs in self.triggers.get("during", {}).get("shutdown", []):
            f(*args, **kwargs)


class HeldExchange:
    """SPFChecker's DNS exchange, every query held until :meth:`release` and then
    answered ``v=spf1 +all``; a query still held when its timeout passes on the clock
    times out, as on the reactor's exchange."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.held: list = []
        self.released = False

    def __call__(self, wire, address, port, tcp, timeout):
        d = defer.Deferred()
        expiry = self.clock.callLater(timeout, lambda: d.called or d.errback(dns.exception.Timeout(timeout=timeout)))
        d.addBoth(lambda result: (expiry.active() and expiry.cancel(), result)[1])
        if self.released:
            self._answer(d, wire)
        else:
            self.held.append((d, wire))
        return d

    def release(self) -> None:
        self.released = True
        for d, wire in self.held:
            if not d.called:
                self._answer(d, wire)

    @staticmethod
    def _answer(d, wire) -> None:
        query = dns.message.from_wire(wire)
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "TXT", '"v=spf1 +all"'))
        d.callback(reply.to_wire())


@pytest.fixture
def held(fake_reactor):
    return HeldExchange(fake_reactor)


def held_checker(fake_reactor, held, budget):
    return SPFChecker(fake_reactor, Resolver(["127.0.0.1:9"]), threads=1, budget=budget, exchange=held, cache_size=0)


def test_spf_checker_runs_checks(dns_server, fake_reactor):
    dns_server.set_zone(SPF_ZONE)
    checker = SPFChecker(
        fake_reactor, Resolver([dns_server.address]), threads=2, budget=5, exchange=fake_reactor.exchange
    )
    results = fake_reactor.wait(checker.check_all(["192.0.2.1", "192.0.2.99"], "a@example.org", "h"))
    assert [r.result for r in results] == ["pass", "fail"]
    assert fake_reactor.wait(checker.check("192.0.2.1", "", "mx.example.org")).identity == "helo"
    assert checker.pending == 0


def test_spf_checker_refuses_work_beyond_its_queue(fake_reactor, held):
    checker = held_checker(fake_reactor, held, 5)
    waiting = [checker.check(f"192.0.2.{i}", f"a@d{i}.example", "h") for i in range(checker.max_pending)]
    assert (checker.running, checker.pending) == (1, 4)
    overloaded = checker.check("192.0.2.200", "a@example.org", "h")
    assert (overloaded.result.result, overloaded.result.explanation) == ("temperror", "SPF checker overloaded")
    held.release()  # the running check ends, and each waiting one in turn
    assert [d.result.result for d in waiting] == ["pass"] * 4
    assert checker.pending == 0


def test_spf_checker_budget_overrun_is_temperror(fake_reactor, held):
    checker = held_checker(fake_reactor, held, 5)
    running = checker.check("192.0.2.1", "a@example.org", "h", budget=0.2)
    waiting = checker.check("192.0.2.2", "a@example.org", "h", budget=0.2)
    # past the budget (a lookup's deadline is on the monotonic clock, its timer on the reactor's):
    # the query times out, and the waiting check gives up
    time.sleep(0.25)
    fake_reactor.advance(0.3)
    assert running.result.result == "temperror" and "timed out" in running.result.explanation
    assert (waiting.result.result, waiting.result.explanation) == ("temperror", "SPF check exceeded its 0.2 s budget")
    assert checker.pending == 0
    held.release()  # a late answer changes nothing
    assert checker.pending == 0


def test_spf_checker_survives_a_crashing_check(fake_reactor, held, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(srsd.spf_eval.Evaluation, "_check", boom)
    checker = held_checker(fake_reactor, held, 5)
    result = checker.check("192.0.2.1", "", "h.example").result
    assert (result.result, result.identity) == ("temperror", "helo")
    assert checker.pending == 0


def test_spf_checker_backlog_stays_bounded_when_checks_time_out(fake_reactor, held):
    checker = held_checker(fake_reactor, held, 0.2)
    for _round in range(3):
        ds = [checker.check(f"192.0.2.{i}", "a@example.org", "h") for i in range(checker.max_pending)]
        assert checker.check("192.0.2.99", "a@example.org", "h").result.explanation == "SPF checker overloaded"
        time.sleep(0.25)
        fake_reactor.advance(0.3)
        assert all(d.result.result == "temperror" for d in ds)
        assert checker.pending == 0
