"""Embedded SPF through a real Postfix: the policy service and SPF-aware forwarding.

Everything is real and on loopback: a private Postfix (tests/e2e/postfix_instance.py),
the SMTP sink standing for the rest of the world, srsd as a subprocess, and a DNS
server (tests/dnsserver.py) holding the test zones, which srsd is pointed at with
``[dns] nameservers``. Postfix's main.cf gets the shipped snippet files with only the
ports changed: ``main.cf.policy`` for the policy service, ``main.cf.tcp_table`` /
``main.cf.socketmap`` for SPF-aware forwarding.

The test SMTP client always connects from 127.0.0.1, so 127.0.0.1 is the IP address
SPF is evaluated for (policy service) and the egress IP of forwarded mail (SPF-aware
rewriting).
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from dataclasses import dataclass

import pytest

from tests.srsd_daemon import serving

from .conftest import FORWARD_TARGET, FORWARDING_ALIAS, LOCAL_DOMAINS, SNIPPETS, e2e_srsd
from .postfix_instance import SNIPPETS_DIR, PostfixInstance, render_snippet
from .smtp_sink import ReceivedMessage, header_fields, header_values, marked_message

# -- DNS ---------------------------------------------------------------------------

ZONE = {
    # SPF authorizes the test client / our egress address directly ...
    "pass.example": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
    # ... or through an include: (a mail provider's record, the usual case).
    "included.example": [{"TXT": "v=spf1 include:_spf.provider.example -all"}],
    "_spf.provider.example": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
    # Authorizes nobody.
    "fail.example": [{"TXT": "v=spf1 -all"}],
    # Authorizes nobody, with an exp= text that holds a line break: it must not end
    # the policy reply early (docs/policy.md, "What is answered").
    "exp-fail.example": [{"TXT": "v=spf1 -all exp=why.exp-fail.example"}],
    "why.exp-fail.example": [{"TXT": "%{d} sends no mail.\r\nX-Injected: yes"}],
}

DNS_TIMEOUT = 0.5  # [dns] timeout
CHECK_BUDGET = 5.0  # [spf] check_budget (policy service)
DECISION_BUDGET = 1.0  # [spf] decision_budget
# What a forwarded message may take on top of srsd's decision budget: Postfix's own
# work (smtpd, cleanup, qmgr, smtp to the sink) is ~0.1-0.3 s here.
POSTFIX_OVERHEAD = 2.0

# -- Postfix -----------------------------------------------------------------------

RCPT_1, TARGET_1 = FORWARDING_ALIAS, FORWARD_TARGET
RCPT_2, TARGET_2 = "fwd-other@fwd.example", "other@remote.example"
# The snippet's smtpd_recipient_restrictions start with permit_mynetworks; the test
# client is 127.0.0.1, so with the harness's default mynetworks (127.0.0.0/8) Postfix
# would let it through before ever asking srsd. A network nobody connects from:
POLICY_MYNETWORKS = "192.0.2.0/24"

SRS_HASH = r"[A-Za-z0-9+/_-]{4}"
SRS_TIMESTAMP = r"[A-Z2-7]{2}"


@dataclass(frozen=True)
class Sent:
    marker: str
    sender: str


def new_marker() -> str:
    return f"spf-e2e-{uuid.uuid4().hex}"


def unique_sender(domain: str) -> Sent:
    """A sender whose local part is unique, so log lines and sink messages are this test's."""
    marker = new_marker()
    return Sent(marker, f"{marker}@{domain}")


def submit(postfix: PostfixInstance, sent: Sent, recipients: list[str]) -> None:
    """Send one message; every reply must be 2xx/3xx."""
    with postfix.smtp() as client:
        reply = client.mail(sent.sender)
        assert reply[0] == 250, f"MAIL FROM:<{sent.sender}> -> {reply}"
        for rcpt in recipients:
            reply = client.rcpt(rcpt)
            assert reply[0] == 250, f"RCPT TO:<{rcpt}> -> {reply}"
        reply = client.data(marked_message(sent.marker, sent.sender, recipients))
        assert reply[0] == 250, f"DATA -> {reply}"


def fresh_domain(dns, spf: str | None) -> str:
    """A domain never looked up before (nothing of it is cached in srsd), with *spf*
    as its TXT record (None: not in the zone)."""
    domain = f"d{uuid.uuid4().hex[:16]}.example"
    if spf is not None:
        dns.add(domain, {"TXT": spf})
    return domain


