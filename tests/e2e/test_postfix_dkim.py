"""DKIM, ARC and Authentication-Results through a real Postfix and the real `srsd serve`.

The DKIM issue's acceptance tests. Everything runs on loopback:

* a private Postfix (tests/e2e/postfix_instance.py) with the shipped snippets
  ``main.cf.tcp_table`` (ports changed) and ``main.cf.milter`` (as shipped: the milter is
  ``unix:srsd/milter.sock``, relative to the queue directory, as the snippet recommends),
  a forwarding alias fwd-user@fwd.example -> someone@remote.example, relayhost = the
  SMTP sink;
* ``srsd serve`` as a subprocess with the tcp_table endpoints and ``[listen] milter`` on
  that unix socket, its keys made by ``srsd dkim-keygen``;
* the loopback DNS server (tests/dnsserver.py) holding orig.example's SPF, DKIM key and
  DMARC record, and every record ``srsd dns-records`` prints for fwd.example;
* two independent verifiers of what reaches the sink: dkimpy (every signature by
  index, ``dkim.arc_verify``) and Perl's Mail::DKIM (tests/maildkim.py), both looking
  keys up in the loopback DNS server.

Who counts as "outside" (docs/dkim.md, "What happens to a message"): srsd treats a
client in ``dkim.trusted_networks`` as local (sign only). The default is all of
loopback, so every test client would be local. Here ``trusted_networks =
["127.0.0.1/32"]`` and the test's SMTP client binds 127.0.0.2 as its source address:
mail from 127.0.0.2 to the alias is *incoming from outside* (verified, sealed, signed),
while local submission and 127.0.0.1 stay local, as on a real host.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import smtplib
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import authres
import dkim
import dns.exception
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization

from srsd.protocols.milter_codec import MAX_HEADER_PACKET, MAX_PACKET
from tests import maildkim
from tests.dnsserver import zone_records
from tests.metrics_scrape import scrape, value
from tests.protocols import milter_wire as w
from tests.srsd_daemon import SrsdDaemon, free_port, run_cli, srs0_pattern, tcp_endpoint

from .conftest import FORWARD_TARGET, FORWARDING_ALIAS, LOCAL_DOMAINS, SRS_DOMAIN, e2e_srsd
from .postfix_instance import SNIPPETS_DIR, PostfixInstance, render_snippet
from .smtp_sink import ReceivedMessage, SmtpSink, header_fields, header_values

AUTHSERV_ID = "mx.fwd.example"
FWD_SELECTOR = "s1"
ORIG_DOMAIN = "orig.example"
ORIG_SELECTOR = "o2026"
SENDER = f"alice@{ORIG_DOMAIN}"
OUTSIDE_IP = "127.0.0.2"  # the test client: not in dkim.trusted_networks
TRUSTED_IP = "127.0.0.1"  # in it (and Postfix's own address)
# A domain whose SPF authorizes 127.0.0.1 but not the client's 127.0.0.2.
ELSEWHERE_DOMAIN = "elsewhere.example"

ALICE_SRS0 = srs0_pattern(SENDER, SRS_DOMAIN)
SIGNED_BY_ORIG = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
# Top of a forwarded message as it leaves (docs/dkim.md, "The header edits").
FORWARDED_TOP = [
    "DKIM-Signature",
    "ARC-Seal",
    "ARC-Message-Signature",
    "ARC-Authentication-Results",
    "Authentication-Results",
    "Received",
]
MILTER_SNIPPET = "main.cf.milter"
MILTER_SOCKET = "unix:srsd/milter.sock"  # relative to the queue directory
_QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


# -- keys and DNS ------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    fwd_key_file: Path
    orig_private_pem: bytes  # PKCS#1, what dkimpy's sign() takes
    orig_record: dict[str, list[str]]


def dkim_keygen(domain: str, selector: str, out: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("dkim-keygen", "--domain", domain, "--selector", selector, "--out", str(out), timeout=60, check=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    directory = tmp_path_factory.mktemp("dkim-keys")
    (directory / "fwd").mkdir()  # dkim-keygen does not create --out
    dkim_keygen(SRS_DOMAIN, FWD_SELECTOR, directory / "fwd")
    orig_dir = directory / "orig"
    orig_dir.mkdir()
    done = dkim_keygen(ORIG_DOMAIN, ORIG_SELECTOR, orig_dir)
    orig_record = zone_records(done.stdout)
    assert list(orig_record) == [f"{ORIG_SELECTOR}._domainkey.{ORIG_DOMAIN}"], done.stdout
    pkcs8 = (orig_dir / f"{ORIG_SELECTOR}.private").read_bytes()
    private = serialization.load_pem_private_key(pkcs8, password=None)
    pkcs1 = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return Keys(directory / "fwd" / f"{FWD_SELECTOR}.private", pkcs1, orig_record)


def base_zone(keys: Keys) -> dict:
    zone = {name: [{"TXT": strings}] for name, strings in keys.orig_record.items()}
    zone[ORIG_DOMAIN] = [{"TXT": f"v=spf1 ip4:{OUTSIDE_IP} -all"}]
    zone[f"_dmarc.{ORIG_DOMAIN}"] = [{"TXT": "v=DMARC1; p=reject"}]
    zone[ELSEWHERE_DOMAIN] = [{"TXT": f"v=spf1 ip4:{TRUSTED_IP} -all"}]
    return zone


# -- srsd ------------------------------------------------------------------------------------


def srsd_sections(dns_address: str, key_file: Path) -> dict[str, dict]:
    return {
        "dns": {"nameservers": [dns_address], "timeout": 1.0},
        # every address forwarded mail leaves from: dns-records prints the SPF of the SRS domain
        "spf": {"egress_ips": [TRUSTED_IP]},
        "dkim": {
            "domain": SRS_DOMAIN,
            "selector": FWD_SELECTOR,
            "key_file": str(key_file),
            "arc": True,
            "authserv_id": AUTHSERV_ID,
            # Loopback is trusted by default, so every test client would be "local" (signed
            # only). Only 127.0.0.1 is (local submission, Postfix itself); the test client
            # connects from 127.0.0.2 and counts as incoming from outside: verified,
            # ARC-sealed and signed.
            "trusted_networks": [f"{TRUSTED_IP}/32"],
            "budget": 5.0,
            # the default, pinned: the test below counts the two job processes
            # (test_postfix_dmarc runs the thread pool, processes = 0)
            "processes": 2,
        },
    }


# -- the stack --------------------------------------------------------------------------------


class Stack:
    def __init__(self, postfix: PostfixInstance, srsd: SrsdDaemon, sink: SmtpSink, dns_server) -> None:
        self.postfix = postfix
        self.srsd = srsd
        self.sink = sink
        self.dns = dns_server

    @property
    def socket_path(self) -> Path:
        return Path(self.srsd.unix_paths["milter"])

    def diagnostics(self) -> str:
        zone = "\n".join(f"  {q}" for q in self.dns.queries[-40:])
        return "\n".join(
            (self.srsd.diagnostics(), self.postfix.diagnostics(), self.sink.diagnostics(), f"--- DNS ---\n{zone}")
        )


def milter_postfix(sink: SmtpSink, ports: dict[str, int], label: str) -> tuple[PostfixInstance, Path]:
    """A private Postfix (not started) with ``main.cf.tcp_table`` on *ports* and
    ``main.cf.milter`` as shipped, relaying to *sink*, and the milter socket directory
    the snippet describes: (instance, directory)."""
    milter_snippet = render_snippet(
        MILTER_SNIPPET, {}, required=("smtpd_milters", "non_smtpd_milters", "milter_default_action")
    )
    assert milter_snippet == (SNIPPETS_DIR / MILTER_SNIPPET).read_text()  # as shipped
    active = [line for line in milter_snippet.splitlines() if line.strip() and not line.startswith("#")]
    for setting in (
        f"smtpd_milters = {MILTER_SOCKET}",
        f"non_smtpd_milters = {MILTER_SOCKET}",
        "milter_default_action = tempfail",
    ):
        assert setting in active, f"{MILTER_SNIPPET} does not set {setting!r}"
    postfix = PostfixInstance(
        relay_port=sink.port,
        local_domains=LOCAL_DOMAINS,
        virtual_aliases={FORWARDING_ALIAS: FORWARD_TARGET},
        extra_main_cf=render_snippet("main.cf.tcp_table", ports) + "\n" + milter_snippet,
        label=label,
    )
    # The snippet's layout: <queue>/srsd owned by srsd's user (root here) and group
    # postfix, mode 750, socket mode 660. The set-group-ID bit gives the socket group
    # postfix, so smtpd and cleanup (user postfix) may connect to it.
    socket_dir = postfix.queue_dir / "srsd"
    socket_dir.mkdir()
    shutil.chown(socket_dir, user="root", group="postfix")
    socket_dir.chmod(0o2750)
    return postfix, socket_dir


def publish_dns_records(srsd: SrsdDaemon, dns_server) -> dict[str, list[str]]:
    """Publish what ``srsd dns-records`` prints for *srsd*'s config; returns {name: strings}."""
    printed = srsd.cli("dns-records")
    assert printed.returncode == 0, printed
    records = zone_records(printed.stdout)
    for name, strings in records.items():
        dns_server.add(name, {"TXT": strings})
    return records


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sink, keys, dns_server_session):
    maildkim.require()
    dns_server = dns_server_session
    dns_server.reset()
    dns_server.set_zone(base_zone(keys))

    stack = milter_stack(
        tmp_path_factory, sink, dns_server, "dkim", srsd_sections(dns_server.address, keys.fwd_key_file)
    )
    srsd = stack.srsd

    # Publish what `srsd dns-records` says to publish.
    records = publish_dns_records(srsd, dns_server)
    assert sorted(records) == [f"_dmarc.{SRS_DOMAIN}", SRS_DOMAIN, f"{FWD_SELECTOR}._domainkey.{SRS_DOMAIN}"], records
    assert records[SRS_DOMAIN] == [f"v=spf1 ip4:{TRUSTED_IP} -all"], records
    assert len(records[f"{FWD_SELECTOR}._domainkey.{SRS_DOMAIN}"]) == 2, records  # 2048 bits: > 255 bytes

    with running(stack) as started:
        yield started


