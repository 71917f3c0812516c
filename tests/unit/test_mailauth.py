"""srsd.mailauth: which messages get verified, sealed and signed, and the edits for Postfix.

Real crypto, a real DNS server on loopback, real worker threads (MailAuth's pool and
the SPFChecker's); only the reactor is fake (a Clock that runs calls from threads
when the test pumps them). The edits are applied to the message the way Postfix
applies milter edits (deletions at once, insertions at index 0), and the result
is verified by dkimpy and by Mail::DKIM.
"""

from __future__ import annotations

import dkim
import pytest
from twisted.logger import capturedLogs

from srsd import metrics
from srsd.config import ConfigError, parse_config
from srsd.dns import Resolver
from srsd.mailauth.handler import FORWARDED, GRACE, LOCAL, OTHER, MailAuth, auth_settings, classify
from srsd.mailauth.key_lookup import txt_lookup
from srsd.mailauth.keys import generate_key
from srsd.mailauth.message import (
    DeleteHeader,
    Envelope,
    InsertHeader,
    Message,
    Quarantine,
    Reject,
    TempFail,
    message_bytes,
    split_message,
)
from srsd.mailauth.results import authentication_results
from srsd.mailauth.sign import seal_message, sign_message
from srsd.mailauth.verify import ARCResult, SignatureResult, verify_arc, verify_signatures
from srsd.spf import SPFChecker
from tests import maildkim
from tests.maildkim import needs_mail_dkim
from tests.unit.test_dns import ThreadedClockReactor

ORIGIN_HEADERS = [
    ("From", " Alice <alice@example.org>"),
    ("To", " forward-me@fwd.example"),
    ("Subject", " hello\r\n\tthere"),
    ("Date", " Tue, 24 Nov 2026 12:00:00 +0000"),
    ("Message-ID", " <m1@example.org>"),
]
BODY = b"Hi,\r\n\r\nsee you.\r\n"
ORIGIN_SIGNED = ("From", "To", "Subject", "Date", "Message-ID")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    return {name: generate_key(str(directory / f"{name}.private")) for name in ("fwd", "origin", "hop1")}


@pytest.fixture
def zone(dns_server, keys):
    dns_server.set_zone(
        {
            "sel._domainkey.fwd.example": [{"TXT": keys["fwd"].txt_record()}],
            "s1._domainkey.example.org": [{"TXT": keys["origin"].txt_record()}],
            "arc._domainkey.hop1.example": [{"TXT": keys["hop1"].txt_record()}],
            "example.org": [{"TXT": "v=spf1 ip4:192.0.2.1 -all"}],
            "hop1.example": [{"TXT": "v=spf1 ip4:192.0.2.77 -all"}],
        }
    )
    return dns_server


@pytest.fixture
def reactor():
    fake = ThreadedClockReactor()
    yield fake
    fake.shutdown()


def make_config(tmp_path, keys, dns_server, dmarc=None, **dkim_settings):
    secrets = tmp_path / "secrets"
    secrets.write_text("s3cr3t\n")
    # processes = 0: the fake reactor spawns no processes (tests/unit/test_job_processes.py: processes = 2)
    settings = {"selector": "sel", "key_file": keys["fwd"].path, "trusted_networks": ["198.51.100.0/24"]}
    settings["processes"] = 0
    settings.update(dkim_settings)
    return parse_config(
        {
            "srs": {"domain": "fwd.example", "secrets_file": str(secrets), "local_domains": ["local.example"]},
            "dns": {"nameservers": [dns_server.address], "timeout": 0.5},
            "dkim": settings,
            "dmarc": dmarc or {},
        }
    )


@pytest.fixture
def make_auth(tmp_path, keys, zone, reactor):
    made = []

    def make(dmarc=None, **dkim_settings):
        config = make_config(tmp_path, keys, zone, dmarc, **dkim_settings)
        resolver = Resolver([zone.address], timeout=0.5)
        checker = SPFChecker(reactor, resolver, threads=2, budget=5, exchange=reactor.exchange)
        auth = MailAuth(config, resolver, checker, reactor)
        made.append(auth)
        return auth

    return make


def envelope(**changes):
    values = {
        "client_address": "192.0.2.1",
        "client_name": "mx.example.org",
        "helo": "mx.example.org",
        "mail_from": "alice@example.org",
        "recipients": ["forward-me@fwd.example"],
        "macros": {"i": "4ABCDEF"},
    }
    values.update(changes)
    return Envelope(**values)