def dns_config(dns) -> dict[str, dict]:
    return {"dns": {"nameservers": [dns.address], "timeout": DNS_TIMEOUT}}


def policy_config(dns, **policy: object) -> dict[str, dict]:
    """srsd's sections for the policy service: the test DNS server, [policy] *policy*.

    The default skip_networks (loopback, also v4-mapped) answers DUNNO, with no check
    and no header, to local clients. The test client connects from 127.0.0.1, so with
    the default nothing would be checked at all: unless *policy* says otherwise
    (``skip_networks=None`` = the default), the list is emptied, which makes 127.0.0.1
    an ordinary outside client.
    """
    policy = {key: value for key, value in {"skip_networks": [], **policy}.items() if value is not None}
    return dns_config(dns) | {"spf": {"check_budget": CHECK_BUDGET}, "policy": policy}


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns(dns_server_session):
    """The session's loopback DNS server holding ZONE for this module."""
    dns_server_session.reset()
    dns_server_session.set_zone(ZONE)
    yield dns_server_session
    dns_server_session.reset()


@pytest.fixture(scope="module")
def policy_srsd(tmp_path_factory, dns):
    """srsd with only the policy endpoint; tests reload the [policy] they need."""
    with serving(
        e2e_srsd(tmp_path_factory, "srsd-policy", endpoints=("policy",), sections=policy_config(dns))
    ) as process:
        yield process


@pytest.fixture(scope="module")
def policy_postfix(sink, policy_srsd):
    """Postfix with postfix-snippets/main.cf.policy as shipped (port changed)."""
    port = policy_srsd.ports["policy"]
    snippet = render_snippet("main.cf.policy", policy_srsd.ports, required=("smtpd_recipient_restrictions",))
    shipped = (SNIPPETS_DIR / "main.cf.policy").read_text()
    assert snippet == shipped.replace("inet:127.0.0.1:10004,", f"inet:127.0.0.1:{port},"), snippet
    instance = PostfixInstance(
        relay_port=sink.port,
        local_domains=LOCAL_DOMAINS,
        virtual_aliases={RCPT_1: TARGET_1, RCPT_2: TARGET_2},
        extra_main_cf=snippet,
        label="policy",
        mynetworks=POLICY_MYNETWORKS,
    )
    try:
        instance.start()
        yield instance
    finally:
        instance.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))


@pytest.fixture(scope="module")
def aware_srsd(tmp_path_factory, dns):
    """srsd with the lookup endpoints and SPF-aware rewriting for egress 127.0.0.1."""
    spf = {"aware": True, "egress_ips": ["127.0.0.1"], "decision_budget": DECISION_BUDGET}
    with serving(e2e_srsd(tmp_path_factory, "srsd-aware", sections=dns_config(dns) | {"spf": spf})) as process:
        yield process


@pytest.fixture(scope="module", params=sorted(SNIPPETS))
def aware_postfix(request, sink, aware_srsd):
    """Postfix forwarding through srsd with one canonical-map snippet as shipped."""
    instance = PostfixInstance(
        relay_port=sink.port,
        local_domains=LOCAL_DOMAINS,
        virtual_aliases={FORWARDING_ALIAS: FORWARD_TARGET},
        extra_main_cf=render_snippet(SNIPPETS[request.param], aware_srsd.ports),
        label=f"aware-{request.param}",
    )
    try:
        instance.start()
        yield instance
    finally:
        instance.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))


# -- 1. the policy service -------------------------------------------------------------


def test_pass_gets_one_received_spf_header_for_two_recipients(policy_postfix, policy_srsd, sink, dns):
    policy_srsd.reload(policy_config(dns))
    sent = unique_sender("pass.example")

    submit(policy_postfix, sent, [RCPT_1, RCPT_2])

    received = sink.wait_for(sent.marker)
    assert (received.mail_from, sorted(received.rcpt_tos)) == (sent.sender, sorted([TARGET_1, TARGET_2]))
    spf = header_values(received.data, "Received-SPF")
    assert len(spf) == 1, header_fields(received.data)
    assert spf[0].startswith("Pass "), spf
    assert "client-ip=127.0.0.1;" in spf[0] and f'envelope-from="{sent.sender}";' in spf[0], spf
    assert "receiver=fwd.example;" in spf[0] and "helo=client.test;" in spf[0], spf
    # Postfix puts the prepended header above its own Received: (docs/policy.md).
    assert [name for name, _ in header_fields(received.data)][:2] == ["Received-SPF", "Received"]
    assert not header_values(received.data, "Authentication-Results")
    # One log line per message, not per recipient (docs/policy.md, "Logging").
    decided = [line for line in policy_srsd.log_text().splitlines() if f"from=<{sent.sender}>" in line]
    assert len(decided) == 1 and "mailfrom=pass -> PREPEND Received-SPF" in decided[0], decided