def milter_stack(tmp_path_factory, sink: SmtpSink, dns_server, label: str, sections: dict[str, dict]) -> Stack:
    """A Stack, not started: Postfix from :func:`milter_postfix`, and srsd (config written)
    serving the tcp_table maps, the milter on the snippet's socket and metrics, with the
    config *sections* ([dns], [dkim], ...)."""
    # Fixed ports (Postfix's main.cf names them): a restart comes up on the same ones.
    ports = {name: free_port() for name in ("tcp_forward", "tcp_reverse")}
    postfix, socket_dir = milter_postfix(sink, ports, label)
    srsd = e2e_srsd(
        tmp_path_factory,
        f"srsd-{label}",
        endpoints=(),
        listen={name: tcp_endpoint(port) for name, port in ports.items()}
        | {"milter": f"unix:{socket_dir / 'milter.sock'}:mode=660", "metrics": tcp_endpoint(free_port())},
        sections=sections,
    )
    srsd.prepare()
    return Stack(postfix, srsd, sink, dns_server)


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """srsd and Postfix started for the block; stopped after it, and the DNS zone emptied."""
    try:
        stack.srsd.start()
        stack.postfix.start()
        yield stack
    finally:
        stack.postfix.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))
        returncode = stack.srsd.stop()
        stack.dns.reset()
    # None: a test killed it and failed before restarting it
    assert returncode in (0, None), f"srsd exited {returncode} on SIGTERM\n{stack.srsd.diagnostics()}"


