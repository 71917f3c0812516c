"""SPF policy decisions (srsd.policy) with a scripted checker: no DNS, no reactor."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed

from srsd.config import PolicySettings
from srsd.header_text import one_line
from srsd.policy_service import PolicyService
from srsd.spf import SPFResult
from srsd.spf_policy import (
    DUNNO,
    PolicyRequest,
    Rules,
    Verdict,
    authentication_results_header,
    decide,
    error_action,
    for_state,
    parse_request,
    plan_checks,
    received_spf_header,
    screen,
)

RECEIVER = "mx.example.org"


def spf(result, identity="mailfrom", explanation=None, header=None):
    """An SPFResult as the checker would give it (pyspf-style header)."""
    if explanation is None:
        explanation = f"{result} explanation"
    if header is None:
        header = f"{result.capitalize()} ({RECEIVER}: test) client-ip=192.0.2.1; identity={identity}"
    return SPFResult(result, explanation, identity, header)


class FakeChecker:
    """``check(ip, sender, helo)``: results by sender (or ``helo:NAME`` for HELO
    checks); ``hold=True`` returns unfired Deferreds to fire by hand."""

    def __init__(self, results=None, hold=False):
        self.results = results or {}
        self.hold = hold
        self.calls = []
        self.pending = []

    def check(self, ip, sender, helo, budget=None):
        self.calls.append((ip, sender, helo))
        identity = "mailfrom" if sender else "helo"
        found = self.results.get(sender or f"helo:{helo}", "none")
        if isinstance(found, Exception):
            raise found
        result = spf(found, identity) if isinstance(found, str) else found
        if self.hold:
            d = Deferred()
            self.pending.append((d, result))
            return d
        return succeed(result)

    def fire_all(self):
        pending, self.pending = self.pending, []
        for d, result in pending:
            d.callback(result)


def value(d):
    """The result of an already fired Deferred."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def attrs(**kw):
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.1",
        "client_name": "mail.example.net",
        "helo_name": "mail.example.net",
        "sender": "alice@example.net",
        "recipient": "bob@example.org",
        "instance": "1a2b.3c4d.5e6f.0",
        "sasl_username": "",
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def request(**kw):
    req = parse_request(attrs(**kw))
    assert isinstance(req, PolicyRequest), req
    return req


def rules(**kw):
    return Rules(PolicySettings(**kw), RECEIVER)


# -- parsing the request ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"request": None}, "not an smtpd_access_policy request"),
        ({"request": "junk"}, "not an smtpd_access_policy request"),
        ({"client_address": None}, "no usable client_address"),
        ({"client_address": ""}, "no usable client_address"),
        ({"client_address": "unknown"}, "no usable client_address"),
        ({"protocol_state": "CONNECT"}, "nothing to check at CONNECT"),
        ({"protocol_state": "EHLO"}, "nothing to check at EHLO"),
        ({"protocol_state": "HELO"}, "nothing to check at HELO"),
        ({"protocol_state": "VRFY"}, "nothing to check at VRFY"),
        ({"protocol_state": "ETRN"}, "nothing to check at ETRN"),
    ],
)
def test_requests_without_anything_to_check_are_dunno(changes, why):
    verdict = parse_request(attrs(**changes))
    assert isinstance(verdict, Verdict)
    assert verdict.action == DUNNO
    assert verdict.reason.startswith(why)


def test_request_fields():
    req = request(protocol_state="rcpt", sender=" alice@example.net ")
    assert (req.state, req.ip, req.helo, req.sender, req.instance) == (
        "RCPT",
        "192.0.2.1",
        "mail.example.net",
        "alice@example.net",
        "1a2b.3c4d.5e6f.0",
    )
    assert req.sender_domain == "example.net"
    assert request(protocol_state=None).state == "RCPT"  # typed by hand
    assert request(sender="").sender == ""
    assert request(sender=None).sender == ""
    assert request(sender="postmaster").sender_domain == "mail.example.net"  # pyspf's reading


@pytest.mark.parametrize(("given", "used"), [("::ffff:192.0.2.7", "192.0.2.7"), ("2001:DB8::1", "2001:db8::1")])
def test_client_address_normalised(given, used):
    assert request(client_address=given).ip == used