def origin_message(keys, extra_headers=(), sign=True):
    headers = [*extra_headers, *ORIGIN_HEADERS]
    if sign:
        signature = sign_message(ORIGIN_HEADERS, BODY, keys["origin"], "example.org", "s1", ORIGIN_SIGNED)
        headers.insert(len(extra_headers), signature)
    return Message(headers, BODY)


def hop1_sealed(keys):
    """The origin message as hop1.example forwarded it: its A-R and ARC set i=1 on top."""
    message = origin_message(keys)
    results = authentication_results(
        "hop1.example",
        spf=("pass", "smtp.mailfrom", "example.org"),
        dkim_results=[SignatureResult("pass", domain="example.org")],
        arc=ARCResult("none"),
    )
    headers = [results, *message.headers]
    arc_set = seal_message(headers, BODY, keys["hop1"], "hop1.example", "arc", "hop1.example", ORIGIN_SIGNED, cv="none")
    return Message([*arc_set, *headers], BODY)


def apply(message, actions):
    """The header edits as Postfix applies them: each at once, in order."""
    headers = list(message.headers)
    for action in actions:
        if isinstance(action, DeleteHeader):
            positions = [i for i, (name, _) in enumerate(headers) if name.lower() == action.name.lower()]
            del headers[positions[action.occurrence - 1]]
        else:
            assert isinstance(action, InsertHeader) and action.index == 0
            headers.insert(0, (action.name, action.value))
    return Message(headers, message.body)


def run(reactor, auth, env, message):
    return reactor.wait(auth.end_of_message(env, message), timeout=20)


def names(message):
    return [name for name, _ in message.headers]


def field(message, name):
    return next(value for n, value in message.headers if n == name)


def drain(reactor, auth):
    while auth.pending:
        reactor.pump(10)


# -- classification ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({}, FORWARDED),
        ({"recipients": ["someone@remote.example", "x@LOCAL.example"]}, FORWARDED),
        ({"recipients": ["SRS0=abcd=AB=example.org=alice@fwd.example"]}, FORWARDED),  # a bounce to us
        ({"mail_from": "boss@fwd.example"}, FORWARDED),  # a local sender alone proves nothing
        ({"mail_from": ""}, FORWARDED),
        ({"macros": {"{auth_authen}": "alice"}}, LOCAL),
        ({"macros": {"{auth_authen}": "alice"}, "recipients": ["x@remote.example"]}, LOCAL),
        ({"client_address": ""}, LOCAL),
        ({"client_address": "198.51.100.7", "recipients": ["x@remote.example"]}, LOCAL),
        ({"client_address": "::ffff:198.51.100.7"}, LOCAL),
        ({"recipients": ["x@remote.example"]}, OTHER),
        ({"recipients": ["x@sub.local.example"]}, OTHER),  # only the domains listed
    ],
)
def test_classify(tmp_path, keys, dns_server, changes, kind):
    settings = auth_settings(make_config(tmp_path, keys, dns_server))
    assert classify(envelope(**changes), settings)[0] == kind


def test_loopback_is_trusted_by_default(tmp_path, keys, dns_server):
    settings = auth_settings(make_config(tmp_path, keys, dns_server, trusted_networks=["127.0.0.0/8", "::1/128"]))
    assert parse_config_default_trusted(tmp_path) == ("127.0.0.0/8", "::1/128")
    # local submission: Postfix presents it to non_smtpd_milters as localhost/127.0.0.1
    local = envelope(client_address="127.0.0.1", client_name="localhost", helo="localhost")
    assert classify(local, settings)[0] == LOCAL
    assert classify(envelope(client_address="::1"), settings)[0] == LOCAL


def parse_config_default_trusted(tmp_path):
    (tmp_path / "s").write_text("x\n")
    return parse_config({"srs": {"domain": "fwd.example", "secrets_file": str(tmp_path / "s")}}).dkim.trusted_networks


def test_log_summary():
    from srsd.mailauth.results import summary

    header = authentication_results(
        "fwd.example",
        spf=("pass", "smtp.mailfrom", "example.org"),
        dkim_results=[SignatureResult("fail", "a; b (c)", "example.org")],
        arc=ARCResult("none"),
    )
    assert summary(header[1]) == "spf=pass dkim=fail arc=none"


