"""The milter's handler with a signing table: every local domain signed with its own
keys, dual RSA + ed25519 signatures, the fallbacks, and key rotation (a ``next`` key
signing once its record is published), driven through :class:`MailAuth`.

As in test_mailauth: real crypto, a real DNS server on loopback, real worker threads,
a fake reactor clock; the results are verified by dkimpy (and Mail::DKIM for RSA).
"""

from __future__ import annotations

import re

import dkim
import pytest
from dkim.util import parse_tag_value
from twisted.logger import capturedLogs, formatEvent

from srsd.config import parse_config
from srsd.dns import Resolver
from srsd.mailauth.handler import MailAuth
from srsd.mailauth.key_lookup import txt_lookup
from srsd.mailauth.keys import generate_key
from srsd.mailauth.message import DeleteHeader, Message, message_bytes
from srsd.spf import SPFChecker
from tests import maildkim
from tests.maildkim import needs_mail_dkim
from tests.unit.test_mailauth import BODY, apply, envelope, names, reactor, run  # noqa: F401 (reactor: a fixture)

FORWARDER = "fwd.example"
INTERVAL = 30.0  # dkim.rotation_check_interval in these tests
# (domain, selector, algorithm)
KEYS = [
    (FORWARDER, "f1", "rsa-sha256"),
    (FORWARDER, "fe1", "ed25519-sha256"),
    ("example.org", "r1", "rsa-sha256"),
    ("example.org", "e1", "ed25519-sha256"),
    ("example.org", "r2", "rsa-sha256"),
    ("second.example", "s1", "rsa-sha256"),
]
PUBLISHED = [k for k in KEYS if k[1] != "r2"]  # r2 is the next key, published by the tests that need it


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dkim")
    loaded = {}
    for domain, selector, algorithm in KEYS:
        (root / domain).mkdir(exist_ok=True)
        loaded[domain, selector] = generate_key(str(root / domain / f"{selector}.private"), algorithm)
    return root, loaded


def record(key_dir, domain, selector):
    return {"TXT": key_dir[1][domain, selector].txt_record()}


@pytest.fixture
def zone(dns_server, key_dir):
    dns_server.set_zone({f"{s}._domainkey.{d}": [record(key_dir, d, s)] for d, s, _ in PUBLISHED})
    return dns_server


def table_entries(*specs):
    out = []
    for spec in specs:
        domain, selector, *state = spec.split()
        out.append({"domain": domain, "selector": selector} | ({"state": state[0]} if state else {}))
    return out


DEFAULT_TABLE = table_entries(
    f"{FORWARDER} f1", f"{FORWARDER} fe1", "example.org r1", "example.org e1", "second.example s1"
)


@pytest.fixture
def make(tmp_path, key_dir, zone, reactor):  # noqa: F811 (the imported fixture)
    made = []

    def config(keys=DEFAULT_TABLE, **dkim_settings):
        (tmp_path / "secrets").write_text("s3cr3t\n")
        return parse_config(
            {
                "srs": {"domain": FORWARDER, "secrets_file": str(tmp_path / "secrets"), "local_domains": ["l.example"]},
                "dns": {"nameservers": [zone.address], "timeout": 5},
                "dkim": {
                    "key_directory": str(key_dir[0]),
                    "keys": keys,
                    "sign_subdomains": ["example.org"],
                    "trusted_networks": ["198.51.100.0/24"],
                    "rotation_check_interval": INTERVAL,
                    "processes": 0,  # the fake reactor spawns no processes (tests/unit/test_job_processes.py)
                }
                | dkim_settings,
            }
        )

    def auth(keys=DEFAULT_TABLE, **dkim_settings):
        resolver = Resolver([zone.address], timeout=5)
        checker = SPFChecker(reactor, resolver, threads=2, budget=5, exchange=reactor.exchange)
        made.append(MailAuth(config(keys, **dkim_settings), resolver, checker, reactor,
                             Resolver([zone.address], timeout=5, cache_size=0)))  # fmt: skip
        return made[-1]

    auth.config = config
    yield auth
    for mail_auth in made:
        mail_auth.watcher.stop()


LOCAL = {"client_address": "198.51.100.7", "recipients": ["someone@remote.example"]}


def local_message(sender_header):
    return Message(
        [
            ("From", f" {sender_header}"),
            ("To", " someone@remote.example"),
            ("Subject", " signing table"),
            ("Date", " Tue, 24 Nov 2026 12:00:00 +0000"),
            ("Message-ID", " <t1@example.org>"),
        ],
        BODY,
    )