# -- messages ---------------------------------------------------------------------------------


def new_marker() -> str:
    return f"dkim-e2e-{uuid.uuid4().hex}"


def compose(marker: str, *, sender: str = SENDER, extra_headers: str = "") -> bytes:
    """A plain message to the forwarding alias; *extra_headers* (CRLF-terminated lines)
    go right after From."""
    return (
        f"From: Alice <{sender}>\r\n"
        f"{extra_headers}"
        f"To: <{FORWARDING_ALIAS}>\r\n"
        f"Subject: DKIM e2e\r\n\t{marker}\r\n"  # folded
        f"Date: {formatdate()}\r\n"
        f"Message-ID: <{marker}@{sender.rpartition('@')[2]}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        f"Hello,\r\n\r\nthis is {marker}.\r\n"
        ".a line with a leading dot\r\n"
        "  indented, trailing spaces   \r\n"
        "\r\n-- \r\nAlice\r\n"
    ).encode("ascii")


def orig_signed(message: bytes, keys: Keys) -> bytes:
    """*message* with a DKIM-Signature d=orig.example on top (simple/simple: any change
    on the way, even to folding or whitespace, breaks it)."""
    signature = dkim.sign(
        message,
        ORIG_SELECTOR.encode(),
        ORIG_DOMAIN.encode(),
        keys.orig_private_pem,
        canonicalize=(b"simple", b"simple"),
        include_headers=SIGNED_BY_ORIG,
    )
    return signature + message