# -- forwarded mail --------------------------------------------------------------------------------------------


def check_forwarded(zone, delivered, *, origin_dkim="pass", arc_instance=1):
    top = names(delivered)[:5]
    assert top == [
        "DKIM-Signature",
        "ARC-Seal",
        "ARC-Message-Signature",
        "ARC-Authentication-Results",
        "Authentication-Results",
    ]
    raw = message_bytes(delivered.headers, delivered.body)
    dnsfunc = txt_lookup(Resolver([zone.address]))
    results = verify_signatures(*split_message(raw), dnsfunc)
    origin = [(origin_dkim, "example.org")] if origin_dkim else []  # None: the message came unsigned
    assert [(r.result, r.domain) for r in results] == [("pass", "fwd.example"), *origin]
    arc = verify_arc(*split_message(raw), dnsfunc)
    assert (arc.cv, arc.instances) == ("pass", arc_instance)
    return raw


def test_forwarded_message_is_verified_sealed_and_signed(make_auth, reactor, keys, zone):
    auth = make_auth()
    forged = ("Authentication-Results", " fwd.example; dkim=pass header.d=paypal.example")
    foreign = ("Authentication-Results", " mx.remote.example; spf=pass smtp.mailfrom=example.org")
    message = origin_message(keys, [foreign, forged])
    actions = run(reactor, auth, envelope(), message)
    assert actions[0] == DeleteHeader("Authentication-Results", 2)
    assert [a.name for a in actions[1:]] == [
        "Authentication-Results",
        "ARC-Authentication-Results",
        "ARC-Message-Signature",
        "ARC-Seal",
        "DKIM-Signature",
    ]
    delivered = apply(message, actions)
    assert forged not in delivered.headers and foreign in delivered.headers
    results = field(delivered, "Authentication-Results")
    expected = " fwd.example;\r\n\tspf=pass smtp.mailfrom=example.org;\r\n\tdkim=pass header.d=example.org "
    assert results.startswith(expected)
    assert results.endswith("\tarc=none;\r\n\tdmarc=none header.from=example.org")  # no _dmarc record
    assert field(delivered, "ARC-Authentication-Results").startswith(" i=1; fwd.example;")
    assert " cv=none;" in field(delivered, "ARC-Seal")
    check_forwarded(zone, delivered)
    assert auth.pending == 0


@needs_mail_dkim
def test_forwarded_message_verifies_in_mail_dkim(make_auth, reactor, keys, zone):
    auth = make_auth()
    message = origin_message(keys)
    delivered = apply(message, run(reactor, auth, envelope(), message))
    raw = check_forwarded(zone, delivered)
    outcome = maildkim.mail_dkim(raw, zone.port)
    assert outcome.result == "pass", outcome
    assert sorted(outcome.signatures) == [("example.org", "pass", "pass"), ("fwd.example", "pass", "pass")]
    assert maildkim.mail_dkim(raw, zone.port, "arc").result == "pass"


@needs_mail_dkim
def test_second_hop_extends_the_chain(make_auth, reactor, keys, zone):
    auth = make_auth()
    message = hop1_sealed(keys)
    actions = run(reactor, auth, envelope(client_address="192.0.2.77", helo="mx.hop1.example"), message)
    delivered = apply(message, actions)
    results = field(delivered, "Authentication-Results")
    assert "spf=fail smtp.mailfrom=example.org" in results  # forwarded without SRS: SPF breaks...
    assert "arc=pass" in results  # ...and ARC carries the first hop's results
    assert field(delivered, "ARC-Seal").startswith(" i=2; cv=pass;")
    raw = check_forwarded(zone, delivered, arc_instance=2)
    assert maildkim.mail_dkim(raw, zone.port, "arc").result == "pass"