def signatures(raw):
    """[(d, s, a)] of the DKIM-Signature fields, top first."""
    found = []
    for name, value in dkim.DKIM(raw).headers:
        if name.lower() == b"dkim-signature":
            tags = parse_tag_value(re.sub(rb"\s+", b"", value))
            found.append((tags[b"d"].decode(), tags[b"s"].decode(), tags[b"a"].decode()))
    return found


def verified(raw, zone):
    """(d, s, verifies) of every signature, by dkimpy with srsd's key lookup."""
    checker = dkim.DKIM(raw)
    lookup = txt_lookup(Resolver([zone.address]))
    return [(d, s, bool(checker.verify(idx=i, dnsfunc=lookup))) for i, (d, s, _a) in enumerate(signatures(raw))]


def signed(reactor, auth, sender_header, env=LOCAL):  # noqa: F811
    message = local_message(sender_header)
    delivered = apply(message, run(reactor, auth, envelope(**env), message))
    return message_bytes(delivered.headers, delivered.body)


# -- local mail: the author's own keys ------------------------------------------------------------------------


def test_each_local_domain_is_signed_with_its_own_keys(make, reactor, zone):  # noqa: F811
    auth = make()
    raw = signed(reactor, auth, "Bob <bob@second.example>")
    assert verified(raw, zone) == [("second.example", "s1", True)]
    raw = signed(reactor, auth, "Alice <alice@Example.ORG>")
    # dual signing (RFC 8463): RSA and ed25519, each verifying on its own
    assert signatures(raw) == [("example.org", "r1", "rsa-sha256"), ("example.org", "e1", "ed25519-sha256")]
    assert verified(raw, zone) == [("example.org", "r1", True), ("example.org", "e1", True)]


@needs_mail_dkim
def test_mail_dkim_verifies_the_rsa_signature_of_a_dual_signed_message(make, reactor, zone):  # noqa: F811
    raw = signed(reactor, make(), "alice@example.org")
    outcome = maildkim.mail_dkim(raw, zone.port)
    assert outcome.result == "pass", outcome
    assert outcome.signatures[0][:2] == ("example.org", "pass"), outcome  # r1; Debian's Mail::DKIM has no ed25519


def test_subdomains_unknown_domains_and_no_author(make, reactor, zone):  # noqa: F811
    auth = make()
    raw = signed(reactor, auth, "news@mail.example.org")  # sign_subdomains = [example.org]
    assert verified(raw, zone) == [("example.org", "r1", True), ("example.org", "e1", True)]
    raw = signed(reactor, auth, "someone@elsewhere.example")  # no key: the forwarder's
    assert verified(raw, zone) == [(FORWARDER, "f1", True), (FORWARDER, "fe1", True)]
    with capturedLogs() as events:
        two_from = Message([("From", " a@example.org"), ("From", " b@second.example")], BODY)
        assert run(reactor, auth, envelope(**LOCAL), two_from) == []
        forged = ("Authentication-Results", " fwd.example; dkim=pass")
        actions = run(reactor, auth, envelope(**LOCAL), Message([forged, ("From", " garbage")], BODY))
        assert actions == [DeleteHeader("Authentication-Results", 1)]  # still cleaned, not signed
    text = "\n".join(formatEvent(e) for e in events)
    assert "not signed: 2 From fields" in text and "not signed: unparseable From field" in text


def test_the_fallback_needs_a_forwarder_key(make, reactor, zone):  # noqa: F811
    auth = make(table_entries("example.org r1"))
    assert run(reactor, auth, envelope(**LOCAL), local_message("x@elsewhere.example")) == []
    raw = signed(reactor, auth, "alice@example.org")
    assert verified(raw, zone) == [("example.org", "r1", True)]


def test_forwarded_mail_gets_every_forwarder_key_and_an_rsa_seal(make, reactor, zone):  # noqa: F811
    auth = make()
    message = local_message("alice@example.org")
    forwarded = {"client_address": "192.0.2.1", "recipients": ["x@l.example"]}
    delivered = apply(message, run(reactor, auth, envelope(**forwarded), message))
    assert names(delivered)[:3] == ["DKIM-Signature", "DKIM-Signature", "ARC-Seal"]
    raw = message_bytes(delivered.headers, delivered.body)
    assert verified(raw, zone) == [(FORWARDER, "f1", True), (FORWARDER, "fe1", True)]
    cv, _results, reason = dkim.arc_verify(raw, dnsfunc=txt_lookup(Resolver([zone.address])))
    assert cv == b"pass", reason
    seal = next(v for n, v in delivered.headers if n == "ARC-Seal")
    assert " s=f1;" in seal.replace("\r\n", "") and "a=rsa-sha256" in seal


