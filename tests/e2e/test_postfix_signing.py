"""The signing table and key rotation through a real Postfix and the real ``srsd serve``.

Issue 12's acceptance tests for items 1, 2 and 4. The stack is test_postfix_dkim's
(a private Postfix with the shipped ``main.cf.tcp_table`` and ``main.cf.milter``
snippets, srsd's milter on the snippet's unix socket, the loopback DNS server holding
every record ``srsd dns-records`` prints, the SMTP sink as the next hop); here srsd has
a signing table instead of one key, every key made by ``srsd dkim-keygen`` in the
``<key_directory>/<domain>/<selector>.private`` layout:

* fwd.example (the forwarder): f1, RSA;
* local.example: l1, RSA (rotated to l2 in the rotation test); its subdomains too
  (``sign_subdomains``);
* second.example: s1 RSA and e1 ed25519, both signing every message (RFC 8463).

Mail from 127.0.0.1 (``dkim.trusted_networks``) is local: signed with the keys of its
From domain. Verifiers: dkimpy (every signature, RSA and ed25519) and Mail::DKIM
(RSA; Debian's cannot verify ed25519), both asking the loopback DNS server.
"""

from __future__ import annotations

import copy
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
import pytest

from tests import maildkim
from tests.srsd_daemon import RELOAD_REFUSED_MARKER, SrsdDaemon, free_port, run_cli, tcp_endpoint

from .conftest import FORWARD_TARGET, LOCAL_DOMAINS, SRS_DOMAIN
from .smtp_sink import header_values
from .test_postfix_dkim import (
    AUTHSERV_ID,
    TRUSTED_IP,
    Stack,
    compose,
    dnsfunc,
    milter_postfix,
    publish_dns_records,
    running,
    smtp_from,
    tags,
)

LOCAL = "local.example"  # one of LOCAL_DOMAINS
SECOND = "second.example"
HELO = "mx.fwd.example"  # the private Postfix's myhostname
# (domain, selector, algorithm) made by `srsd dkim-keygen`; l2 is the rotation's new key
KEYS = [
    (SRS_DOMAIN, "f1", "rsa"),
    (LOCAL, "l1", "rsa"),
    (LOCAL, "l2", "rsa"),
    (SECOND, "s1", "rsa"),
    (SECOND, "e1", "ed25519"),
]
TABLE = [
    {"domain": SRS_DOMAIN, "selector": "f1"},
    {"domain": LOCAL, "selector": "l1"},
    {"domain": SECOND, "selector": "s1"},
    {"domain": SECOND, "selector": "e1"},
]
_QUEUED = re.compile(r"queued as ([0-9A-Za-z]+)")


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("signing-keys")

    def keygen(domain: str, selector: str, algorithm: str) -> None:
        run_cli("dkim-keygen", "--domain", domain, "--selector", selector, "--algorithm", algorithm,
                "--key-directory", str(directory), timeout=60, check=True)  # fmt: skip

    with ThreadPoolExecutor(len(KEYS)) as pool:  # one process each, side by side
        list(pool.map(keygen, *zip(*KEYS, strict=True)))
    assert sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.private")) == sorted(
        f"{d}/{s}.private" for d, s, _ in KEYS
    )
    return directory