def test_loopback_client_is_not_checked_by_default(policy_postfix, policy_srsd, sink, dns):
    """What the tests' `skip_networks = []` is for: left at its default, srsd answers
    DUNNO to 127.0.0.1, without a lookup or a header (docs/policy.md)."""
    policy_srsd.reload(policy_config(dns, skip_networks=None, mail_from_reject="fail"))
    sent = Sent(new_marker(), f"{uuid.uuid4().hex}@{fresh_domain(dns, 'v=spf1 -all')}")

    submit(policy_postfix, sent, [RCPT_1])

    received = sink.wait_for(sent.marker)
    assert not header_values(received.data, "Received-SPF") and not header_values(received.data, "X-Comment"), (
        header_fields(received.data)
    )
    assert dns.count(sent.sender.rpartition("@")[2]) == 0, dns.queries
    assert f"from=<{sent.sender}>" not in policy_srsd.log_text()  # logged at debug only


def test_fail_is_only_marked_by_default(policy_postfix, policy_srsd, sink, dns):
    policy_srsd.reload(policy_config(dns))  # mail_from_reject = "none", the default
    sent = unique_sender("fail.example")

    submit(policy_postfix, sent, [RCPT_1])

    received = sink.wait_for(sent.marker)
    spf = header_values(received.data, "Received-SPF")
    assert len(spf) == 1 and spf[0].startswith("Fail "), header_fields(received.data)
    assert f'envelope-from="{sent.sender}";' in spf[0], spf


def test_fail_is_rejected_at_rcpt_with_mail_from_reject(policy_postfix, policy_srsd, sink, dns):
    policy_srsd.reload(policy_config(dns, mail_from_reject="fail"))
    refused = unique_sender("fail.example")
    with_exp = unique_sender("exp-fail.example")

    with policy_postfix.smtp() as client:
        assert client.mail(refused.sender)[0] == 250
        for rcpt in (RCPT_1, RCPT_2):  # every recipient gets the message's refusal
            code, text = client.rcpt(rcpt)
            assert (code, text.decode()) == (
                550,
                f"5.7.23 <{rcpt}>: Recipient address rejected: "
                "SPF fail for sender domain fail.example: SPF fail - not authorized",
            )
        code, _ = client.docmd("DATA")
        assert code == 554, code  # no valid recipients: nothing is accepted
        assert client.rset()[0] == 250

        # The domain's exp= text is the explanation, its line break made a space:
        # one reply line, and the session goes on in step.
        assert client.mail(with_exp.sender)[0] == 250
        code, text = client.rcpt(RCPT_1)
        assert (code, text.decode()) == (
            550,
            f"5.7.23 <{RCPT_1}>: Recipient address rejected: "
            "SPF fail for sender domain exp-fail.example: exp-fail.example sends no mail. X-Injected: yes",
        )
        assert client.noop()[0] == 250

    # A passing sender is still accepted under the same configuration.
    accepted = unique_sender("pass.example")
    submit(policy_postfix, accepted, [RCPT_1])
    spf = header_values(sink.wait_for(accepted.marker).data, "Received-SPF")
    assert len(spf) == 1 and spf[0].startswith("Pass "), spf
    assert not sink.matching(refused.marker) and not sink.matching(with_exp.marker)