def test_message_key():
    assert request().message_key == ("1a2b.3c4d.5e6f.0", "192.0.2.1", "alice@example.net", "mail.example.net")
    assert request(instance="").message_key is None


# -- skipped and whitelisted clients ---------------------------------------------------------


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_default_skip_networks(ip):
    verdict = screen(request(client_address=ip), rules())
    assert verdict == Verdict(DUNNO, "skipped", "client in policy.skip_networks")


@pytest.mark.parametrize(
    ("networks", "ip", "skipped"),
    [
        (("2001:db8::/32",), "2001:db8:1::5", True),
        (("2001:db8::/32",), "2001:db9::5", False),
        (("10.0.0.0/8",), "::ffff:10.1.2.3", True),  # v4-mapped client, IPv4 entry
        (("::ffff:10.0.0.0/104",), "10.1.2.3", True),  # IPv4 client, v4-mapped entry
        (("::ffff:10.0.0.0/104",), "::ffff:10.1.2.3", True),
        (("::ffff:10.0.0.0/104",), "11.1.2.3", False),
        (("192.0.2.1",), "192.0.2.1", True),  # a bare address is a /32
        (("192.0.2.1",), "192.0.2.2", False),
        ((), "127.0.0.1", False),
    ],
)
def test_skip_networks(networks, ip, skipped):
    verdict = screen(request(client_address=ip), rules(skip_networks=networks))
    assert (verdict is not None) == skipped


def test_authenticated_clients_are_not_checked():
    verdict = screen(request(sasl_username="alice"), rules())
    assert verdict.action == DUNNO and verdict.reason == "SASL-authenticated client"


def test_whitelisted_network_gets_a_comment_header():
    verdict = screen(request(client_address="198.51.100.7"), rules(whitelist_networks=("198.51.100.0/24",)))
    assert verdict.action == (
        "PREPEND X-Comment: SPF skipped for whitelisted relay - client-ip=198.51.100.7; "
        'envelope-from="alice@example.net"; helo=mail.example.net; receiver=mx.example.org'
    )
    assert verdict.result == "whitelisted"


def test_whitelisted_ipv6_and_mapped_network():
    r = rules(whitelist_networks=("2001:db8::/48", "203.0.113.0/24"))
    assert screen(request(client_address="2001:db8::25"), r).result == "whitelisted"
    assert screen(request(client_address="::ffff:203.0.113.9"), r).result == "whitelisted"
    assert screen(request(client_address="2001:db8:1::25"), r) is None


def test_whitelisted_with_authentication_results():
    r = rules(whitelist_networks=("192.0.2.0/24",), header="authentication-results", authserv_id="mx.example.org")
    assert screen(request(), r).action == (
        "PREPEND Authentication-Results: mx.example.org; none (SPF skipped for whitelisted relay)"
    )


@pytest.mark.parametrize(
    ("entries", "helo", "client_name", "whitelisted"),
    [
        (("relay.example.com",), "relay.example.com", "relay.example.com", True),
        (("relay.example.com",), "RELAY.example.com.", "relay.EXAMPLE.com", True),
        ((".example.com",), "mx1.example.com", "mx1.example.com", True),
        ((".example.com",), "example.com", "example.com", False),  # .parent: subdomains only
        (("relay.example.com",), "relay.example.com", "unknown", False),  # not verified: forgeable
        (("relay.example.com",), "relay.example.com", "other.example.com", False),
        (("relay.example.com",), "relay.example.com", "", False),
        ((".example.com",), "mx1.example.com", "mx2.example.com", False),
        (("relay.example.com",), "x.relay.example.com", "x.relay.example.com", False),
    ],
)
def test_whitelist_helo_needs_the_verified_client_name(entries, helo, client_name, whitelisted):
    verdict = screen(request(helo_name=helo, client_name=client_name), rules(whitelist_helo=entries))
    assert (verdict is not None and verdict.result == "whitelisted") == whitelisted


def test_skip_beats_whitelist():
    r = rules(skip_networks=("192.0.2.0/24",), whitelist_networks=("192.0.2.0/24",))
    assert screen(request(), r).action == DUNNO


