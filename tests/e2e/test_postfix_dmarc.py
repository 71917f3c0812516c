"""DMARC on incoming mail through a real Postfix and the real ``srsd serve`` milter, each
verdict cross-checked with Mail::DMARC (issue 12 item 3's acceptance test).

The stack is test_postfix_dkim's: a private Postfix with the shipped ``main.cf.tcp_table``
and ``main.cf.milter`` snippets, srsd's milter on the snippet's unix socket, the SMTP sink
as the next hop, the loopback DNS server holding the zone below. The test client connects
from 127.0.0.2, outside ``dkim.trusted_networks``: its mail to the forwarding alias is
incoming (verified, DMARC-evaluated, ARC-sealed, signed).

Every message is built here, signed and ARC-sealed with dkimpy as its origin or a mailing
list would, and judged twice:

* by srsd through Postfix: the ``dmarc=`` result in the Authentication-Results field that
  reaches the sink, or the SMTP refusal and srsd's DMARC log line;
* by Mail::DMARC 1.20211209 (tests/maildmarc.py) over the same inputs: the From: domain,
  the SPF result the zone gives MAIL FROM for 127.0.0.2 (srsd's own ``spf=`` is asserted to
  be it) and the message as sent, whose signatures Mail::DKIM verifies.

Mail::DMARC implements RFC 7489 (public suffix list), srsd RFC 9989 (DNS tree walk). Where
they agree, the result and a failure's policy must be equal; ``np`` and a DNS timeout are
the documented differences (docs/dmarc.md), asserted on both sides. The ARC override is
srsd's local policy: Mail::DMARC's verdict on such a message is the failure srsd records.

``dmarc.action`` is switched by reloading srsd (SIGHUP): ``header`` (the default: the
result, nothing else) and ``enforce`` (550 for p=reject, Postfix's hold queue for
p=quarantine, 451 when DNS fails; lists.example.eu's ARC seal overrides a failure,
relay.example's does not).
"""

from __future__ import annotations

import base64
import re
import smtplib
import uuid
from dataclasses import dataclass
from email.utils import formatdate

import authres
import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import maildmarc
from tests.metrics_scrape import scrape, value

from .conftest import FORWARD_TARGET, FORWARDING_ALIAS, SRS_DOMAIN
from .smtp_sink import header_values
from .test_postfix_dkim import AUTHSERV_ID, Stack, dnsfunc, milter_stack, running, smtp_from

OUTSIDE_IP = "127.0.0.2"  # the test client: not in dkim.trusted_networks
FWD_SELECTOR = "f1"
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]
_QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


# -- keys and the zone -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    pkcs8: bytes  # srsd's key_file
    pkcs1: bytes  # what dkimpy signs with
    record: str  # the TXT record

    @classmethod
    def new(cls) -> Key:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        none = serialization.NoEncryption()
        return cls(
            private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none),
            private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, none),
            "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode(),
        )


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {name: Key.new() for name in ("fwd", "origin", "list")}


def spf(*ips: str) -> dict:
    return {"TXT": "v=spf1 " + " ".join(f"ip4:{ip}" for ip in ips) + " -all"}


A = {"A": "192.0.2.1"}


# Author and envelope domains. Mail::DMARC accepts only names under a public suffix, and
# finds Organizational Domains with the public suffix list: each role gets a registrable
# domain of its own (on this loopback zone only), so no two are one organization to it.
SPF_DOMAIN = "example.com"  # SPF-authenticated through mail.example.com (relaxed)
DKIM_DOMAIN = "example.net"  # DKIM-authenticated
REJECT_DOMAIN = "example.org"  # p=reject
UNRELATED_SIGNER = "example.info"  # a valid signature that does not align with example.org
NO_RECORD_DOMAIN = "example.biz"  # no DMARC record anywhere
NP_PARENT = "example.de"  # np=reject; gone.example.de does not exist
SP_PARENT = "example.nl"  # sp=quarantine; shop.example.nl exists
SLOW_DOMAIN = "example.fr"  # its policy cannot be read right now
ELSEWHERE = "example.io"  # its SPF does not authorize the client (127.0.0.1 only)
TRUSTED_SEALER = "lists.example.eu"  # dmarc.trusted_arc_sealers: a mailing list
UNTRUSTED_SEALER = "relay.example.be"  # another one, not trusted