def test_every_incoming_signature_is_reported(make_auth, reactor, keys, zone):
    zone.add("gone._domainkey.example.net", "TIMEOUT")
    auth = make_auth()
    message = origin_message(keys)
    extra = [
        sign_message(ORIGIN_HEADERS, BODY, keys["hop1"], "example.org", "s1", ORIGIN_SIGNED),  # wrong key
        sign_message(ORIGIN_HEADERS, BODY, keys["origin"], "example.net", "gone", ORIGIN_SIGNED),
    ]
    message = Message(extra + message.headers, BODY)
    delivered = apply(message, run(reactor, auth, envelope(), message))
    results = field(delivered, "Authentication-Results")
    dkim_lines = [line.strip() for line in results.split("\r\n") if line.strip().startswith("dkim=")]
    assert [line.split()[0] for line in dkim_lines] == ["dkim=fail", "dkim=temperror", "dkim=pass"]
    assert "header.d=example.net header.i=@example.net header.s=gone" in dkim_lines[1]


def test_unsigned_message_reports_dkim_none(make_auth, reactor, keys, zone):
    auth = make_auth()
    message = origin_message(keys, sign=False)
    delivered = apply(message, run(reactor, auth, envelope(client_address="203.0.113.9"), message))
    results = field(delivered, "Authentication-Results")
    assert "spf=fail smtp.mailfrom=example.org" in results and "dkim=none" in results
    raw = message_bytes(delivered.headers, delivered.body)
    assert verify_arc(*split_message(raw), txt_lookup(Resolver([zone.address]))).cv == "pass"


def test_null_sender_reports_the_helo_identity(make_auth, reactor, keys, zone):
    auth = make_auth()
    message = origin_message(keys, sign=False)
    delivered = apply(message, run(reactor, auth, envelope(mail_from="", helo="hop1.example"), message))
    assert "spf=fail smtp.helo=hop1.example" in field(delivered, "Authentication-Results")


def test_arc_lookup_failure_defers_the_message(make_auth, reactor, keys, zone):
    zone.set_zone({"arc._domainkey.hop1.example": ["TIMEOUT"]})
    auth = make_auth()
    actions = run(reactor, auth, envelope(), hop1_sealed(keys))
    assert len(actions) == 1 and isinstance(actions[0], TempFail)
    assert actions[0].enhanced == "4.4.3"


def test_arc_lookup_failure_with_continue_neither_claims_nor_seals(make_auth, reactor, keys, zone):
    zone.set_zone({"arc._domainkey.hop1.example": ["TIMEOUT"]})
    auth = make_auth(on_error="continue")
    message = hop1_sealed(keys)
    delivered = apply(message, run(reactor, auth, envelope(), message))
    assert names(delivered)[:2] == ["DKIM-Signature", "Authentication-Results"]
    assert "\tarc=" not in field(delivered, "Authentication-Results")  # (dmarc= stays)


def test_verification_only(make_auth, reactor, keys, zone):
    auth = make_auth(selector="", key_file="")
    message = origin_message(keys)
    actions = run(reactor, auth, envelope(), message)
    assert [a.name for a in actions] == ["Authentication-Results"]


def test_sealing_and_signing_without_results_header(make_auth, reactor, keys, zone):
    auth = make_auth(verify=False)
    message = origin_message(keys)
    delivered = apply(message, run(reactor, auth, envelope(), message))
    assert names(delivered)[:4] == ["DKIM-Signature", "ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"]
    assert "Authentication-Results" not in names(delivered)
    assert "spf=pass" in field(delivered, "ARC-Authentication-Results")
    raw = message_bytes(delivered.headers, delivered.body)
    assert verify_arc(*split_message(raw), txt_lookup(Resolver([zone.address]))).cv == "pass"


def test_signing_only(make_auth, reactor, keys, zone):
    auth = make_auth(verify=False, arc=False)
    message = origin_message(keys)
    assert [a.name for a in run(reactor, auth, envelope(), message)] == ["DKIM-Signature"]
    auth = make_auth(verify=False, arc=False, sign_forwarded=False)
    assert run(reactor, auth, envelope(), message) == []


def test_seal_without_forwarder_signature(make_auth, reactor, keys, zone):
    auth = make_auth(sign_forwarded=False)
    message = origin_message(keys)
    assert [a.name for a in run(reactor, auth, envelope(), message)] == [
        "Authentication-Results",
        "ARC-Authentication-Results",
        "ARC-Message-Signature",
        "ARC-Seal",
    ]


# -- local and other mail ----------------------------------------------------------------------------------------