def sections(dns_address: str, key_dir: Path, table: list[dict]) -> dict[str, dict]:
    return {
        "dns": {"nameservers": [dns_address], "timeout": 5.0},
        "spf": {"egress_ips": [TRUSTED_IP], "helo_name": HELO},
        "dkim": {
            "key_directory": str(key_dir),
            "keys": table,
            "sign_subdomains": [LOCAL],
            "authserv_id": AUTHSERV_ID,
            "trusted_networks": [f"{TRUSTED_IP}/32"],
            "budget": 5.0,
            # Long: a next key can only start signing through the check a SIGHUP makes.
            "rotation_check_interval": 3600.0,
        },
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sink, key_dir, dns_server_session):
    maildkim.require()
    dns_server = dns_server_session
    dns_server.reset()
    ports = {name: free_port() for name in ("tcp_forward", "tcp_reverse")}
    postfix, socket_dir = milter_postfix(sink, ports, "signing")
    srsd = SrsdDaemon(
        tmp_path_factory.mktemp("srsd-signing"),
        srs={"domain": SRS_DOMAIN, "local_domains": [*LOCAL_DOMAINS, SECOND]},
        endpoints=(),
        listen={name: tcp_endpoint(port) for name, port in ports.items()}
        | {"milter": f"unix:{socket_dir / 'milter.sock'}:mode=660"},
        sections=sections(dns_server.address, key_dir, TABLE),
        probe=True,
    )
    srsd.prepare()
    records = publish_dns_records(srsd, dns_server)
    assert sorted(records) == sorted(
        [SRS_DOMAIN, LOCAL, SECOND, HELO]
        + [f"{s}._domainkey.{d}" for d, s, _ in KEYS if s != "l2"]
        + [f"_dmarc.{d}" for d in (SRS_DOMAIN, LOCAL, SECOND)]
    ), records
    with running(Stack(postfix, srsd, sink, dns_server)) as started:
        yield started


# -- helpers ------------------------------------------------------------------------------------------------


def send_local(stack: Stack, marker: str, sender: str) -> str:
    """A message From: *sender* submitted by a trusted client to a remote recipient; its queue ID."""
    with smtp_from(stack, TRUSTED_IP) as client:
        assert client.mail(sender)[0] == 250
        assert client.rcpt(FORWARD_TARGET)[0] == 250
        code, text = client.data(compose(marker, sender=sender))
        assert code == 250, (code, text)
    return _QUEUED.search(text.decode()).group(1)


def signatures(data: bytes) -> list[tuple[str, str, str]]:
    """(d, s, a) of every DKIM-Signature, top first."""
    return [(t["d"], t["s"], t["a"]) for t in map(tags, header_values(data, "DKIM-Signature"))]


def dkimpy_verifies(data: bytes, lookup: Callable) -> list[bool]:
    """Whether each DKIM-Signature verifies in dkimpy, top first (ed25519 included)."""
    verifier = dkim.DKIM(data)
    out = []
    for i in range(len(header_values(data, "DKIM-Signature"))):
        try:
            out.append(bool(verifier.verify(idx=i, dnsfunc=lookup)))
        except dkim.ValidationError:
            out.append(False)
    return out