def zone(keys: dict[str, Key]) -> dict:
    origin, sealer = {"TXT": keys["origin"].record}, {"TXT": keys["list"].record}
    return {
        f"{FWD_SELECTOR}._domainkey.{SRS_DOMAIN}": [{"TXT": keys["fwd"].record}],
        SPF_DOMAIN: [A],
        f"mail.{SPF_DOMAIN}": [spf(OUTSIDE_IP)],
        f"_dmarc.{SPF_DOMAIN}": [{"TXT": "v=DMARC1; p=reject"}],
        DKIM_DOMAIN: [A],
        f"_dmarc.{DKIM_DOMAIN}": [{"TXT": "v=DMARC1; p=reject"}],
        f"d1._domainkey.{DKIM_DOMAIN}": [origin],
        REJECT_DOMAIN: [A],
        f"_dmarc.{REJECT_DOMAIN}": [{"TXT": "v=DMARC1; p=reject"}],
        f"d1._domainkey.{REJECT_DOMAIN}": [origin],
        f"d1._domainkey.{UNRELATED_SIGNER}": [origin],
        NO_RECORD_DOMAIN: [A, spf(OUTSIDE_IP)],
        NP_PARENT: [A],
        f"_dmarc.{NP_PARENT}": [{"TXT": "v=DMARC1; p=reject; sp=quarantine; np=reject"}],
        SP_PARENT: [A],
        f"shop.{SP_PARENT}": [A],
        f"_dmarc.{SP_PARENT}": [{"TXT": "v=DMARC1; p=none; sp=quarantine"}],
        SLOW_DOMAIN: [A],
        f"_dmarc.{SLOW_DOMAIN}": ["TIMEOUT"],
        ELSEWHERE: [spf("127.0.0.1")],
        TRUSTED_SEALER: [spf(OUTSIDE_IP)],
        f"arc._domainkey.{TRUSTED_SEALER}": [sealer],
        UNTRUSTED_SEALER: [spf(OUTSIDE_IP)],
        f"arc._domainkey.{UNTRUSTED_SEALER}": [sealer],
    }