# -- which checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "helo", "helo_reject", "plan"),
    [
        ("alice@example.net", "mail.example.net", "none", (False, True, "")),
        ("alice@example.net", "mail.example.net", "fail", (True, True, "")),
        ("alice@example.net", "mail.example.net", "softfail", (True, True, "")),
        ("", "mail.example.net", "none", (True, False, "")),  # null sender: HELO is the identity
        ("", "", "none", (False, False, "no HELO name to check")),
        ("", "[192.0.2.1]", "none", (False, False, "HELO name is not a domain name")),
        ("", "localhost", "none", (False, False, "HELO name is not a domain name")),
        ("alice@example.net", "localhost", "fail", (False, True, "HELO name is not a domain name")),
        ("alice@example.net", "", "none", (False, True, "")),
    ],
)
def test_plan_checks(sender, helo, helo_reject, plan):
    p = plan_checks(request(sender=sender, helo_name=helo), rules(helo_reject=helo_reject))
    assert (p.helo, p.mail_from, p.helo_none) == plan


def test_plan_checks_whitelist_domains():
    p = plan_checks(request(), rules(whitelist_domains=("pobox.com", ".Forwarder.example.", "pobox.com")))
    assert p.whitelist_domains == ("pobox.com", "forwarder.example")


# -- results to actions: every combination -----------------------------------------------------

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
POLICIES = ("none", "fail", "softfail")


def expected(result, reject, permerror_reject, temperror_defer):
    """The action's first words, from the table in docs/policy.md."""
    if result == "fail" and reject in ("fail", "softfail"):
        return "550 5.7.23"
    if result == "softfail" and reject == "softfail":
        return "550 5.7.23"
    if result == "permerror" and permerror_reject:
        return "550 5.7.24"
    if result == "temperror" and temperror_defer:
        return "DEFER_IF_PERMIT 4.7.24"
    return "PREPEND Received-SPF: "


@pytest.mark.parametrize(
    ("result", "mail_from_reject", "permerror_reject", "temperror_defer"),
    list(itertools.product(RESULTS, POLICIES, (False, True), (False, True))),
)
def test_mail_from_matrix(result, mail_from_reject, permerror_reject, temperror_defer):
    r = rules(mail_from_reject=mail_from_reject, permerror_reject=permerror_reject, temperror_defer=temperror_defer)
    verdict = decide(request(), r, None, spf(result))
    assert verdict.action.startswith(expected(result, mail_from_reject, permerror_reject, temperror_defer))
    assert verdict.result == result


@pytest.mark.parametrize(
    ("result", "helo_reject", "permerror_reject", "temperror_defer"),
    list(itertools.product(RESULTS, POLICIES, (False, True), (False, True))),
)
def test_helo_matrix(result, helo_reject, permerror_reject, temperror_defer):
    """A HELO result next to a passing MAIL FROM: only the HELO settings can refuse."""
    r = rules(helo_reject=helo_reject, permerror_reject=permerror_reject, temperror_defer=temperror_defer)
    verdict = decide(request(), r, spf(result, "helo"), spf("pass"))
    want = expected(result, helo_reject, permerror_reject, temperror_defer)
    if want.startswith("PREPEND"):
        assert verdict.action == "PREPEND Received-SPF: " + spf("pass").header  # MAIL FROM recorded
    else:
        assert verdict.action.startswith(want)
        assert "HELO name mail.example.net" in verdict.action


@pytest.mark.parametrize(
    ("result", "helo_reject", "mail_from_reject"),
    list(itertools.product(RESULTS, POLICIES, POLICIES)),
)
def test_null_sender_matrix(result, helo_reject, mail_from_reject):
    """Null sender: the HELO check is the MAIL FROM check too (RFC 7208 2.4), so the
    stricter of the two settings applies."""
    req = request(sender="")
    verdict = decide(req, rules(helo_reject=helo_reject, mail_from_reject=mail_from_reject), spf(result, "helo"), None)
    settings = (helo_reject, mail_from_reject)
    strict = "softfail" if "softfail" in settings else "fail" if "fail" in settings else "none"
    assert verdict.action.startswith(expected(result, strict, False, False))