def test_authenticated_mail_is_signed_only(make_auth, reactor, keys, zone):
    auth = make_auth()
    forged = ("Authentication-Results", " fwd.example; spf=pass")
    message = Message([forged, *ORIGIN_HEADERS], BODY)
    env = envelope(macros={"{auth_authen}": "alice"}, recipients=["bob@remote.example"])
    actions = run(reactor, auth, env, message)
    assert actions[0] == DeleteHeader("Authentication-Results", 1)
    assert [a.name for a in actions[1:]] == ["DKIM-Signature"]
    delivered = apply(message, actions)
    raw = message_bytes(delivered.headers, delivered.body)
    assert dkim.verify(raw, dnsfunc=txt_lookup(Resolver([zone.address])))


def test_local_signing_can_be_off(make_auth, reactor, keys, zone):
    auth = make_auth(sign_local=False)
    env = envelope(client_address="198.51.100.9", recipients=["bob@remote.example"])
    assert run(reactor, auth, env, Message(list(ORIGIN_HEADERS), BODY)) == []


def test_other_mail_is_left_alone(make_auth, reactor, keys, zone):
    auth = make_auth()
    forged = ("Authentication-Results", " fwd.example; spf=pass")
    env = envelope(recipients=["bob@remote.example"])
    assert run(reactor, auth, env, Message([forged, *ORIGIN_HEADERS], BODY)) == []


# -- DMARC (srsd.dmarc, [dmarc]) -----------------------------------------------------------------------------------

ENFORCE = {"action": "enforce"}


def dmarc_result(message):
    """The dmarc= line of our Authentication-Results field."""
    (line,) = [x.strip() for x in field(message, "Authentication-Results").split(";") if x.strip().startswith("dmarc=")]
    return line


def hop1_forwarded_broken(keys, sealer="hop1.example"):
    """The origin message as a list at *sealer* forwarded it: subject tagged (the origin
    signature breaks), its A-R (dkim=pass on arrival) and an ARC set i=1 on top."""
    message = origin_message(keys)
    headers = [(n, " [list] hello" if n == "Subject" else v) for n, v in message.headers]
    results = authentication_results(
        sealer,
        spf=("pass", "smtp.mailfrom", "example.org"),
        dkim_results=[SignatureResult("pass", domain="example.org")],
        arc=ARCResult("none"),
    )
    headers = [results, *headers]
    arc_set = seal_message(headers, BODY, keys["hop1"], sealer, "arc", sealer, ORIGIN_SIGNED, cv="none")
    return Message([*arc_set, *headers], BODY)


def test_dmarc_pass_is_recorded_in_the_results_and_the_arc_set(make_auth, reactor, keys, zone):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=reject"})
    auth = make_auth()
    message = origin_message(keys)
    delivered = apply(message, run(reactor, auth, envelope(client_address="203.0.113.9"), message))  # SPF fails
    assert dmarc_result(delivered) == "dmarc=pass (p=reject dis=none) header.from=example.org policy.dmarc=reject"
    # RFC 8617 4.1.1: the AAR carries every result of our ADMD, DMARC's too (a copy: comments kept)
    aar = field(delivered, "ARC-Authentication-Results")
    assert aar.endswith(";\r\n\tdmarc=pass (p=reject dis=none) header.from=example.org policy.dmarc=reject")
    assert aar == " i=1;" + field(delivered, "Authentication-Results")
    check_forwarded(zone, delivered)


def test_dmarc_fail_is_only_a_header_by_default(make_auth, reactor, keys, zone):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=reject"})
    auth = make_auth()
    message = origin_message(keys, sign=False)
    actions = run(reactor, auth, envelope(client_address="203.0.113.9"), message)
    assert not [a for a in actions if isinstance(a, Reject | TempFail | Quarantine)]
    delivered = apply(message, actions)
    assert dmarc_result(delivered) == "dmarc=fail (p=reject dis=none) header.from=example.org policy.dmarc=reject"
    check_forwarded(zone, delivered, origin_dkim=None)


def test_dmarc_enforce_rejects_p_reject(make_auth, reactor, keys, zone):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=reject"})
    auth = make_auth(dmarc=ENFORCE)
    before = dict(metrics.TALLY.counters["dmarc_results"])
    with capturedLogs() as events:
        actions = run(reactor, auth, envelope(client_address="203.0.113.9"), origin_message(keys, sign=False))
    assert actions == [Reject("Email rejected per DMARC policy for example.org", "550", "5.7.1")]
    assert metrics.TALLY.counters["dmarc_results"][("fail", "reject")] == before.get(("fail", "reject"), 0) + 1
    lines = [e["line"] for e in events if "line" in e]
    assert lines == ["DMARC fail for example.org (no authenticated identifier; policy reject from p=reject at "
                     "example.org): reject 550 5.7.1"], lines  # fmt: skip