def wait_until(what: str, condition: Callable[[], bool], stack: Stack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{stack.diagnostics()}")
        time.sleep(0.05)


def check_dns(stack: Stack) -> tuple[int, list[str]]:
    """``srsd check-dns`` with srsd's config: (exit status, FAIL lines)."""
    done = stack.srsd.cli("check-dns")
    assert done.stdout.rstrip().splitlines()[-1].startswith("check-dns: "), done
    return done.returncode, [line for line in done.stdout.splitlines() if line.startswith("FAIL")]


# -- 1. every local domain with its own keys --------------------------------------------------------------------


def test_mail_from_each_local_domain_is_signed_with_its_own_keys(stack):
    expected = {
        f"alice@{LOCAL}": [(LOCAL, "l1", "rsa-sha256")],
        f"bob@{SECOND}": [(SECOND, "s1", "rsa-sha256"), (SECOND, "e1", "ed25519-sha256")],  # dual signing
        f"carol@dept.{LOCAL}": [(LOCAL, "l1", "rsa-sha256")],  # sign_subdomains
        "dave@elsewhere.example": [(SRS_DOMAIN, "f1", "rsa-sha256")],  # no key of its own: the forwarder's
    }
    markers = {sender: f"signing-{sender.partition('@')[0]}-{time.monotonic_ns()}" for sender in expected}
    queue_ids = {sender: send_local(stack, markers[sender], sender) for sender in expected}
    got = {sender: stack.sink.wait_for(marker, timeout=30).data for sender, marker in markers.items()}

    lookup = dnsfunc(stack.dns)
    for sender, data in got.items():
        assert signatures(data) == expected[sender], sender
        assert dkimpy_verifies(data, lookup) == [True] * len(expected[sender]), sender
    perl = maildkim.mail_dkim_many(list(got.values()), stack.dns.port)
    for (sender, data), outcome in zip(got.items(), perl, strict=True):
        rsa = [(d, "pass") for d, _s, a in signatures(data) if a == "rsa-sha256"]
        assert outcome.result == "pass", (sender, outcome)
        assert [(d, r) for d, r, _ in outcome.signatures if (d, r) in rsa] == rsa, (sender, outcome)

    log = stack.srsd.log_text()
    line = next(line for line in log.splitlines() if f" {queue_ids[f'bob@{SECOND}']}: " in line)
    assert f"local (trusted client {TRUSTED_IP}): signed d={SECOND} s=s1,e1" in line, line
    line = next(line for line in log.splitlines() if f" {queue_ids['dave@elsewhere.example']}: " in line)
    assert "signed d=fwd.example s=f1 (no key for elsewhere.example)" in line, line

    # Everything dns-records printed is published: check-dns agrees.
    assert check_dns(stack) == (0, [])


# -- 2. key rotation under load ------------------------------------------------------------------------------


class Load:
    """*clients* SMTP sessions from a trusted address, each sending local mail From:
    alice@local.example back to back (the next message after the 250 of the last),
    until stopped. ``sent[n]`` are client n's markers in sending order."""

    def __init__(self, stack: Stack, clients: int = 3) -> None:
        self.stack = stack
        self.run = f"rotation-{time.monotonic_ns()}"
        self.stopping = threading.Event()
        self.sent: list[list[str]] = [[] for _ in range(clients)]
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]

    def _client(self, n: int) -> None:
        sender = f"alice@{LOCAL}"
        try:
            with smtp_from(self.stack, TRUSTED_IP) as client:
                while not self.stopping.is_set():
                    marker = f"{self.run}-{n}-{len(self.sent[n]):05d}"
                    refused = client.sendmail(sender, [FORWARD_TARGET], compose(marker, sender=sender))
                    assert not refused, refused
                    self.sent[n].append(marker)
        except Exception as exc:  # reported by the test: a refused or deferred message is a failure
            self.errors.append(f"client {n}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def delivered(self) -> dict[str, bytes]:
        """{marker: data} of this run's messages at the sink."""
        out = {}
        for message in self.stack.sink.matching(self.run):
            marker = re.search(rb"is (" + self.run.encode() + rb"-\d+-\d+)\.", message.data).group(1).decode()
            assert marker not in out, f"{marker} arrived twice"
            out[marker] = message.data
        return out

    def signed_with(self, selector: str) -> int:
        return sum(1 for data in self.delivered().values() if f"s={selector};" in data.replace(b" ", b"").decode())

    def wait(self, what: str, condition: Callable[[], bool]) -> None:
        def progress() -> bool:
            assert not self.errors, self.errors
            return condition()

        wait_until(what, progress, self.stack)


def with_keys(table: list[dict], *changes: dict) -> list[dict]:
    """*table* with the entries of *changes* replaced (same domain and selector) or added."""
    out = copy.deepcopy(table)
    for change in changes:
        same = [i for i, e in enumerate(out) if (e["domain"], e["selector"]) == (change["domain"], change["selector"])]
        if same:
            out[same[0]] = change
        else:
            out.append(change)
    return out


def test_key_rotation_under_load_loses_no_signature(stack, key_dir):
    srsd, dns_server = stack.srsd, stack.dns
    l2_next = with_keys(TABLE, {"domain": LOCAL, "selector": "l2", "state": "next"})
    settled = with_keys(TABLE, {"domain": LOCAL, "selector": "l1", "state": "retired"},
                        {"domain": LOCAL, "selector": "l2", "state": "active"})  # fmt: skip
    try:
        with Load(stack) as load:
            load.wait("mail signed with l1", lambda: load.signed_with("l1") >= 10)

            # 1. l2 configured as next, SIGHUP: its record is not published, so l1 keeps signing.
            srsd.reload(sections(dns_server.address, key_dir, l2_next))
            assert srsd.wait_for_log("next key l2._domainkey.local.example not usable yet (no TXT record)")
            code, failed = check_dns(stack)
            assert code == 1 and len(failed) == 1, failed
            assert "DKIM l2._domainkey.local.example (next): not visible yet" in failed[0], failed
            assert "srsd keeps signing with l1" in failed[0], failed
            before = len(load.delivered())
            load.wait("more mail", lambda: len(load.delivered()) >= before + 10)

            # 2. Publish what dns-records prints now (l2 included), SIGHUP: the switch.
            records = publish_dns_records(srsd, dns_server)
            assert "l2._domainkey.local.example" in records
            srsd.reload()
            assert srsd.wait_for_log("l2._domainkey.local.example is published and matches: signing with it now "
                                     "instead of l1")  # fmt: skip
            load.wait("mail signed with l2", lambda: load.signed_with("l2") >= 10)
            assert check_dns(stack) == (0, [])

            # 3. A broken config on SIGHUP is refused; signing goes on with the running one.
            broken = with_keys(l2_next, {"domain": LOCAL, "selector": "nokey", "state": "next"})
            srsd.sections = sections(dns_server.address, key_dir, broken)
            srsd.write_config()
            refused = srsd.log_text().count(RELOAD_REFUSED_MARKER)
            srsd.signal(signal.SIGHUP)
            assert srsd.wait_for_log(RELOAD_REFUSED_MARKER, count=refused + 1)
            assert "dkim.keys[6].key_file: " in srsd.log_text() and "nokey.private: cannot read" in srsd.log_text()
            before = load.signed_with("l2")
            load.wait("mail signed with l2 after the refused reload", lambda: load.signed_with("l2") >= before + 10)

            # 4. The admin settles it: l1 retired (still published), l2 active.
            srsd.reload(sections(dns_server.address, key_dir, settled))
            before = load.signed_with("l2")
            load.wait("mail signed with l2 after settling", lambda: load.signed_with("l2") >= before + 10)
        assert not load.errors, load.errors

        # Every message sent arrived exactly once, signed once by local.example, and verifies.
        sent = [marker for client in load.sent for marker in client]
        load.wait("every message", lambda: len(load.delivered()) == len(sent))
        delivered = load.delivered()
        assert sorted(delivered) == sorted(sent)
        lookup = dnsfunc(dns_server)
        selector_of = {}
        for marker, data in delivered.items():
            [(domain, selector, _a)] = signatures(data)
            assert domain == LOCAL and selector in ("l1", "l2"), (marker, signatures(data))
            assert dkimpy_verifies(data, lookup) == [True], marker
            selector_of[marker] = selector
        outcomes = maildkim.mail_dkim_many(list(delivered.values()), dns_server.port)
        assert [(o.result, o.signatures[0][:2]) for o in outcomes] == [("pass", (LOCAL, "pass"))] * len(delivered)
        # Per client (each sends its next message after the last one's 250), l1 ... l1 then
        # l2 ... l2: the switch happened once, at one moment, and never went back.
        for client in load.sent:
            order = [selector_of[marker] for marker in client]
            assert order == sorted(order), order
        counts = {s: list(selector_of.values()).count(s) for s in ("l1", "l2")}
        assert counts["l1"] >= 10 and counts["l2"] >= 30, counts
        stack.postfix.wait_for_empty_queue()
        print(f"rotation under load: {len(sent)} messages from {len(load.sent)} clients, {counts}")
    finally:
        if srsd.running():  # back to the module's table
            srsd.reload(sections(dns_server.address, key_dir, TABLE))