# -- the messages ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How one kind of message is made: its From: domain, MAIL FROM domain and the SPF
    result the zone gives that for 127.0.0.2, who signs it (d=), which list re-sends it
    (changing Subject and body, so the origin's signature breaks, and ARC-sealing it)."""

    from_domain: str
    mail_from_domain: str
    spf: str
    signer: str | None = None
    sealer: str | None = None


RECIPES = {
    "pass via SPF": Recipe(SPF_DOMAIN, f"mail.{SPF_DOMAIN}", "pass"),
    "pass via DKIM": Recipe(DKIM_DOMAIN, ELSEWHERE, "fail", signer=DKIM_DOMAIN),
    "fail": Recipe(REJECT_DOMAIN, ELSEWHERE, "fail", signer=UNRELATED_SIGNER),
    "none": Recipe(NO_RECORD_DOMAIN, NO_RECORD_DOMAIN, "pass"),
    "np: non-existent subdomain": Recipe(f"gone.{NP_PARENT}", ELSEWHERE, "fail"),
    "sp: subdomain policy": Recipe(f"shop.{SP_PARENT}", ELSEWHERE, "fail"),
    "DNS timeout": Recipe(SLOW_DOMAIN, ELSEWHERE, "fail"),
    "ARC, trusted sealer": Recipe(REJECT_DOMAIN, TRUSTED_SEALER, "pass", REJECT_DOMAIN, TRUSTED_SEALER),
    "ARC, untrusted sealer": Recipe(REJECT_DOMAIN, UNTRUSTED_SEALER, "pass", REJECT_DOMAIN, UNTRUSTED_SEALER),
}


@dataclass(frozen=True)
class Expect:
    """srsd's (result, policy for a failure) and, where RFC 7489 differs, Mail::DMARC's
    (result, disposition); None = the same as srsd's."""

    srsd: tuple[str, str | None]
    mail_dmarc: tuple[str, str] | None = None


EXPECT = {
    "pass via SPF": Expect(("pass", None)),
    "pass via DKIM": Expect(("pass", None)),
    "fail": Expect(("fail", "reject")),
    "none": Expect(("none", None)),
    "np: non-existent subdomain": Expect(("fail", "reject"), ("fail", "quarantine")),  # RFC 7489: no np, sp applies
    "sp: subdomain policy": Expect(("fail", "quarantine")),
    "DNS timeout": Expect(("temperror", None), ("none", "none")),  # Mail::DMARC reads a timeout as no record
    "ARC, trusted sealer": Expect(("fail", "reject")),  # the override is local policy, not a pass
    "ARC, untrusted sealer": Expect(("fail", "reject")),
}

#: what each action does to each kind of message: each test below takes the kinds of one outcome
HEADER_MODE = {name: "delivered" for name in RECIPES if name != "ARC, untrusted sealer"}
ENFORCE_MODE = {
    "pass via DKIM": "delivered",
    "fail": "550 5.7.1",
    "np: non-existent subdomain": "550 5.7.1",
    "sp: subdomain policy": "held",
    "DNS timeout": "451 4.4.3",
    "ARC, trusted sealer": "delivered",
    "ARC, untrusted sealer": "550 5.7.1",
}


@dataclass(frozen=True)
class Sent:
    recipe: Recipe
    marker: str  # in Subject, Message-ID, body and MAIL FROM: finds the message and its log lines
    data: bytes

    @property
    def mail_from(self) -> str:
        return f"{self.marker}@{self.recipe.mail_from_domain}"


def compose(recipe: Recipe, keys: dict[str, Key]) -> Sent:
    marker = f"dmarc-e2e-{uuid.uuid4().hex[:16]}"
    author = f"author@{recipe.from_domain}"
    data = (
        f"From: Author <{author}>\r\n"
        f"To: <{FORWARDING_ALIAS}>\r\n"
        f"Subject: DMARC e2e {marker}\r\n"
        f"Date: {formatdate()}\r\n"
        f"Message-ID: <{marker}@{recipe.from_domain}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        f"Hello, this is {marker}.\r\n"
    ).encode("ascii")
    if recipe.signer:
        data = dkim.sign(data, b"d1", recipe.signer.encode(), keys["origin"].pkcs1, include_headers=SIGNED) + data
    if recipe.sealer:
        data = through_list(data, recipe, keys["list"])
    return Sent(recipe, marker, data)


def through_list(data: bytes, recipe: Recipe, key: Key) -> bytes:
    """*data* as the mailing list *recipe.sealer* re-sends it: "[list]" in the Subject and a
    footer (the origin's signature breaks), its Authentication-Results (all passed on
    arrival) and an ARC set i=1 over that."""
    data = data.replace(b"Subject: ", b"Subject: [list] ", 1) + b"-- \r\nthe list's footer\r\n"
    sealer = recipe.sealer.encode()
    results = (
        f"Authentication-Results: {recipe.sealer}; spf=pass smtp.mailfrom={recipe.from_domain}; "
        f"dkim=pass header.d={recipe.signer}; dmarc=pass header.from={recipe.from_domain}\r\n"
    ).encode()
    data = results + data
    return b"".join(dkim.arc_sign(data, b"arc", sealer, key.pkcs1, sealer, include_headers=SIGNED)) + data


@pytest.fixture(scope="module")
def messages(keys) -> dict[tuple[str, str], Sent]:
    """One message per (action, kind) sent: a message goes through Postfix once."""
    return {
        (action, name): compose(RECIPES[name], keys)
        for action, table in (("header", HEADER_MODE), ("enforce", ENFORCE_MODE))
        for name in table
    }


# -- the stack -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sink, keys, dns_server_session):
    maildmarc.require()
    dns_server = dns_server_session
    dns_server.reset()
    dns_server.set_zone(zone(keys))
    key_dir = tmp_path_factory.mktemp("dmarc-keys")
    key_file = key_dir / f"{FWD_SELECTOR}.private"
    key_file.write_bytes(keys["fwd"].pkcs8)
    key_file.chmod(0o600)

    sections = {
        "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
        "dkim": {
            "domain": SRS_DOMAIN,
            "selector": FWD_SELECTOR,
            "key_file": str(key_file),
            "authserv_id": AUTHSERV_ID,
            "trusted_networks": ["127.0.0.1/32"],  # the client's 127.0.0.2 is outside
            "budget": 5.0,
            # the thread pool instead of the default job processes: both ways of doing a
            # message's work go through a real Postfix (test_postfix_dkim: the processes)
            "processes": 0,
        },
        "dmarc": {"action": "header", "trusted_arc_sealers": [TRUSTED_SEALER]},
    }
    with running(milter_stack(tmp_path_factory, sink, dns_server, "dmarc", sections)) as started:
        yield started


def use_action(stack: Stack, action: str) -> None:
    """Reload srsd with ``dmarc.action = action`` unless it is in force already."""
    sections = stack.srsd.sections
    if sections["dmarc"]["action"] != action:
        stack.srsd.reload(sections | {"dmarc": sections["dmarc"] | {"action": action}})


@pytest.fixture(scope="module")
def mail_dmarc(stack, messages) -> dict[tuple[str, str], maildmarc.MailDMARCResult]:
    """Mail::DMARC's verdict on every message, in one Perl process, over the same zone."""
    keys = sorted(messages)
    cases = [
        maildmarc.Case(
            messages[k].recipe.from_domain,
            messages[k].recipe.spf,
            messages[k].recipe.mail_from_domain,
            message=messages[k].data,
        )
        for k in keys
    ]
    return dict(zip(keys, maildmarc.mail_dmarc(cases, stack.dns.port), strict=True))


# -- sending and reading ---------------------------------------------------------------------------------


def submit(stack: Stack, sent: Sent) -> tuple[int, str]:
    """Send *sent* to the forwarding alias from the outside address: the DATA reply."""
    with smtp_from(stack, OUTSIDE_IP) as client:
        assert client.mail(sent.mail_from)[0] == 250
        assert client.rcpt(FORWARDING_ALIAS)[0] == 250
        try:
            code, text = client.data(sent.data)
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
    return code, text.decode()


def queue_id_of(stack: Stack, sent: Sent) -> str:
    """Postfix's queue id of *sent*, from cleanup's message-id line in the maillog (the
    Message-ID carries the marker; the line comes before any verdict's)."""
    needle = f": message-id=<{sent.marker}@"
    log = stack.postfix.wait_for_maillog(needle)
    match = re.search(rf"\]: ([0-9A-F]+){re.escape(needle)}", log)
    assert match, log
    return match.group(1)


def dmarc_count(stack: Stack, result: str, disposition: str) -> float:
    """``srsd_dmarc_results_total{result, disposition}`` now (the milter's process counts it)."""
    return value(scrape(stack.srsd.ports["metrics"]), "srsd_dmarc_results_total", result=result,
                 disposition=disposition)  # fmt: skip


def srsd_line(stack: Stack, queue_id: str) -> str:
    """srsd's DMARC decision line for *queue_id* (polled: it may come after the reply)."""
    marker = f" {queue_id}: DMARC "
    assert stack.srsd.wait_for_log(marker, timeout=10), stack.srsd.diagnostics()
    return next(line for line in stack.srsd.log_text().splitlines() if marker in line)


@dataclass(frozen=True)
class OurResult:
    result: str
    policy: str | None  # policy.dmarc
    comment: str  # "p=reject dis=none", the reason for an error
    reason: str  # reason="..." (a local-policy override)
    spf: str
    dkim_passed: frozenset[str]  # d= of the signatures that passed


def our_result(data: bytes) -> OurResult:
    """srsd's Authentication-Results of a delivered message, DMARC's part and its inputs."""
    values = [v for v in header_values(data, "Authentication-Results") if v.split(";")[0].strip() == AUTHSERV_ID]
    assert len(values) == 1, values
    parsed = authres.AuthenticationResultsHeader.parse_value(values[0])
    results = {r.method: r for r in parsed.results if r.method in ("spf", "dmarc")}
    dmarc_result = results["dmarc"]
    props = {f"{p.type}.{p.name}": p.value for p in dmarc_result.properties}
    comment = re.search(r"dmarc=\w+ \(((?:[^()\\]|\\.)*)\)", values[0])
    reason = re.search(r'dmarc=\w+ (?:\([^)]*\) )?reason="([^"]*)"', values[0])
    passed = frozenset(
        p.value for r in parsed.results if r.method == "dkim" and r.result == "pass" for p in r.properties
        if f"{p.type}.{p.name}" == "header.d"
    )  # fmt: skip
    return OurResult(
        dmarc_result.result,
        props.get("policy.dmarc"),
        comment.group(1) if comment else "",
        reason.group(1) if reason else "",
        results["spf"].result,
        passed,
    )


def assert_same_verdict(name: str, ours: tuple[str, str | None], theirs: maildmarc.MailDMARCResult) -> None:
    """srsd's (result, policy of a failure) against Mail::DMARC's verdict on the same message."""
    expect = EXPECT[name]
    assert ours == expect.srsd, (name, ours)
    theirs_pair = (theirs.result, theirs.disposition)
    if expect.mail_dmarc is not None:  # a documented difference between RFC 7489 and RFC 9989
        assert theirs_pair == expect.mail_dmarc, (name, theirs)
    elif ours[0] == "fail":
        assert theirs_pair == ours, (name, theirs)
    else:
        assert theirs.result == ours[0], (name, theirs)


def assert_leaves_verifiable(data: bytes, stack: Stack, instance: int) -> None:
    """Our signature (the top one) and the ARC chain, now with *instance* sets, verify."""
    verifier = dkim.DKIM(data)
    assert verifier.verify(idx=0, dnsfunc=dnsfunc(stack.dns)), "srsd's signature does not verify"
    cv, results, reason = dkim.arc_verify(data, dnsfunc=dnsfunc(stack.dns))
    assert (cv, max(r["instance"] for r in results)) == (b"pass", instance), (cv, reason)


def delivered(stack: Stack, sent: Sent) -> bytes:
    received = stack.sink.wait_for(sent.marker, timeout=20)
    assert received.rcpt_tos == (FORWARD_TARGET,), received
    return received.data


# -- 1. action "header": every result in the header, every message delivered ----------------------------------


@pytest.mark.parametrize("name", list(HEADER_MODE))
def test_header_mode_results_match_mail_dmarc(stack, messages, mail_dmarc, name):
    use_action(stack, "header")
    sent = messages["header", name]
    code, text = submit(stack, sent)
    assert code == 250, (code, text)
    data = delivered(stack, sent)
    ours = our_result(data)
    assert ours.spf == sent.recipe.spf, ours  # the SPF input both evaluators got
    theirs = mail_dmarc["header", name]
    # Mail::DKIM saw the same passing signatures in the message as sent as srsd did
    assert {d for d, r in theirs.dkim if r == "pass"} == ours.dkim_passed, (theirs.dkim, ours)
    assert_same_verdict(name, (ours.result, ours.policy if ours.result == "fail" else None), theirs)
    if ours.result in ("pass", "fail"):
        assert ours.comment.endswith("dis=none"), ours  # header only: nothing applied
        assert ours.policy is not None
    if name == "np: non-existent subdomain":
        assert ours.comment == "np=reject dis=none", ours
    if name == "sp: subdomain policy":
        assert ours.comment == "sp=quarantine dis=none", ours
    if name == "DNS timeout":
        assert f"_dmarc.{SLOW_DOMAIN}" in ours.comment, ours
    if name == "ARC, trusted sealer":  # recorded even when nothing would be applied
        assert ours.reason == f"local policy: ARC chain sealed by trusted {TRUSTED_SEALER}", ours
    else:
        assert not ours.reason, ours
    # the ARC set we add carries the DMARC result too (RFC 8617 4.1.1: all our ADMD's results)
    aar = header_values(data, "ARC-Authentication-Results")[0]
    assert f"dmarc={ours.result}" in aar and aar.startswith("i=2;" if sent.recipe.sealer else "i=1;"), aar
    assert_leaves_verifiable(data, stack, 2 if sent.recipe.sealer else 1)


# -- 2. action "enforce": refused, held, deferred, overridden ------------------------------------------------


def enforced(outcome: str) -> list[str]:
    return [name for name, expected in ENFORCE_MODE.items() if expected == outcome]


def send_enforced(stack: Stack, messages, name: str, counted: tuple[str, str]) -> tuple[Sent, int, str, float]:
    """With ``dmarc.action = "enforce"``, send the message of kind *name*: (it, the DATA
    reply's code and text, ``srsd_dmarc_results_total{counted}`` before it)."""
    use_action(stack, "enforce")
    sent = messages["enforce", name]
    before = dmarc_count(stack, *counted)
    code, text = submit(stack, sent)
    return sent, code, text, before


@pytest.mark.parametrize("name", enforced("550 5.7.1"))
def test_enforce_rejects_a_failure_under_p_reject(stack, messages, mail_dmarc, name):
    sent, code, text, before = send_enforced(stack, messages, name, ("fail", "reject"))
    domain = sent.recipe.from_domain
    assert (code, text) == (550, f"5.7.1 Email rejected per DMARC policy for {domain}"), (code, text)
    queue_id = queue_id_of(stack, sent)
    stack.postfix.wait_for_maillog(f"{queue_id}: milter-reject: END-OF-MESSAGE")
    line = srsd_line(stack, queue_id)
    assert line.endswith(": reject 550 5.7.1"), line
    found = re.search(r"DMARC (\w+) for (\S+) \(.*policy (\w+) from ", line)
    assert found and found.group(2) == domain, line
    assert_same_verdict(name, (found.group(1), found.group(3)), mail_dmarc["enforce", name])
    assert dmarc_count(stack, "fail", "reject") == before + 1
    assert not stack.sink.matching(sent.marker)


@pytest.mark.parametrize("name", enforced("held"))
def test_enforce_holds_a_failure_under_p_quarantine(stack, messages, mail_dmarc, name):
    """p=quarantine: accepted, then in Postfix's hold queue; released, it leaves sealed and
    signed, its Authentication-Results saying what was done (dis=quarantine)."""
    sent, code, text, before = send_enforced(stack, messages, name, ("fail", "quarantine"))
    assert code == 250, (code, text)
    queue_id = _QUEUED.search(text).group(1)
    entry = stack.postfix.wait_for_queued(queue_id, "hold")
    assert entry["sender"].endswith(f"@{SRS_DOMAIN}"), entry  # SRS-rewritten as any forwarded mail
    stack.postfix.wait_for_maillog(f"{queue_id}: milter-hold: END-OF-MESSAGE")
    assert srsd_line(stack, queue_id).endswith(": quarantine"), stack.srsd.log_text()
    assert not stack.sink.matching(sent.marker), "held mail was delivered"
    assert dmarc_count(stack, "fail", "quarantine") == before + 1

    stack.postfix.postsuper("-H", queue_id)  # an admin releases it
    stack.postfix.flush()
    data = delivered(stack, sent)
    ours = our_result(data)
    assert (ours.result, ours.policy, ours.comment) == ("fail", "quarantine", "sp=quarantine dis=quarantine"), ours
    assert_same_verdict(name, (ours.result, ours.policy), mail_dmarc["enforce", name])
    assert_leaves_verifiable(data, stack, 1)


@pytest.mark.parametrize("name", enforced("451 4.4.3"))
def test_enforce_defers_when_dns_fails(stack, messages, mail_dmarc, name):
    """No verdict (temperror) is never a refusal: 451, the client retries."""
    sent, code, text, before = send_enforced(stack, messages, name, ("temperror", "defer"))
    assert (code, text) == (451, f"4.4.3 temporary DNS failure evaluating DMARC for {SLOW_DOMAIN}, try again later")
    queue_id = queue_id_of(stack, sent)
    stack.postfix.wait_for_maillog(f"{queue_id}: milter-reject: END-OF-MESSAGE")
    line = srsd_line(stack, queue_id)
    assert f"DMARC temperror for {SLOW_DOMAIN} (DNS TXT _dmarc.{SLOW_DOMAIN}" in line, line
    assert line.endswith(": defer 451 4.4.3"), line
    assert_same_verdict(name, ("temperror", None), mail_dmarc["enforce", name])
    assert queue_id not in {e["queue_id"] for e in stack.postfix.queue_entries()}  # nothing queued
    assert dmarc_count(stack, "temperror", "defer") == before + 1


@pytest.mark.parametrize("name", enforced("delivered"))
def test_enforce_delivers_a_pass_and_a_trusted_arc_override(stack, messages, mail_dmarc, name):
    counted = ("fail", "arc_override") if RECIPES[name].sealer else ("pass", "accept")
    sent, code, text, before = send_enforced(stack, messages, name, counted)
    assert code == 250, (code, text)
    data = delivered(stack, sent)
    assert dmarc_count(stack, *counted) == before + 1
    ours = our_result(data)
    assert_same_verdict(name, (ours.result, ours.policy if ours.result == "fail" else None),
                        mail_dmarc["enforce", name])  # fmt: skip
    if sent.recipe.sealer:  # the failure stays a failure; the override is recorded as local policy
        assert ours.comment == "p=reject dis=none", ours
        assert ours.reason == f"local policy: ARC chain sealed by trusted {TRUSTED_SEALER}", ours
        line = srsd_line(stack, _QUEUED.search(text).group(1))
        assert line.endswith(f": accept (local policy: ARC chain sealed by trusted {TRUSTED_SEALER})"), line
    assert_leaves_verifiable(data, stack, 2 if sent.recipe.sealer else 1)