def test_dmarc_enforce_holds_p_quarantine_and_still_seals_and_signs(make_auth, reactor, keys, zone):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=quarantine"})
    auth = make_auth(dmarc=ENFORCE)
    message = origin_message(keys, sign=False)
    actions = run(reactor, auth, envelope(client_address="203.0.113.9"), message)
    assert actions[-1] == Quarantine("held per DMARC policy for example.org")
    delivered = apply(message, actions[:-1])
    assert dmarc_result(delivered).startswith("dmarc=fail (p=quarantine dis=quarantine) ")
    check_forwarded(zone, delivered, origin_dkim=None)  # released from the hold queue, it verifies


def test_dmarc_pass_via_the_helo_identity_of_a_null_sender(make_auth, reactor, keys, zone):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=reject"})
    auth = make_auth(dmarc=ENFORCE)
    message = origin_message(keys, sign=False)
    delivered = apply(message, run(reactor, auth, envelope(mail_from="", helo="example.org"), message))
    assert "spf=pass smtp.helo=example.org" in field(delivered, "Authentication-Results")
    assert dmarc_result(delivered).startswith("dmarc=pass ")  # RFC 9989 3.2.4: the HELO domain for <>


@pytest.mark.parametrize(
    ("dmarc", "expected"), [({}, None), (ENFORCE, TempFail), ({**ENFORCE, "temperror": "accept"}, None)]
)
def test_dmarc_dns_failure(make_auth, reactor, keys, zone, dmarc, expected):
    zone.add("_dmarc.example.org", "TIMEOUT")
    auth = make_auth(dmarc=dmarc)
    message = origin_message(keys, sign=False)
    actions = run(reactor, auth, envelope(client_address="203.0.113.9"), message)
    if expected is TempFail:
        assert actions == [TempFail("temporary DNS failure evaluating DMARC for example.org, try again later", "451",
                                    "4.4.3")]  # fmt: skip
    else:
        assert dmarc_result(apply(message, actions)).startswith("dmarc=temperror (")


@pytest.mark.parametrize(("sealer", "trusted", "rejected"), [("hop1.example", True, False),
                                                            ("hop1.example", False, True)])  # fmt: skip
def test_dmarc_arc_override_for_a_trusted_sealer(make_auth, reactor, keys, zone, sealer, trusted, rejected):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=reject"})
    auth = make_auth(dmarc={**ENFORCE, "trusted_arc_sealers": ["Hop1.Example."] if trusted else ["lists.example"]})
    message = hop1_forwarded_broken(keys, sealer)
    actions = run(reactor, auth, envelope(client_address="192.0.2.77", helo="mx.hop1.example"), message)
    if rejected:
        assert len(actions) == 1 and isinstance(actions[0], Reject)
        return
    delivered = apply(message, actions)
    results = field(delivered, "Authentication-Results")
    assert "arc=pass" in results and "dkim=fail" in results
    assert dmarc_result(delivered) == ('dmarc=fail (p=reject dis=none) reason="local policy: ARC chain sealed by '
                                       'trusted hop1.example" header.from=example.org policy.dmarc=reject')  # fmt: skip
    check_forwarded(zone, delivered, origin_dkim="fail", arc_instance=2)


def test_dmarc_can_be_off(make_auth, reactor, keys, zone):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=reject"})
    auth = make_auth(dmarc={"enabled": False, "action": "enforce"})
    message = origin_message(keys, sign=False)
    delivered = apply(message, run(reactor, auth, envelope(client_address="203.0.113.9"), message))
    assert "dmarc=" not in field(delivered, "Authentication-Results")
    assert not zone.count("_dmarc.example.org")


def test_dmarc_enforced_without_results_header(make_auth, reactor, keys, zone):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=reject"})
    auth = make_auth(dmarc=ENFORCE, verify=False, selector="", key_file="")  # nothing else to do: still evaluated
    actions = run(reactor, auth, envelope(client_address="203.0.113.9"), origin_message(keys, sign=False))
    assert len(actions) == 1 and isinstance(actions[0], Reject)