def test_reject_text():
    reject = rules(mail_from_reject="fail")
    verdict = decide(request(), reject, None, spf("fail", explanation="SPF fail - not authorized"))
    assert verdict.action == "550 5.7.23 SPF fail for sender domain example.net: SPF fail - not authorized"
    verdict = decide(request(), rules(permerror_reject=True), None, spf("permerror", explanation=""))
    assert verdict.action == (
        "550 5.7.24 SPF permerror for sender domain example.net: the domain's SPF record is invalid"
    )
    verdict = decide(request(), rules(temperror_defer=True), None, spf("temperror", explanation="DNS timeout"))
    assert verdict.action == "DEFER_IF_PERMIT 4.7.24 SPF temperror for sender domain example.net: DNS timeout"


def test_reject_text_from_a_hostile_exp_record_stays_one_ascii_line():
    exp = "go away\n\naction=OK\r\n" + "\u00e9" + "x" * 1000
    verdict = decide(request(), rules(mail_from_reject="fail"), None, spf("fail", explanation=exp))
    assert verdict.action.startswith("550 5.7.23 SPF fail for sender domain example.net: go away action=OK ?xxx")
    assert len(verdict.action) <= 11 + 250
    assert verdict.action.endswith("...")
    assert all(" " <= c <= "~" for c in verdict.action)


def test_rejection_beats_deferral_and_helo_comes_first():
    r = rules(helo_reject="fail", mail_from_reject="fail", temperror_defer=True)
    verdict = decide(request(), r, spf("temperror", "helo"), spf("fail"))
    assert verdict.action.startswith("550 5.7.23 SPF fail for sender domain")
    verdict = decide(request(), r, spf("fail", "helo"), spf("fail"))
    assert verdict.action.startswith("550 5.7.23 SPF fail for HELO name")
    verdict = decide(request(), r, spf("temperror", "helo"), spf("pass"))
    assert verdict.action.startswith("DEFER_IF_PERMIT 4.7.24 SPF temperror for HELO name")
    assert verdict.reason == "helo=temperror mailfrom=pass"


def test_nothing_checked_is_dunno():
    assert decide(request(sender=""), rules(), None, None).action == DUNNO


def test_whitelisted_by_domain_spf():
    verdict = decide(request(), rules(mail_from_reject="fail"), None, spf("fail"), whitelisted_by="pobox.com")
    assert verdict.action.startswith("PREPEND X-Comment: SPF skipped for whitelisted relay of pobox.com - ")


# -- headers ------------------------------------------------------------------------------------


def test_received_spf_uses_the_checker_header():
    result = spf(
        "pass",
        header="Pass (mx.example.org: domain of alice@example.net designates 192.0.2.1 as "
        'permitted sender) client-ip=192.0.2.1; envelope-from="alice@example.net"; '
        "helo=mail.example.net; receiver=mx.example.org; identity=mailfrom",
    )
    assert received_spf_header(request(), result, RECEIVER) == "Received-SPF: " + result.header


def test_received_spf_fallback_when_the_checker_has_none():
    result = SPFResult("temperror", "SPF check exceeded its 10 s budget", "mailfrom", "")
    assert received_spf_header(request(), result, RECEIVER) == (
        "Received-SPF: TempError (mx.example.org: SPF check exceeded its 10 s budget) client-ip=192.0.2.1; "
        'envelope-from="alice@example.net"; helo=mail.example.net; receiver=mx.example.org; identity=mailfrom'
    )


def test_received_spf_fallback_helo_identity_and_comment_escaping():
    result = SPFResult("none", "HELO name (literal) is not a domain name", "helo", "")
    assert received_spf_header(request(sender="", helo_name="[192.0.2.1]"), result, RECEIVER) == (
        r"Received-SPF: None (mx.example.org: HELO name \(literal\) is not a domain name) client-ip=192.0.2.1; "
        'helo="[192.0.2.1]"; receiver=mx.example.org; identity=helo'
    )


def test_received_spf_header_is_one_line():
    result = spf("pass", header="Pass (x)\r\n injected: header\n\nclient-ip=192.0.2.1")
    header = received_spf_header(request(), result, RECEIVER)
    assert header == "Received-SPF: Pass (x) injected: header client-ip=192.0.2.1"