def test_keys_are_not_read_per_message(make, reactor, zone, monkeypatch):  # noqa: F811
    import pathlib

    auth = make()
    reads = []
    real = pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: reads.append(self) or real(self))
    for sender in ("a@example.org", "b@second.example", "c@elsewhere.example"):
        signed(reactor, auth, sender)
    assert reads == []


# -- rotation ---------------------------------------------------------------------------------------------------


def wait_for_check(reactor, auth):  # noqa: F811
    """Wait for the watcher's latest round (its lookups run on pool threads) to be applied."""
    reactor.wait(auth.watcher.last_round, timeout=10)


def test_a_next_key_signs_once_its_record_is_published(make, reactor, zone, key_dir):  # noqa: F811
    with capturedLogs() as events:
        auth = make([*DEFAULT_TABLE, *table_entries("example.org r2 next")])
        wait_for_check(reactor, auth)  # the first round runs at once: r2 is not published
        raw = signed(reactor, auth, "alice@example.org")
        assert [s for _d, s, _ok in verified(raw, zone)] == ["r1", "e1"]

        zone.add("r2._domainkey.example.org", record(key_dir, "example.org", "r2"))
        first = auth.watcher.last_round
        reactor.advance(INTERVAL - 1)
        assert auth.watcher.last_round is first and auth.visible == frozenset()  # not due yet
        reactor.advance(1)
        assert auth.watcher.last_round is not first
        wait_for_check(reactor, auth)
        assert len(auth.visible) == 1
        raw = signed(reactor, auth, "alice@example.org")
        assert verified(raw, zone) == [("example.org", "e1", True), ("example.org", "r2", True)]
        assert verified(signed(reactor, auth, "b@second.example"), zone) == [("second.example", "s1", True)]

        done = auth.watcher.last_round
        reactor.advance(INTERVAL * 3)  # nothing pending: no more rounds
        assert auth.watcher.last_round is done
    text = "\n".join(formatEvent(e) for e in events)
    assert "dkim.keys[6]: next key r2._domainkey.example.org not usable yet (no TXT record)" in text
    assert "dkim.keys[6]: r2._domainkey.example.org is published and matches: signing with it now instead of r1" in text
    assert text.count("not usable yet") == 1, text


def test_a_reload_keeps_a_published_next_key_and_checks_the_others_at_once(make, reactor, zone, key_dir):  # noqa: F811
    zone.add("r2._domainkey.example.org", record(key_dir, "example.org", "r2"))
    table = [*DEFAULT_TABLE, *table_entries("example.org r2 next")]
    auth = make(table)
    wait_for_check(reactor, auth)
    assert len(auth.visible) == 1

    auth.reconfigure(make.config(table))  # SIGHUP with the same config
    assert len(auth.visible) == 1  # no going back to r1, not even for a moment
    assert [s for _d, s, _ok in verified(signed(reactor, auth, "a@example.org"), zone)] == ["e1", "r2"]

    # The admin tidies up: r1 retired, r2 active; the same keys sign.
    tidy = [k | {"state": "retired"} if k["selector"] == "r1" else k for k in DEFAULT_TABLE]
    auth.reconfigure(make.config([*tidy, *table_entries("example.org r2")]))
    assert auth.visible == frozenset() and auth.table.pending == ()
    assert [s for _d, s, _ok in verified(signed(reactor, auth, "a@example.org"), zone)] == ["e1", "r2"]


def test_a_next_key_whose_record_does_not_match_never_signs(make, reactor, zone, key_dir):  # noqa: F811
    zone.add("r2._domainkey.example.org", record(key_dir, "example.org", "r1"))  # the old key's record
    with capturedLogs() as events:
        auth = make([*DEFAULT_TABLE, *table_entries("example.org r2 next")])
        wait_for_check(reactor, auth)
        reactor.advance(INTERVAL)
        wait_for_check(reactor, auth)
    assert auth.visible == frozenset()
    assert [s for _d, s, _ok in verified(signed(reactor, auth, "a@example.org"), zone)] == ["r1", "e1"]
    warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
    assert len(warnings) == 1 and "p= is another key than the private key" in warnings[0], warnings


def test_a_dns_failure_during_the_check_is_retried(make, reactor, zone, key_dir):  # noqa: F811
    zone.add("r2._domainkey.example.org", "TIMEOUT")
    auth = make([*DEFAULT_TABLE, *table_entries("example.org r2 next")])
    wait_for_check(reactor, auth)
    assert auth.visible == frozenset()
    zone.set_zone({"r2._domainkey.example.org": [record(key_dir, "example.org", "r2")]})
    reactor.advance(INTERVAL)
    wait_for_check(reactor, auth)
    assert len(auth.visible) == 1