def test_local_mail_is_not_evaluated(make_auth, reactor, keys, zone):
    zone.add("_dmarc.example.org", {"TXT": "v=DMARC1; p=reject"})
    auth = make_auth(dmarc=ENFORCE)
    actions = run(reactor, auth, envelope(macros={"{auth_authen}": "alice"}), origin_message(keys, sign=False))
    assert [a.name for a in actions] == ["DKIM-Signature"] and not zone.count("_dmarc.example.org")


# -- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("on_error", "expected"), [("tempfail", TempFail), ("continue", None)])
def test_overrunning_the_time_limit(make_auth, reactor, keys, zone, on_error, expected):
    auth = make_auth(on_error=on_error, budget=2)
    d = auth.end_of_message(envelope(), origin_message(keys))
    reactor.advance(2 + GRACE + 1)  # before any worker result is delivered
    actions = reactor.wait(d)
    if expected is None:
        assert actions == []
    else:
        assert len(actions) == 1 and isinstance(actions[0], expected)
    drain(reactor, auth)  # late results are dropped quietly


def test_overload_answers_on_error(make_auth, reactor, keys, zone):
    auth = make_auth(threads=1)
    waiting = [auth.end_of_message(envelope(), origin_message(keys)) for _ in range(auth.pool.max_pending)]
    refused = reactor.wait(auth.end_of_message(envelope(), origin_message(keys)))
    assert len(refused) == 1 and isinstance(refused[0], TempFail)
    assert [len(reactor.wait(d, timeout=30)) for d in waiting] == [5] * auth.pool.max_pending
    drain(reactor, auth)


def test_a_crash_answers_on_error(make_auth, reactor, keys, zone, monkeypatch):
    from srsd.mailauth import handler

    def crash(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler, "sign_message", crash)
    auth = make_auth()
    actions = run(reactor, auth, envelope(macros={"{auth_authen}": "a"}), origin_message(keys))
    assert len(actions) == 1 and isinstance(actions[0], TempFail)


def test_reconfigure_swaps_the_settings(make_auth, reactor, keys, zone, tmp_path):
    auth = make_auth()
    auth.reconfigure(make_config(tmp_path, keys, zone, selector="", key_file=""))
    assert [a.name for a in run(reactor, auth, envelope(), origin_message(keys))] == ["Authentication-Results"]


# -- configuration -----------------------------------------------------------------------------------------------


def test_config_checks_the_key(tmp_path, keys, dns_server):
    with pytest.raises(ConfigError, match="^dkim.key_file: .*cannot read"):
        make_config(tmp_path, keys, dns_server, key_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="^dkim.key_file: .*an rsa key, but the algorithm is ed25519"):
        make_config(tmp_path, keys, dns_server, algorithm="ed25519-sha256", arc=False)
    with pytest.raises(ConfigError, match="^dkim.arc: ARC sets are rsa-sha256 only"):
        make_config(tmp_path, keys, dns_server, algorithm="ed25519-sha256")
    for name in ("Received", "Comments", "ARC-Seal"):  # srsd.config.NEVER_SIGNED, which the signer refuses too
        with pytest.raises(ConfigError, match=f"^dkim.signed_headers: {name} must not be signed"):
            make_config(tmp_path, keys, dns_server, signed_headers=["From", name])
    with pytest.raises(ConfigError, match="^dkim.trusted_networks: "):
        make_config(tmp_path, keys, dns_server, trusted_networks=["nope"])
    with pytest.raises(ConfigError, match="^dkim.authserv_id: "):
        make_config(tmp_path, keys, dns_server, authserv_id="two words")


def test_config_refuses_an_authserv_id_shared_with_the_policy_service(tmp_path, keys, dns_server):
    (tmp_path / "secrets").write_text("x\n")
    data = {
        "srs": {"domain": "fwd.example", "secrets_file": str(tmp_path / "secrets")},
        "listen": {"milter": "unix:/tmp/m.sock", "policy": "tcp:10004"},
        "policy": {"header": "authentication-results", "authserv_id": "FWD.example"},
    }
    with pytest.raises(ConfigError, match="^policy.authserv_id: the milter removes"):
        parse_config(data)
    data["policy"]["authserv_id"] = "mx.fwd.example"
    parse_config(data)