def test_received_spf_overlong_checker_header_replaced():
    result = spf("permerror", explanation="bad record", header="PermError (" + "x" * 2000 + ")")
    header = received_spf_header(request(), result, RECEIVER)
    assert header.startswith("Received-SPF: PermError (mx.example.org: bad record) client-ip=192.0.2.1;")
    assert len(header) <= 900


@pytest.mark.parametrize("result", RESULTS)
def test_authentication_results_mailfrom(result):
    header = authentication_results_header(request(), spf(result), "mx.example.org")
    assert header == f"Authentication-Results: mx.example.org; spf={result} smtp.mailfrom=example.net"


def test_authentication_results_helo_and_quoting():
    req = request(sender="", helo_name="mail.example.net")
    assert authentication_results_header(req, spf("pass", "helo"), "mx.example.org") == (
        "Authentication-Results: mx.example.org; spf=pass smtp.helo=mail.example.net"
    )
    req = request(sender="", helo_name="[192.0.2.1]")
    assert authentication_results_header(req, spf("none", "helo"), "mx.example.org") == (
        'Authentication-Results: mx.example.org; spf=none smtp.helo="[192.0.2.1]"'
    )
    req = request(sender='x@"we ird"')
    assert authentication_results_header(req, spf("permerror"), "mx.example.org") == (
        r'Authentication-Results: mx.example.org; spf=permerror smtp.mailfrom="\"we ird\""'
    )


def test_decide_with_authentication_results():
    r = rules(header="authentication-results", authserv_id="mx.example.org")
    assert decide(request(), r, None, spf("softfail")).action == (
        "PREPEND Authentication-Results: mx.example.org; spf=softfail smtp.mailfrom=example.net"
    )
    assert decide(request(sender=""), r, spf("fail", "helo"), None).action == (
        "PREPEND Authentication-Results: mx.example.org; spf=fail smtp.helo=mail.example.net"
    )


def test_one_line():
    assert one_line("a\r\n\tb  c\x00d\x7fe") == "a b c d e"
    assert one_line("caf\u00e9") == "caf?"
    assert one_line("caf\u00e9", ascii_only=False) == "caf\u00e9"
    assert one_line("x" * 20, 10) == "xxxxxxx..."


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from("ab .\t\n\x00\x7f\u00e9\u2028"), max_size=30), st.integers(5, 40), st.booleans())
def test_one_line_shortcut_gives_what_the_long_way_gives(text, limit, ascii_only):
    """A clean line is returned as it is; it must be what cleaning it would give."""
    import re

    cleaned = " ".join(re.sub(r"[\x00-\x1f\x7f]+", " ", text).split())
    if ascii_only:
        cleaned = re.sub(r"[^\x20-\x7e]", "?", cleaned)
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 3].rstrip() + "..."
    assert one_line(text, limit, ascii_only=ascii_only) == cleaned


# -- errors and states --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "action"),
    [
        ({}, DUNNO),
        ({"mail_from_reject": "fail"}, "DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later"),
        ({"helo_reject": "softfail"}, "DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later"),
        ({"permerror_reject": True}, "DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later"),
        ({"temperror_defer": True}, "DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later"),
    ],
)
def test_error_action_never_rejects(settings, action):
    assert error_action(rules(**settings)) == action


def test_for_state():
    assert for_state("PREPEND Received-SPF: Pass", "RCPT") == "PREPEND Received-SPF: Pass"
    assert for_state("PREPEND Received-SPF: Pass", "DATA") == "PREPEND Received-SPF: Pass"
    assert for_state("PREPEND Received-SPF: Pass", "END-OF-MESSAGE") == DUNNO  # access(5)
    assert for_state("550 5.7.23 x", "END-OF-MESSAGE") == "550 5.7.23 x"


# -- the service: once per message ------------------------------------------------------------


def service(checker=None, **settings):
    return PolicyService(PolicySettings(**settings), checker or FakeChecker(), RECEIVER)