def test_whitelisted_forwarder_is_accepted_with_a_failing_sender(policy_postfix, policy_srsd, sink, dns):
    policy_srsd.reload(policy_config(dns, mail_from_reject="fail", whitelist_networks=["127.0.0.1/32"]))
    domain = fresh_domain(dns, "v=spf1 -all")
    sent = Sent(new_marker(), f"{uuid.uuid4().hex}@{domain}")

    submit(policy_postfix, sent, [RCPT_1, RCPT_2])

    received = sink.wait_for(sent.marker)
    assert not header_values(received.data, "Received-SPF"), header_fields(received.data)
    comments = header_values(received.data, "X-Comment")
    assert comments == [
        "SPF skipped for whitelisted relay - client-ip=127.0.0.1; "
        f'envelope-from="{sent.sender}"; helo=client.test; receiver=fwd.example'
    ], comments
    assert dns.count(domain) == 0, dns.queries  # not even looked up
    decided = [line for line in policy_srsd.log_text().splitlines() if f"from=<{sent.sender}>" in line]
    assert len(decided) == 1 and "SPF skipped for whitelisted relay -> PREPEND X-Comment" in decided[0], decided


def test_authentication_results_header(policy_postfix, policy_srsd, sink, dns):
    policy_srsd.reload(policy_config(dns, header="authentication-results", authserv_id="mx.fwd.example"))
    passing, failing = unique_sender("pass.example"), unique_sender("fail.example")

    submit(policy_postfix, passing, [RCPT_1, RCPT_2])
    submit(policy_postfix, failing, [RCPT_1])

    received = sink.wait_for(passing.marker)
    assert header_values(received.data, "Authentication-Results") == [
        "mx.fwd.example; spf=pass smtp.mailfrom=pass.example"
    ]
    assert not header_values(received.data, "Received-SPF")
    received = sink.wait_for(failing.marker)
    assert header_values(received.data, "Authentication-Results") == [
        "mx.fwd.example; spf=fail smtp.mailfrom=fail.example"
    ]


def test_dead_dns_gives_temperror(policy_postfix, policy_srsd, sink, dns):
    marked = Sent(new_marker(), f"alice@{fresh_domain(dns, 'v=spf1 ip4:127.0.0.1 -all')}")
    deferred = Sent(new_marker(), f"bob@{fresh_domain(dns, 'v=spf1 ip4:127.0.0.1 -all')}")
    policy_srsd.reload(policy_config(dns))

    dns.pause()  # every query is dropped: a dead nameserver
    try:
        started = time.monotonic()
        submit(policy_postfix, marked, [RCPT_1])
        elapsed = time.monotonic() - started
        policy_srsd.reload(policy_config(dns, temperror_defer=True))
        with policy_postfix.smtp() as client:
            assert client.mail(deferred.sender)[0] == 250
            code, text = client.rcpt(RCPT_1)
    finally:
        dns.resume()

    domain = deferred.sender.rpartition("@")[2]
    assert code == 450, (code, text)
    assert text.decode().startswith(
        f"4.7.24 <{RCPT_1}>: Recipient address rejected: SPF temperror for sender domain {domain}: "
    ), text
    received = sink.wait_for(marked.marker)
    spf = header_values(received.data, "Received-SPF")
    assert len(spf) == 1 and spf[0].startswith("TempError "), header_fields(received.data)
    assert elapsed < CHECK_BUDGET, elapsed
    print(f"policy check with dead DNS: message accepted in {elapsed:.2f} s; 450 reply {text.decode()!r}; {spf[0]}")


# -- 3. bad policy requests on the daemon's socket ---------------------------------------


def good_request(sender: str) -> bytes:
    """A request as Postfix 3.7 sends it at RCPT (abridged to what matters plus some)."""
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "127.0.0.1",
        "client_name": "unknown",
        "reverse_client_name": "unknown",
        "client_port": "54321",
        "helo_name": "client.test",
        "sender": sender,
        "recipient": RCPT_1,
        "recipient_count": "0",
        "queue_id": "",
        "instance": f"{uuid.uuid4().hex[:5]}.{uuid.uuid4().hex[:8]}.0",
        "size": "0",
        "sasl_method": "",
        "encryption_protocol": "",
    }
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


class PolicyClient:
    """One connection to the policy endpoint; replies are read one at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def ask(self, request: bytes, chunk: int = 0) -> str:
        """Send *request* (in *chunk*-byte writes when given); its one reply's action."""
        if chunk:
            for i in range(0, len(request), chunk):
                self.sock.sendall(request[i : i + chunk])
        else:
            self.sock.sendall(request)
        while b"\n\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, f"srsd closed the connection; got {self.buffer!r}"
            self.buffer += data
        reply, _, self.buffer = self.buffer.partition(b"\n\n")
        text = reply.decode("utf-8")
        assert re.fullmatch(r"action=[^\n]+", text), f"not a policy reply: {reply!r}"
        return text.removeprefix("action=")

    def assert_nothing_more(self, wait: float = 0.2) -> None:
        self.sock.settimeout(wait)
        try:
            extra = self.sock.recv(65536)
        except TimeoutError:
            extra = b""
        finally:
            self.sock.settimeout(10)
        assert self.buffer + extra == b"", f"unexpected extra reply bytes: {self.buffer + extra!r}"

    def close(self) -> None:
        self.sock.close()