def smtp_from(stack: Stack, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP(
        "127.0.0.1", stack.postfix.smtpd_port, local_hostname="client.test", timeout=30, source_address=(source, 0)
    )
    client.ehlo()
    return client


def send(stack: Stack, message: bytes, *, sender: str = SENDER, source: str = OUTSIDE_IP) -> str:
    """One message to the forwarding alias; every reply must be 2xx/3xx. Returns the queue ID."""
    with smtp_from(stack, source) as client:
        assert client.mail(sender)[0] == 250
        assert client.rcpt(FORWARDING_ALIAS)[0] == 250
        code, text = client.data(message)
        assert code == 250, (code, text)
    match = _QUEUED.search(text.decode())
    assert match, text
    return match.group(1)


def delivered(stack: Stack, marker: str) -> ReceivedMessage:
    try:
        received = stack.sink.wait_for(marker, timeout=10)
    except AssertionError:
        stack.postfix.flush()
        received = stack.sink.wait_for(marker, timeout=10)
    assert received.rcpt_tos == (FORWARD_TARGET,), received
    return received


def tags(value: str) -> dict[str, str]:
    """Tag=value pairs of a DKIM-Signature / ARC-* field (whitespace removed)."""
    out = {}
    for part in value.split(";"):
        name, eq, val = part.partition("=")
        if eq:
            out[name.strip()] = re.sub(r"\s+", "", val)
    return out


def auth_results(value: str) -> authres.AuthenticationResultsHeader:
    """Parse an Authentication-Results value with the authres library (RFC 8601 syntax)."""
    return authres.AuthenticationResultsHeader.parse_value(value)


def result_of(header: authres.AuthenticationResultsHeader, method: str) -> list[tuple[str, dict[str, str]]]:
    """[(result, {"header.d": ..., "smtp.mailfrom": ...}), ...] of *method*, in order."""
    return [
        (r.result, {f"{p.type}.{p.name}": p.value for p in r.properties}) for r in header.results if r.method == method
    ]


def summary(header: authres.AuthenticationResultsHeader) -> list[tuple[str, str, dict[str, str]]]:
    return [(r.method, r.result, {f"{p.type}.{p.name}": p.value for p in r.properties}) for r in header.results]


def our_value(data: bytes) -> str:
    """The value of the one Authentication-Results field carrying our authserv-id."""
    ours = [
        v for v in header_values(data, "Authentication-Results") if v.split(";", 1)[0].strip().lower() == AUTHSERV_ID
    ]
    assert len(ours) == 1, header_fields(data)
    return ours[0]


def our_results(data: bytes) -> authres.AuthenticationResultsHeader:
    return auth_results(our_value(data))


# -- verifiers --------------------------------------------------------------------------------


def dnsfunc(dns_server):
    """dkimpy's dnsfunc, asking the loopback DNS server (dnspython, not srsd's resolver)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns_server.port
    resolver.use_edns(0, 0, 1232)

    def lookup(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(name.rstrip("."), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    return lookup


def dkimpy_signatures(data: bytes, dns_server) -> list[tuple[str, bool]]:
    """(d=, verifies) of every DKIM-Signature, top first, each verified by index."""
    domains = [tags(v)["d"] for v in header_values(data, "DKIM-Signature")]
    verifier = dkim.DKIM(data)
    results = []
    for i, domain in enumerate(domains):
        try:
            ok = bool(verifier.verify(idx=i, dnsfunc=dnsfunc(dns_server)))
        except dkim.ValidationError:  # body hash mismatch
            ok = False
        results.append((domain, ok))
    return results


def assert_forwarded_verifies(data: bytes, dns_server, *, orig: str | None = "pass") -> None:
    """Our signature (top) and the ARC chain verify in dkimpy and Mail::DKIM; the original
    signature has the result *orig* (None: the message has none)."""
    expected = [(SRS_DOMAIN, True)] + ([(ORIG_DOMAIN, orig == "pass")] if orig else [])
    assert dkimpy_signatures(data, dns_server) == expected
    cv, _results, reason = dkim.arc_verify(data, dnsfunc=dnsfunc(dns_server))
    assert cv == b"pass", (cv, reason)

    perl = maildkim.mail_dkim(data, dns_server.port, "dkim")
    assert [(d, r) for d, r, _ in perl.signatures] == [(d, "pass" if ok else "fail") for d, ok in expected], perl
    assert perl.result == "pass", perl  # at least one good signature
    perl_arc = maildkim.mail_dkim(data, dns_server.port, "arc")
    assert perl_arc.result == "pass", perl_arc


def job_processes(pid: int) -> list[int]:
    """The pids of *pid*'s children running ``srsd.mailauth.job_processes``."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"srsd.mailauth.job_processes" in argv:
            found.append(int(child))
    return found


# -- 1. a signed message through the forwarding alias ---------------------------------------


def test_forwarded_message_keeps_its_signature_and_gets_ours_and_an_arc_set(stack, keys):
    marker = new_marker()
    queue_id = send(stack, orig_signed(compose(marker), keys))
    received = delivered(stack, marker)
    data = received.data

    # (d) the envelope sender is an SRS0 address at fwd.example (tcp_table maps)
    assert ALICE_SRS0.fullmatch(received.mail_from), received.mail_from
    # what srsd added, in the documented order, above Postfix's Received and the original
    names = [name for name, _ in header_fields(data)]
    assert names[: len(FORWARDED_TOP) + 1] == [*FORWARDED_TOP, "DKIM-Signature"], names
    ours = tags(header_values(data, "DKIM-Signature")[0])
    assert (ours["d"], ours["s"], ours["a"], ours["c"]) == (SRS_DOMAIN, FWD_SELECTOR, "rsa-sha256", "relaxed/relaxed")
    seal = tags(header_values(data, "ARC-Seal")[0])
    assert (seal["i"], seal["cv"], seal["d"], seal["s"]) == ("1", "none", SRS_DOMAIN, FWD_SELECTOR), seal
    assert tags(header_values(data, "ARC-Message-Signature")[0])["i"] == "1"
    assert len(header_values(data, "ARC-Seal")) == 1 and len(header_values(data, "ARC-Authentication-Results")) == 1

    # (a) original signature, (b) ours, (c) the ARC chain: dkimpy and Mail::DKIM
    assert_forwarded_verifies(data, stack.dns, orig="pass")

    # the results the ARC set vouches for: the original signature passed on arrival
    aar = header_values(data, "ARC-Authentication-Results")[0]
    instance, _, rest = aar.partition(";")
    assert instance.strip() == "i=1", aar
    sealed = auth_results(rest)
    assert sealed.authserv_id == AUTHSERV_ID, aar
    assert [(r, p["header.d"]) for r, p in result_of(sealed, "dkim")] == [("pass", ORIG_DOMAIN)], aar
    assert result_of(sealed, "spf") == [("pass", {"smtp.mailfrom": ORIG_DOMAIN})], aar
    # the same results in our Authentication-Results
    assert summary(our_results(data)) == summary(sealed)

    # DMARC (p=reject) at the next hop: SPF is not aligned any more (envelope at
    # fwd.example), the preserved original signature is, so the message still passes.
    from_domain = header_values(data, "From")[0].rpartition("@")[2].rstrip(">")
    assert dnsfunc(stack.dns)(f"_dmarc.{from_domain}") == b"v=DMARC1; p=reject"
    assert received.mail_from.endswith(f"@{SRS_DOMAIN}") and from_domain == ORIG_DOMAIN
    assert (from_domain, True) in dkimpy_signatures(data, stack.dns)

    # one line for the message, one for its DMARC decision (orig.example: aligned SPF pass)
    logged = [line for line in stack.srsd.log_text().splitlines() if f" {queue_id}: " in line]
    assert len(logged) == 2, logged
    assert "forwarded (recipient fwd-user@fwd.example)" in logged[1], logged
    # ...and the work was done by srsd's two job processes ([dkim] processes = 2)
    assert len(job_processes(stack.srsd.pid)) == 2
    assert "spf=pass dkim=pass arc=none dmarc=pass; sealed i=1; signed d=fwd.example" in logged[1], logged
    assert f"DMARC pass for {ORIG_DOMAIN} (spf {ORIG_DOMAIN} aligned" in logged[0] and logged[0].endswith(": accept")


def test_metrics_and_decision_lines_follow_postfix_traffic(stack, keys):
    """Through Postfix: every message the milter handled is counted once, with its two
    signatures; every lookup Postfix made is answered, counted and timed; the sender's
    rewrite is logged once, however many messages it sends."""
    port = stack.srsd.ports["metrics"]
    before = scrape(port)
    sent = []
    for _ in range(3):
        marker = new_marker()
        sent.append((send(stack, orig_signed(compose(marker), keys)), marker))
    received = [delivered(stack, marker) for _, marker in sent]
    # The lookup processes report their counts to the parent once a second: poll.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(port)
        found = value(after, "srsd_lookups_total", map="forward", result="found")
        if found - value(before, "srsd_lookups_total", map="forward", result="found") >= 3:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("srsd_messages_total", **{"class": "forwarded", "outcome": "handled"}) == 3
    assert delta("srsd_request_duration_seconds_count", endpoint="milter") == 3
    assert delta("srsd_signatures_total", type="dkim", domain=SRS_DOMAIN, algorithm="rsa-sha256") == 3
    assert delta("srsd_signatures_total", type="arc", domain=SRS_DOMAIN, algorithm="rsa-sha256") == 3
    assert delta("srsd_dkim_results_total", result="pass") == 3
    assert delta("srsd_arc_results_total", result="none") == 3
    assert delta("srsd_spf_results_total", where="milter", identity="mailfrom", result="pass") == 3
    # cleanup asks the forward map for the sender, then again for its result
    found = delta("srsd_lookups_total", map="forward", result="found")
    assert found >= 3 and delta("srsd_forward_unchanged_total", reason="already_rewritten") >= 3
    forward = sum(delta("srsd_lookups_total", map="forward", result=r) for r in ("found", "notfound", "temp"))
    assert delta("srsd_request_duration_seconds_count", endpoint="tcp_forward") == forward
    assert delta("srsd_request_errors_total", endpoint="milter", kind="internal_error") == 0

    log = stack.srsd.log_text()
    for queue_id, _ in sent:
        assert f" {queue_id}: forwarded (recipient {FORWARDING_ALIAS})" in log, queue_id  # Postfix's queue id
    assert log.count(f"forward {SENDER} -> {received[0].mail_from}: rewritten") == 1, "once per sender and day"


# -- 2. Authentication-Results of incoming mail -----------------------------------------------


def test_authentication_results_pass_fail_none(stack, keys):
    markers = {kind: new_marker() for kind in ("pass", "fail", "none")}
    signed = orig_signed(compose(markers["pass"]), keys)
    good = signed
    tampered = orig_signed(compose(markers["fail"]), keys).replace(b"Alice\r\n", b"Mallory\r\n")
    assert tampered.count(b"Mallory") == 1
    unsigned = compose(markers["none"], sender=f"bob@{ELSEWHERE_DOMAIN}")
    send(stack, good)
    send(stack, tampered)
    send(stack, unsigned, sender=f"bob@{ELSEWHERE_DOMAIN}")

    got = {kind: delivered(stack, marker).data for kind, marker in markers.items()}

    sig_b = {kind: tags(header_values(got[kind], "DKIM-Signature")[1])["b"] for kind in ("pass", "fail")}
    for kind in ("pass", "fail"):
        results = our_results(got[kind])
        assert results.authserv_id == AUTHSERV_ID
        assert result_of(results, "spf") == [("pass", {"smtp.mailfrom": ORIG_DOMAIN})], results
        [(result, props)] = result_of(results, "dkim")
        assert result == kind, results
        assert props["header.d"] == ORIG_DOMAIN and props["header.s"] == ORIG_SELECTOR, results
        assert props["header.a"] == "rsa-sha256" and sig_b[kind].startswith(props["header.b"]), results
        assert len(props["header.b"]) >= 8, results
        assert result_of(results, "arc") == [("none", {})], results
    assert "dkim=fail (body hash mismatch) header.d=orig.example" in our_value(got["fail"]), our_value(got["fail"])

    none = our_results(got["none"])
    assert result_of(none, "dkim") == [("none", {})], none
    # SPF of bob@elsewhere.example for the client's address 127.0.0.2 (it allows 127.0.0.1 only)
    assert result_of(none, "spf") == [("fail", {"smtp.mailfrom": ELSEWHERE_DOMAIN})], none
    assert result_of(none, "arc") == [("none", {})], none

    # Whatever the original signature did, ours and the ARC set verify at the next hop.
    assert_forwarded_verifies(got["fail"], stack.dns, orig="fail")
    assert_forwarded_verifies(got["none"], stack.dns, orig=None)


def test_trusted_client_is_signed_not_verified(stack, keys):
    """127.0.0.1 is in trusted_networks: its mail is local (signed), not incoming."""
    marker = new_marker()
    send(stack, compose(marker), source=TRUSTED_IP)
    data = delivered(stack, marker).data
    names = [name for name, _ in header_fields(data)]
    assert names[:2] == ["DKIM-Signature", "Received"], names
    assert not header_values(data, "Authentication-Results") and not header_values(data, "ARC-Seal"), names
    assert dkimpy_signatures(data, stack.dns) == [(SRS_DOMAIN, True)]


# -- 3. forged Authentication-Results -----------------------------------------------------------


def test_forged_authentication_results_are_removed(stack, keys):
    marker = new_marker()
    forged = (
        f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d={ORIG_DOMAIN}\r\n"
        "Authentication-Results: other.example; dkim=pass header.d=orig.example\r\n"
        f"Authentication-Results:\r\n  {AUTHSERV_ID.upper()} (folded, upper case);\r\n\tspf=pass smtp.mailfrom=x\r\n"
    )
    send(stack, compose(marker, sender=f"bob@{ELSEWHERE_DOMAIN}", extra_headers=forged),
         sender=f"bob@{ELSEWHERE_DOMAIN}")  # fmt: skip
    data = delivered(stack, marker).data

    found = header_values(data, "Authentication-Results")
    assert len(found) == 2, header_fields(data)
    assert found[1] == "other.example; dkim=pass header.d=orig.example"  # not ours: kept
    ours = our_results(data)  # exactly one with our authserv-id: srsd's own
    assert result_of(ours, "dkim") == [("none", {})], ours
    assert result_of(ours, "spf") == [("fail", {"smtp.mailfrom": ELSEWHERE_DOMAIN})], ours
    names = [name for name, _ in header_fields(data)]
    assert names[: len(FORWARDED_TOP)] == FORWARDED_TOP, names
    # Our signature and seal were made over the message without the forged fields.
    assert_forwarded_verifies(data, stack.dns, orig=None)
    assert "removed 2 forged Authentication-Results" in stack.srsd.log_text()


# -- 4. robustness on the real daemon socket ------------------------------------------------


def milter_session(path: Path, data: bytes, *, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send *data* on a new connection to srsd's milter socket; read until srsd closes or
    *timeout*. Returns (what srsd wrote, whether it closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        out = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return out, True
                out += chunk
        except TimeoutError:
            return out, False


def milter_until(path: Path, data: bytes, replies: int) -> list[tuple]:
    """Send *data*, read until *replies* complete replies came, then go away without a
    QUIT. Returns the replies, described."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        out = b""
        while True:
            try:
                got = w.describe(out)
            except AssertionError:  # a partial reply so far
                got = []
            if len(got) >= replies:
                break
            chunk = sock.recv(65536)
            assert chunk, f"srsd closed the connection after {w.describe(out)}"
            out += chunk
    return got


START = w.optneg() + w.macros(b"C", w.CONNECT_MACROS) + w.connect(address="192.0.2.1")
RAW_HEADERS = [
    ("From", " Alice <alice@orig.example>"),
    ("To", " <fwd-user@fwd.example>"),
    ("Subject", " raw milter session"),
    ("Message-ID", " <raw@orig.example>"),
]


def raw_message(queue_id: str, body: list[bytes]) -> bytes:
    return w.message_events(queue_id, SENDER, [FORWARDING_ALIAS], RAW_HEADERS, body, helo_name="mail.example.net")


# (name, bytes sent): each breaks the protocol; srsd must answer TEMPFAIL and close
BROKEN_STREAMS = [
    ("length 0 (no command byte)", START + b"\0\0\0\0" + b"C"),
    ("garbage instead of packets", b"GET / HTTP/1.1\r\nHost: fwd.example\r\n\r\n"),
    ("garbage after negotiation", START + b"\xde\xad\xbe\xef" * 64),
    # only the head of an over-long packet: refused without waiting for the rest
    ("header field packet over the limit", START + struct.pack("!I", MAX_HEADER_PACKET + 2) + b"L" + b"x" * 100),
    ("MAIL packet over the limit", START + struct.pack("!I", MAX_PACKET + 2) + b"M" + b"x" * 100),
    ("unknown command", START + w.pkt(b"Z", b"payload")),
    ("malformed CONNECT", w.optneg() + w.pkt(b"C", b"host\0Z")),
    ("RCPT before MAIL", START + w.rcpt("<x@fwd.example>")),
    ("command before negotiation", w.connect()),
]


def test_malformed_milter_streams_and_disconnects_leave_the_daemon_serving(stack, keys):
    path = stack.socket_path
    errors_before = stack.srsd.log_text().count("milter protocol error")

    for name, stream in BROKEN_STREAMS:
        out, closed = milter_session(path, stream)
        replies = w.describe(out)
        assert closed, f"{name}: srsd kept the connection open after {replies}"
        assert replies and replies[-1] == ("t",), f"{name}: {replies}"
        assert all(r[0] == "O" for r in replies[:-1]), f"{name}: {replies}"

    # A truncated packet, then the client goes away.
    got = milter_until(path, START + w.macros(b"H", {}) + w.helo()[:7], 1)
    assert got[0][0] == "O", got
    # Abrupt disconnect in the middle of a body chunk.
    chunk = b"x" * 5000
    events = raw_message("RAW1", [chunk])
    got = milter_until(path, START + events[: events.index(w.body(chunk)) + 2000], 1)
    assert got[0][0] == "O", got
    # Disconnect right after end-of-message, while srsd works on the answer (a few
    # times: whether srsd is still working when it notices is a race).
    for i in range(10):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(START + raw_message(f"GONE{i}", [b"body\r\n"]))
        time.sleep(0.02)

    # A well-formed session on the same socket is answered as Postfix expects: the
    # negotiation, then at end-of-message the five fields at index 0 and CONTINUE.
    got = milter_until(path, START + raw_message("RAW3", [b"Hello\r\n"]), 7)
    assert got[0][0] == "O" and got[-1] == ("c",), got
    inserted = [(r[0], r[1], r[2]) for r in got[1:-1]]
    assert inserted == [("i", 0, name) for name in reversed(FORWARDED_TOP[:-1])], got
    results = auth_results(got[1][3])
    assert result_of(results, "spf") == [("fail", {"smtp.mailfrom": ORIG_DOMAIN})], got[1]  # 192.0.2.1
    assert result_of(results, "dkim") == [("none", {})], got[1]

    # Still alive, no internal error logged, and real mail through Postfix is still signed.
    stack.srsd.assert_running()
    log = stack.srsd.log_text()
    assert log.count("milter protocol error") - errors_before >= len(BROKEN_STREAMS), log
    assert "Traceback" not in log and "Unhandled" not in log and " critical: " not in log, log
    marker = new_marker()
    send(stack, orig_signed(compose(marker), keys))
    assert_forwarded_verifies(delivered(stack, marker).data, stack.dns, orig="pass")


def test_srsd_down_means_tempfail_not_unsigned_mail(stack, keys):
    """milter_default_action = tempfail (the snippet): with srsd gone Postfix answers 4xx
    and accepts nothing, so nothing leaves unsigned; srsd restarts on the same socket.

    srsd also serves the tcp_table maps here, which fail as well while it is down; those
    retry for ~9 s before a 4xx of their own (postfix-snippets/README.md). The milter's
    own 4xx (451 4.7.1 from milter_default_action) is isolated by killing srsd once the
    envelope's map lookups are done: in the middle of DATA.
    """
    during = new_marker()
    message = smtplib.quotedata(orig_signed(compose(during), keys).decode()).encode()
    head, _, rest = message.partition(b"\r\n\r\n")
    with smtp_from(stack, OUTSIDE_IP) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(FORWARDING_ALIAS)[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(head + b"\r\n\r\n")  # the header: cleanup has done the map lookups
        time.sleep(0.5)
        stack.srsd.kill()
        started = time.monotonic()
        client.send(rest + b".\r\n")
        code, text = client.getreply()
    assert (code, text.decode()[:5]) == (451, "4.7.1"), (code, text)
    assert time.monotonic() - started < 5, "the 4xx came from the tcp_table retries, not the milter"
    stack.postfix.wait_for_maillog("milter-reject: END-OF-MESSAGE")

    # Down when a session starts: Postfix cannot connect to the milter and refuses MAIL.
    with smtp_from(stack, OUTSIDE_IP) as client:
        code, text = client.mail(SENDER)
    assert (code, text.decode()[:5]) == (451, "4.7.1"), (code, text)
    stack.postfix.wait_for_maillog("connect to Milter service unix:srsd/milter.sock")

    # Back up on the same socket (the killed process left its socket and lock file behind).
    stack.srsd.start()
    after = new_marker()
    send(stack, orig_signed(compose(after), keys))
    assert_forwarded_verifies(delivered(stack, after).data, stack.dns, orig="pass")
    assert not stack.sink.matching(during), "mail passed while srsd was down"
    stack.postfix.wait_for_empty_queue()