def test_header_once_per_message_across_recipients():
    checker = FakeChecker({"alice@example.net": "pass"})
    svc = service(checker)
    first = value(svc.handle(attrs(recipient="bob@example.org")))
    assert first == "PREPEND Received-SPF: " + spf("pass").header
    assert value(svc.handle(attrs(recipient="carol@example.org"))) == DUNNO
    assert value(svc.handle(attrs(protocol_state="DATA", recipient=""))) == DUNNO
    assert value(svc.handle(attrs(protocol_state="END-OF-MESSAGE", recipient=""))) == DUNNO
    assert checker.calls == [("192.0.2.1", "alice@example.net", "mail.example.net")]


def test_rejection_repeated_for_every_recipient():
    checker = FakeChecker({"alice@example.net": "fail"})
    svc = service(checker, mail_from_reject="fail")
    actions = [value(svc.handle(attrs(recipient=f"r{i}@example.org"))) for i in range(3)]
    assert actions[0].startswith("550 5.7.23 ")
    assert actions == [actions[0]] * 3
    assert len(checker.calls) == 1


def test_next_message_is_checked_again():
    checker = FakeChecker({"alice@example.net": "pass"})
    svc = service(checker)
    assert value(svc.handle(attrs(instance="a"))).startswith("PREPEND ")
    assert value(svc.handle(attrs(instance="b"))).startswith("PREPEND ")
    assert len(checker.calls) == 2


def test_same_instance_other_identities_is_a_new_decision():
    checker = FakeChecker({"alice@example.net": "pass", "eve@example.com": "fail"})
    svc = service(checker, mail_from_reject="fail")
    assert value(svc.handle(attrs())).startswith("PREPEND ")
    assert value(svc.handle(attrs(sender="eve@example.com"))).startswith("550 ")


def test_without_instance_every_request_is_checked():
    checker = FakeChecker({"alice@example.net": "pass"})
    svc = service(checker)
    assert value(svc.handle(attrs(instance=None))).startswith("PREPEND ")
    assert value(svc.handle(attrs(instance=None))).startswith("PREPEND ")
    assert len(checker.calls) == 2


def test_followers_wait_for_the_first_check():
    checker = FakeChecker({"alice@example.net": "pass"}, hold=True)
    svc = service(checker)
    first, second = svc.handle(attrs()), svc.handle(attrs(recipient="carol@example.org"))
    assert len(checker.calls) == 1
    answers = {}
    first.addCallback(lambda a: answers.setdefault("first", a))
    second.addCallback(lambda a: answers.setdefault("second", a))
    assert answers == {}
    checker.fire_all()  # (the protocol keeps replies in request order)
    assert answers == {"first": "PREPEND Received-SPF: " + spf("pass").header, "second": DUNNO}


def test_first_request_at_data_prepends():
    checker = FakeChecker({"alice@example.net": "softfail"})
    svc = service(checker)
    assert value(svc.handle(attrs(protocol_state="DATA", recipient=""))).startswith("PREPEND Received-SPF: Softfail")


def test_first_request_at_end_of_message_cannot_prepend_but_can_reject():
    checker = FakeChecker({"alice@example.net": "fail", "x@example.com": "pass"})
    svc = service(checker, mail_from_reject="fail")
    assert value(svc.handle(attrs(protocol_state="END-OF-MESSAGE"))).startswith("550 5.7.23 ")
    assert value(svc.handle(attrs(protocol_state="END-OF-MESSAGE", sender="x@example.com"))) == DUNNO


def test_null_sender_checks_helo_only():
    checker = FakeChecker({"helo:mail.example.net": "pass"})
    svc = service(checker)
    assert value(svc.handle(attrs(sender=""))) == "PREPEND Received-SPF: " + spf("pass", "helo").header
    assert checker.calls == [("192.0.2.1", "", "mail.example.net")]


def test_null_sender_without_usable_helo_gets_none_without_a_check():
    checker = FakeChecker()
    svc = service(checker)
    assert value(svc.handle(attrs(sender="", helo_name="[192.0.2.1]"))) == (
        "PREPEND Received-SPF: None (mx.example.org: HELO name is not a domain name) client-ip=192.0.2.1; "
        'helo="[192.0.2.1]"; receiver=mx.example.org; identity=helo'
    )
    assert checker.calls == []