ERROR_ACTIONS = {
    "header-only": ({}, "DUNNO"),
    "enforcing": ({"mail_from_reject": "fail"}, "DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later"),
}


@pytest.mark.parametrize("mode", sorted(ERROR_ACTIONS))
def test_bad_policy_requests_get_an_answer_and_the_daemon_goes_on(policy_srsd, dns, mode):
    policy, error_action = ERROR_ACTIONS[mode]
    policy_srsd.reload(policy_config(dns, **policy))
    client = PolicyClient(policy_srsd.ports["policy"])
    try:
        # Missing attributes: nothing to check, or a check with what is there.
        assert client.ask(b"\n") == "DUNNO"  # an empty request
        assert client.ask(b"request=smtpd_access_policy\n\n") == "DUNNO"  # no client_address
        assert client.ask(b"protocol_state=RCPT\nclient_address=127.0.0.1\nsender=a@pass.example\n\n") == "DUNNO"
        assert client.ask(b"request=smtpd_access_policy\nclient_address=not-an-ip\nsender=a@pass.example\n\n") == (
            "DUNNO"
        )
        assert client.ask(b"request=smtpd_access_policy\nprotocol_state=CONNECT\nclient_address=127.0.0.1\n\n") == (
            "DUNNO"
        )
        # No sender, no HELO: the null sender's HELO identity, "none" without a lookup.
        null_sender = client.ask(b"request=smtpd_access_policy\nclient_address=127.0.0.1\n\n")
        assert null_sender.startswith("PREPEND Received-SPF: None "), null_sender

        # Malformed: the service's error action, never a rejection.
        assert client.ask(b"GET / HTTP/1.0\r\nHost: srsd\r\n\r\n") == error_action  # no "=" in a line
        assert client.ask(b"\x00\xff\xfe junk without equals\n\x01\x02\n\n") == error_action
        assert client.ask(b"=no-name\nrequest=smtpd_access_policy\n\n") == error_action
        too_many = b"request=smtpd_access_policy\n" + b"".join(b"a%d=1\n" % i for i in range(150)) + b"\n"
        assert client.ask(too_many) == error_action
        long_line = b"request=smtpd_access_policy\nclient_address=127.0.0.1\nsender=" + b"a" * 5000 + b"@x\n\n"
        assert client.ask(long_line) == error_action
        huge_line = b"sender=" + b"b" * (1 << 20) + b"\n\n"  # 1 MiB, one line
        assert client.ask(huge_line) == error_action
        long_request = b"request=smtpd_access_policy\n" + b"".join(b"x%d=%s\n" % (i, b"c" * 3000) for i in range(6))
        assert client.ask(long_request + b"\n") == error_action  # 18 KB over 16 KiB

        # The same connection is still in step: good requests get their own answers,
        # also when they arrive one byte at a time.
        good = client.ask(good_request("alice@pass.example"))
        assert good.startswith("PREPEND Received-SPF: Pass "), good
        good = client.ask(good_request("bob@pass.example"), chunk=1)
        assert good.startswith("PREPEND Received-SPF: Pass "), good
        refused = client.ask(good_request("carol@fail.example"))
        if mode == "enforcing":
            assert refused == "550 5.7.23 SPF fail for sender domain fail.example: SPF fail - not authorized"
        else:
            assert refused.startswith("PREPEND Received-SPF: Fail "), refused
        client.assert_nothing_more()
    finally:
        client.close()

    # Connections that end mid-request or mid-line hurt nobody else.
    for abandoned in (b"request=smtpd_access_policy\nclient_addr", b"sender=" + b"d" * 10000):
        with socket.create_connection(("127.0.0.1", policy_srsd.ports["policy"]), timeout=10) as sock:
            sock.sendall(abandoned)
    client = PolicyClient(policy_srsd.ports["policy"])
    try:
        good = client.ask(good_request("dave@pass.example"))
        assert good.startswith("PREPEND Received-SPF: Pass "), good
    finally:
        client.close()
    policy_srsd.assert_running()
    assert "Traceback" not in policy_srsd.log_text(), policy_srsd.diagnostics()