def test_helo_checked_only_when_helo_reject_can_refuse():
    checker = FakeChecker({"alice@example.net": "pass", "helo:mail.example.net": "fail"})
    assert value(service(checker).handle(attrs())).startswith("PREPEND ")
    assert len(checker.calls) == 1
    checker.calls.clear()
    assert value(service(checker, helo_reject="fail").handle(attrs())).startswith("550 5.7.23 SPF fail for HELO")
    assert len(checker.calls) == 2


def test_skipped_client_is_not_checked_nor_remembered():
    checker = FakeChecker()
    svc = service(checker)
    assert value(svc.handle(attrs(client_address="127.0.0.1"))) == DUNNO
    assert value(svc.handle(attrs(client_address="::ffff:127.0.0.1"))) == DUNNO
    assert checker.calls == [] and len(svc._messages) == 0


def test_whitelisted_header_once():
    svc = service(whitelist_networks=("192.0.2.0/24",))
    assert value(svc.handle(attrs())).startswith("PREPEND X-Comment: SPF skipped for whitelisted relay")
    assert value(svc.handle(attrs(recipient="carol@example.org"))) == DUNNO


@pytest.mark.parametrize(("domain_result", "whitelisted"), [("pass", True), ("fail", False), ("temperror", False)])
def test_whitelist_domains_by_their_spf(domain_result, whitelisted):
    checker = FakeChecker({"alice@example.net": "fail", "postmaster@pobox.com": domain_result})
    svc = service(checker, mail_from_reject="fail", whitelist_domains=("pobox.com",))
    action = value(svc.handle(attrs()))
    assert ("192.0.2.1", "postmaster@pobox.com", "pobox.com") in checker.calls
    if whitelisted:
        assert action.startswith("PREPEND X-Comment: SPF skipped for whitelisted relay of pobox.com")
    else:
        assert action.startswith("550 5.7.23 ")


def test_missing_attributes_are_dunno_without_checks():
    checker = FakeChecker()
    svc = service(checker, mail_from_reject="fail")
    assert value(svc.handle({})) == DUNNO
    assert value(svc.handle(attrs(request=None))) == DUNNO
    assert value(svc.handle(attrs(client_address=None))) == DUNNO
    assert value(svc.handle(attrs(protocol_state="CONNECT"))) == DUNNO
    assert checker.calls == []


@pytest.mark.parametrize(("settings", "action"), [({}, DUNNO), ({"mail_from_reject": "fail"}, "DEFER_IF_PERMIT 4.3.0")])
def test_checker_crash_is_the_error_action_and_the_next_recipient_retries(settings, action):
    checker = FakeChecker({"alice@example.net": RuntimeError("bug")})
    svc = service(checker, **settings)
    assert value(svc.handle(attrs())).startswith(action)
    checker.results["alice@example.net"] = "pass"
    assert value(svc.handle(attrs(recipient="carol@example.org"))).startswith("PREPEND ")


def test_crash_releases_waiting_followers():
    checker = FakeChecker({"alice@example.net": "pass"}, hold=True)
    svc = service(checker, mail_from_reject="fail")
    first, second = svc.handle(attrs()), svc.handle(attrs(recipient="carol@example.org"))
    d, _result = checker.pending.pop()
    d.errback(RuntimeError("bug"))
    assert value(first) == value(second) == "DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later"


def test_remembered_messages_are_bounded():
    svc = PolicyService(PolicySettings(), FakeChecker({"alice@example.net": "pass"}), RECEIVER, max_messages=3)
    for i in range(10):
        value(svc.handle(attrs(instance=str(i))))
    assert [key[0] for key in svc._messages] == ["7", "8", "9"]


def test_reconfigure_keeps_remembered_messages():
    checker = FakeChecker({"alice@example.net": "fail"})
    svc = service(checker)
    assert value(svc.handle(attrs())).startswith("PREPEND ")
    svc.reconfigure(PolicySettings(mail_from_reject="fail"))
    assert value(svc.handle(attrs(recipient="carol@example.org"))) == DUNNO  # same message: no second header
    assert value(svc.handle(attrs(instance="next"))).startswith("550 5.7.23 ")
    assert svc.error_action().startswith("DEFER_IF_PERMIT")