# -- 2. SPF-aware forwarding -----------------------------------------------------------


def forward(postfix: PostfixInstance, sink, sent: Sent, timeout: float = 15.0) -> ReceivedMessage:
    submit(postfix, sent, [FORWARDING_ALIAS])
    received = sink.wait_for(sent.marker, timeout=timeout)
    assert received.rcpt_tos == (FORWARD_TARGET,), received
    return received


def srs0_of(sender: str) -> re.Pattern[str]:
    local, _, domain = sender.rpartition("@")
    return re.compile(rf"SRS0={SRS_HASH}={SRS_TIMESTAMP}={re.escape(domain)}={re.escape(local)}@fwd\.example")


def test_sender_whose_spf_includes_egress_keeps_its_envelope(aware_postfix, aware_srsd, sink):
    sent = unique_sender("included.example")

    received = forward(aware_postfix, sink, sent)

    assert received.mail_from == sent.sender, received
    assert f"forward {sent.sender}: kept, its SPF authorizes our egress (127.0.0.1: pass)" in aware_srsd.log_text()


def test_sender_with_minus_all_leaves_as_srs0(aware_postfix, aware_srsd, sink):
    # A local part short enough for a plain SRS0 (longer ones get an alias: docs/alias-store.md).
    sent = Sent(new_marker(), f"u{uuid.uuid4().hex[:12]}@fail.example")

    received = forward(aware_postfix, sink, sent)

    assert srs0_of(sent.sender).fullmatch(received.mail_from), received
    assert f"forward {sent.sender} -> {received.mail_from}: rewritten (127.0.0.1: fail)" in aware_srsd.log_text()
    reverse = aware_srsd.cli("reverse", received.mail_from)
    assert (reverse.returncode, reverse.stdout.strip()) == (0, sent.sender), reverse


def test_long_sender_with_minus_all_leaves_with_an_alias(aware_postfix, aware_srsd, sink):
    """SPF-aware rewriting, then the alias store: the log names the address that leaves."""
    sent = unique_sender("fail.example")  # 53 octets: its SRS0 local part would be 66

    received = forward(aware_postfix, sink, sent)

    assert re.fullmatch(r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}==[A-Z2-7]{16}@fwd\.example", received.mail_from), received
    assert f"forward {sent.sender} -> {received.mail_from}: rewritten (127.0.0.1: fail)" in aware_srsd.log_text()
    reverse = aware_srsd.cli("reverse", received.mail_from)
    assert (reverse.returncode, reverse.stdout.strip()) == (0, sent.sender), reverse


def test_dead_dns_still_forwards_rewritten_within_the_budget(aware_postfix, aware_srsd, sink, dns):
    # A domain never asked before: nothing of it is in srsd's DNS or decision cache.
    # (A stopped server is the same to srsd: its queries to a closed UDP port time out.)
    # Its SPF would keep the sender, were it readable: rewriting is the safe default.
    domain = fresh_domain(dns, "v=spf1 ip4:127.0.0.1 -all")
    sent = Sent(new_marker(), f"alice@{domain}")
    control = unique_sender("fail.example")
    started = time.monotonic()
    forward(aware_postfix, sink, control)
    baseline = time.monotonic() - started

    dns.pause()  # every query is dropped from now on: a dead nameserver
    try:
        started = time.monotonic()
        received = forward(aware_postfix, sink, sent, timeout=DECISION_BUDGET + POSTFIX_OVERHEAD + 10)
        elapsed = time.monotonic() - started
    finally:
        dns.resume()

    print(f"forwarded with dead DNS in {elapsed:.2f} s (live DNS: {baseline:.2f} s)")
    assert srs0_of(sent.sender).fullmatch(received.mail_from), received
    asked = [q for q in dns.queries if q.name == domain]
    assert asked and not any(q.answered for q in asked), asked  # srsd did ask, and got no answer
    assert f"forward {sent.sender} -> {received.mail_from}: rewritten (127.0.0.1: temperror)" in aware_srsd.log_text()
    assert elapsed < DECISION_BUDGET + POSTFIX_OVERHEAD, (
        f"forwarding took {elapsed:.2f} s with dead DNS (budget {DECISION_BUDGET} s, live DNS {baseline:.2f} s)"
    )
