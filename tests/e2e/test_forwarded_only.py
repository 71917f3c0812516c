"""forwarded-only SRS through a real Postfix: only copies that leave the host are rewritten.

Issue 9's acceptance tests. One private Postfix for the module, wired with the output of
``srsd postfix-snippet forwarded-only`` (main.cf) and ``... --master`` (master.cf) as
printed for this srsd's config, nothing edited; around it only what a host with
mailboxes has:

* local(8) mailboxes (``home_mailbox = Mailbox``) of two real accounts
  (tests/e2e/local_delivery.py): MBOX, and DOTFWD whose ``.forward`` keeps a local copy
  and forwards one off-site (``\\DOTFWD, dotfwd-target@remote.example``);
* aliases(5): ``ali-remote`` (off-site), ``ali-split`` (MBOX and off-site);
* virtual_alias_maps for alias.example, to off-site, to MBOX + off-site, to a virtual(8)
  mailbox + off-site, and to an address the "internet" refuses;
* a virtual(8) mailbox domain vmail.example (an mbox file);
* the SMTP sink as relayhost (the rest of the internet).

Each case is judged twice: the envelope sender (MAIL FROM) the sink gets, and the
``Return-Path:`` local(8)/virtual(8) wrote into the mailbox file; after the queue is
empty, every recipient has exactly one copy, and ``From:`` is as sent.

PostSRSd 2.4's milter (src/main.c at tag 2.4.0) rewrites the sender of a whole
transaction when some RCPT TO is outside its local domains, else not at all.
:func:`postsrsd24_rewrites` is that rule; the tests marked with it show where it
leaves a forwarded copy unrewritten or rewrites a local one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.srsd_daemon import SrsdDaemon, free_port, serving, tcp_endpoint

from . import local_delivery
from .postfix_instance import PostfixInstance
from .smtp_sink import marked_message

SRS_DOMAIN = "fwd.example"
#: Postfix's local(8) domains (mydestination besides its own names) and srsd's local_domains
POSTFIX_LOCAL = ["fwd.example", "local.example"]
SRSD_LOCAL = ["fwd.example", "local.example", "alias.example", "vmail.example"]
ALICE = "alice@orig.example"
BOB_LOCAL = "bob@local.example"
ALICE_SRS0 = re.compile(r"SRS0=[A-Za-z0-9+/_-]{4}=[A-Z2-7]{2}=orig\.example=alice@fwd\.example")
REFUSED = "refused@remote.example"
HOLD_PREFIX = "hold-"


def postsrsd24_rewrites(recipients: list[str]) -> bool:
    """PostSRSd 2.4's milter: rewrite MAIL FROM iff some RCPT TO is not in a local domain."""
    return any(r.rpartition("@")[2] not in SRSD_LOCAL for r in recipients)


class Host:
    """The module's Postfix, srsd, sink and accounts, with the addresses the tests use."""

    def __init__(self, postfix: PostfixInstance, srsd: SrsdDaemon, sink, accounts, mbox: str, dotfwd: str) -> None:
        self.postfix, self.srsd, self.sink, self.accounts = postfix, srsd, sink, accounts
        self.mbox = f"{mbox}@local.example"
        self.dotfwd = f"{dotfwd}@local.example"
        #: mailbox file by the address whose copies land in it
        self.mailboxes = {
            self.mbox: accounts.home(mbox) / "Mailbox",
            self.dotfwd: accounts.home(dotfwd) / "Mailbox",
            "vuser@vmail.example": postfix.root / "vmail" / "vmail.example" / "vuser",
        }

    def diagnostics(self) -> str:
        return "\n".join((self.srsd.diagnostics(), self.postfix.diagnostics(), self.sink.diagnostics()))


@pytest.fixture(scope="module")
def host(tmp_path_factory, sink):
    ports = {"socketmap": free_port()}  # fixed: srsd comes back on it after a stop
    srsd = SrsdDaemon(
        tmp_path_factory.mktemp("srsd-fwdonly"),
        srs={"domain": SRS_DOMAIN, "local_domains": SRSD_LOCAL},
        endpoints=(),
        listen={"socketmap": tcp_endpoint(ports["socketmap"])},
        sections={"postfix": {"forward_pass": f"127.0.0.1:{free_port()}"}},
        probe=True,
    )
    srsd.prepare()
    main_cf = srsd.cli("postfix-snippet", "forwarded-only")
    master_cf = srsd.cli("postfix-snippet", "forwarded-only", "--master")
    assert main_cf.returncode == 0 and master_cf.returncode == 0, (main_cf, master_cf)

    homes = Path(tempfile.mkdtemp(prefix="srsd-e2e-homes-"))
    homes.chmod(0o755)  # local(8) reads .forward as the account
    accounts = local_delivery.LocalAccounts(homes)
    postfix = None
    try:
        mbox = accounts.add("mbox")
        dotfwd = accounts.add("dfwd", forward="\\{name}, dotfwd-target@remote.example\n")
        postfix = PostfixInstance(
            relay_port=sink.port,
            local_domains=POSTFIX_LOCAL,
            virtual_aliases={
                "fwd@alias.example": "v-target@remote.example",
                "split@alias.example": f"{mbox}@local.example, v-split-target@remote.example",
                "vsplit@alias.example": "vuser@vmail.example, vm-split-target@remote.example",
                "refusing@alias.example": REFUSED,
            },
            aliases={
                "ali-remote": "ali-target@remote.example",
                "ali-split": f"{mbox}, ali-split-target@remote.example",
            },
            extra_main_cf=main_cf.stdout,  # as printed
            extra_master_cf=master_cf.stdout,  # as printed
            label="fwdonly",
        )
        _add_mailbox_host(postfix, accounts.uid_gid(mbox))
        with serving(srsd):
            postfix.start()
            try:
                yield Host(postfix, srsd, sink, accounts, mbox, dotfwd)
            finally:
                postfix.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))
    finally:
        accounts.remove()
        shutil.rmtree(homes, ignore_errors=True)


def _add_mailbox_host(postfix: PostfixInstance, owner: tuple[int, int]) -> None:
    """What a host with mailboxes has besides the snippet: local(8) mailboxes in the
    homes, alias.example for virtual aliases, a virtual(8) domain (mailbox files owned
    by *owner*), and, for the srsd-down test only, header_checks that put a message
    whose Subject starts with HOLD_PREFIX on hold in the first pass."""
    vmail = postfix.root / "vmail" / "vmail.example"
    vmail.mkdir(parents=True)
    for directory in (vmail.parent, vmail):
        os.chown(directory, *owner)
    (postfix.config_dir / "vmailbox").write_text("vuser@vmail.example vmail.example/vuser\n")
    (postfix.config_dir / "header_checks").write_text(f"/^Subject: {HOLD_PREFIX}/ HOLD\n")
    with (postfix.config_dir / "main.cf").open("a") as main_cf:
        main_cf.write(
            "\n# --- the host's mailboxes (not srsd's) ---\n"
            "home_mailbox = Mailbox\n"
            "virtual_alias_domains = alias.example\n"
            "virtual_mailbox_domains = vmail.example\n"
            f"virtual_mailbox_base = {postfix.root / 'vmail'}\n"
            f"virtual_mailbox_maps = texthash:{postfix.config_dir / 'vmailbox'}\n"
            f"virtual_uid_maps = static:{owner[0]}\n"
            f"virtual_gid_maps = static:{owner[1]}\n"
            f"header_checks = regexp:{postfix.config_dir / 'header_checks'}\n"
        )


# -- helpers ------------------------------------------------------------------------------


def new_marker(prefix: str = "fwdonly-") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def send(host: Host, mail_from: str, recipients: list[str], *, marker: str | None = None) -> str:
    """One SMTP transaction into the first pass; every reply must be 2xx/3xx. The
    message's Subject is its marker (returned); From: is *mail_from*."""
    marker = marker or new_marker()
    body = marked_message(marker, mail_from or "MAILER-DAEMON@remote.example", recipients)
    with host.postfix.smtp() as client:
        reply = client.mail(mail_from)
        assert reply[0] == 250, f"MAIL FROM:<{mail_from}> -> {reply}"
        for recipient in recipients:
            reply = client.rcpt(recipient)
            assert reply[0] == 250, f"RCPT TO:<{recipient}> -> {reply}"
        reply = client.data(body)
        assert reply[0] == 250, f"DATA -> {reply}"
    return marker


class Outcome:
    """Where the copies of one message went, once all expected ones arrived and the queue
    is empty: ``remote`` the sink's messages by RCPT TO, ``local`` the mailbox messages by
    mailbox address (every mailbox of the host, so a stray copy shows)."""

    def __init__(self, host: Host, marker: str, remote: list[str], local: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        flushed = False
        while not all(any(r in m.rcpt_tos for m in host.sink.matching(marker)) for r in remote):
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker}: not every one of {remote} reached the sink\n{host.diagnostics()}")
            if not flushed and time.monotonic() > deadline - timeout / 2:
                host.postfix.flush()  # a deferred retry, sooner
                flushed = True
            time.sleep(0.05)
        for address in local:
            local_delivery.wait_for_mail(host.mailboxes[address], marker, timeout=max(1.0, deadline - time.monotonic()))
        host.postfix.wait_for_empty_queue(timeout=30)
        self.sink_messages = host.sink.matching(marker)
        self.remote = {r: [m for m in self.sink_messages if r in m.rcpt_tos] for r in remote}
        self.local = {a: local_delivery.matching(path, marker) for a, path in host.mailboxes.items()}
        stray = [m for m in self.sink_messages if not set(m.rcpt_tos) <= set(remote)]
        assert not stray, f"copies to unexpected recipients: {stray}"

    def one_remote(self, recipient: str):
        copies = self.remote[recipient]
        assert len(copies) == 1, f"{recipient}: {len(copies)} copies at the sink: {copies}"
        assert copies[0].rcpt_tos.count(recipient) == 1, copies[0]
        return copies[0]

    def one_local(self, address: str):
        copies = self.local[address]
        assert len(copies) == 1, f"{address}: {len(copies)} copies in {address}'s mailbox"
        return copies[0]

    def no_local_except(self, *addresses: str) -> None:
        stray = {a: len(c) for a, c in self.local.items() if c and a not in addresses}
        assert not stray, f"copies in mailboxes that should have none: {stray}"


def assert_srs0_of_alice(host: Host, copy) -> None:
    """An off-site copy of Alice's mail: SRS0 sender that reverses to her, From: as sent."""
    assert ALICE_SRS0.fullmatch(copy.mail_from), copy
    assert copy.headers["From"] == ALICE
    reverse = host.srsd.cli("reverse", copy.mail_from)
    assert (reverse.returncode, reverse.stdout.strip()) == (0, ALICE), reverse


def forwarded_srs0(host: Host) -> str:
    """The SRS0 sender a copy of Alice's mail to fwd@alias.example leaves with."""
    marker = send(host, ALICE, ["fwd@alias.example"])
    return (
        Outcome(host, marker, remote=["v-target@remote.example"], local=[])
        .one_remote("v-target@remote.example")
        .mail_from
    )


def wait_for_log_match(postfix: PostfixInstance, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    """The first match of *pattern* in Postfix's maillog; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while not (match := re.search(pattern, postfix.maillog_text())):
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in the maillog after {timeout} s\n{postfix.diagnostics()}")
        time.sleep(0.05)
    return match


def return_path(mail) -> str:
    (value,) = mail.get_all("Return-Path")
    return str(value)


# -- the cases --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _srsd_stays_up(host):
    host.srsd.assert_running()
    yield
    host.srsd.assert_running()


def test_a_local_and_virtual_mailboxes_keep_the_original_sender(host):
    """(a) Nothing leaves: local(8) and virtual(8) mailboxes get Return-Path <alice>."""
    recipients = [host.mbox, "vuser@vmail.example"]
    marker = send(host, ALICE, recipients)
    outcome = Outcome(host, marker, remote=[], local=recipients)

    assert outcome.sink_messages == []
    for address in recipients:
        mail = outcome.one_local(address)
        assert return_path(mail) == f"<{ALICE}>"
        assert mail["From"] == ALICE
    outcome.no_local_except(*recipients)


# (RCPT TO, the off-site target, the mailbox that keeps a copy or None): every route off
# the host an alias can take. PostSRSd 2.4 sees only local RCPTs in each and rewrites none.
FORWARDS = {
    "b-virtual-alias": ("fwd@alias.example", "v-target@remote.example", None),
    "c-aliases": ("ali-remote@local.example", "ali-target@remote.example", None),
    "c-d-dot-forward": ("DOTFWD", "dotfwd-target@remote.example", "DOTFWD"),
    "d-virtual-alias-local-and-remote": ("split@alias.example", "v-split-target@remote.example", "MBOX"),
    "d-aliases-local-and-remote": ("ali-split@local.example", "ali-split-target@remote.example", "MBOX"),
    "d-virtual-alias-virtual-mailbox-and-remote": (
        "vsplit@alias.example",
        "vm-split-target@remote.example",
        "vuser@vmail.example",
    ),
}


def _address(host: Host, name: str | None) -> str | None:
    return {"MBOX": host.mbox, "DOTFWD": host.dotfwd}.get(name, name) if name else None


@pytest.mark.parametrize("route", sorted(FORWARDS))
def test_bcd_forwarded_copies_leave_with_srs0_local_copies_keep_the_sender(host, route):
    """(b) virtual aliases, (c) aliases(5) and .forward forwarding off-site: SRS0; (d) an
    alias with a local and a remote target: the local copy keeps Alice as Return-Path."""
    rcpt, target, keeps = FORWARDS[route]
    rcpt, keeps = _address(host, rcpt), _address(host, keeps)
    assert not postsrsd24_rewrites([rcpt])  # PostSRSd 2.4 would leave the off-site copy as it is

    marker = send(host, ALICE, [rcpt])
    outcome = Outcome(host, marker, remote=[target], local=[keeps] if keeps else [])

    assert_srs0_of_alice(host, outcome.one_remote(target))
    if keeps:
        assert return_path(outcome.one_local(keeps)) == f"<{ALICE}>"
        outcome.no_local_except(keeps)
    else:
        outcome.no_local_except()


@pytest.mark.parametrize("second", ["forwarding-alias", "remote-address"])
def test_e_one_transaction_local_and_forwarded(host, second):
    """(e) One transaction, RCPT TO a local mailbox and a forwarded (or directly remote,
    relayed for this trusted client) one: one queue file, yet the local copy keeps the
    sender and the remote copy leaves as SRS0. PostSRSd 2.4 gets both wrong: with the
    alias it rewrites nothing (all RCPTs local), with the remote address it rewrites the
    whole message, the local copy too."""
    rcpt, target = {
        "forwarding-alias": ("fwd@alias.example", "v-target@remote.example"),
        "remote-address": ("carol@remote.example", "carol@remote.example"),
    }[second]
    postsrsd24 = postsrsd24_rewrites([host.mbox, rcpt])
    assert postsrsd24 is (second == "remote-address")

    marker = send(host, ALICE, [host.mbox, rcpt])
    outcome = Outcome(host, marker, remote=[target], local=[host.mbox])

    assert_srs0_of_alice(host, outcome.one_remote(target))  # PostSRSd 2.4: unrewritten with the alias
    local = outcome.one_local(host.mbox)
    assert return_path(local) == f"<{ALICE}>"  # PostSRSd 2.4: SRS0 with the remote address
    assert local["From"] == ALICE
    outcome.no_local_except(host.mbox)


def test_f_bounce_to_srs0_reaches_the_original_sender(host):
    """(f) A bounce to the SRS0 address a forwarded copy left with goes back to Alice."""
    srs0 = forwarded_srs0(host)

    bounce_marker = send(host, "", [srs0])
    outcome = Outcome(host, bounce_marker, remote=[ALICE], local=[])

    bounce = outcome.one_remote(ALICE)
    assert bounce.mail_from == ""  # the null sender is never rewritten, and does not loop
    assert bounce.rcpt_tos == (ALICE,)
    assert bounce.headers["To"] == ALICE  # header_recipient: To: reversed too
    outcome.no_local_except()


def test_f_forged_srs0_is_refused_at_rcpt(host):
    """(f) A forged SRS0 (one hash letter changed) is an unknown user: 550 at RCPT."""
    srs0 = forwarded_srs0(host)
    position = len("SRS0=")
    letter = next(c for c in "ABC" if c.lower() != srs0[position].lower())
    forged = srs0[:position] + letter + srs0[position + 1 :]

    with host.postfix.smtp() as client:
        assert client.mail("")[0] == 250
        code, text = client.rcpt(forged)
    assert code == 550, (code, text)
    assert text.decode().startswith("5.1.1 "), text


@pytest.mark.parametrize("sender", [BOB_LOCAL, ""], ids=["local-sender", "null-sender"])
def test_g_local_and_null_senders_are_untouched(host, sender):
    """(g) A local sender (and the null sender) leaves as it is, forwarded or sent to a
    remote address; the second pass does not send it back to itself (no loop)."""
    recipients = ["fwd@alias.example", "dave@remote.example", host.mbox]
    marker = send(host, sender, recipients)
    outcome = Outcome(host, marker, remote=["v-target@remote.example", "dave@remote.example"], local=[host.mbox])

    for target in ("v-target@remote.example", "dave@remote.example"):
        assert outcome.one_remote(target).mail_from == sender
    assert return_path(outcome.one_local(host.mbox)) == f"<{sender}>"
    outcome.no_local_except(host.mbox)


def test_h_remote_refusal_bounces_to_the_original_sender(host):
    """(h) The remote site refuses the forwarded copy (550 at RCPT): the second pass
    bounces to the SRS0 sender, which reverses to Alice, and the bounce reaches her."""
    host.sink.refused_recipients.add(REFUSED)
    marker = send(host, ALICE, ["refusing@alias.example"])
    deadline = time.monotonic() + 30
    while not [m for m in host.sink.messages if m.rcpt_tos == (ALICE,) and marker.encode() in m.data]:
        assert time.monotonic() < deadline, f"no bounce for {marker} reached {ALICE}\n{host.diagnostics()}"
        time.sleep(0.05)
    host.postfix.wait_for_empty_queue(timeout=30)

    (bounce,) = host.sink.matching(marker)  # nothing else: the refused copy was never accepted
    assert bounce.mail_from == "" and bounce.rcpt_tos == (ALICE,), bounce
    assert REFUSED.encode() in bounce.data and b"550 5.1.1" in bounce.data, bounce.data[:2000]
    for address, path in host.mailboxes.items():
        assert local_delivery.matching(path, marker) == [], address


def test_second_pass_in_received_fields_and_log(host):
    """The cost, as the next hop and the admin see it: two Received fields by this host,
    the top one from the loopback hop; the first pass logs the hand-over to the second
    pass ("queued as") on the srsd-forward transport."""
    marker = send(host, ALICE, ["fwd@alias.example"])
    copy = Outcome(host, marker, remote=["v-target@remote.example"], local=[]).one_remote("v-target@remote.example")

    received = copy.headers.get_all("Received")
    assert len(received) == 2, received
    assert str(received[0]).startswith("from localhost (") and "by mx.fwd.example" in str(received[0])
    assert str(received[1]).startswith("from client.test (") and "by mx.fwd.example" in str(received[1])
    log = host.postfix.maillog_text()
    hand_over = re.search(
        r"postfix/srsd-forward/smtp\[\d+\]: (\w+): to=<v-target@remote\.example>, orig_to=<fwd@alias\.example>, "
        r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent \(250 2\.0\.0 Ok: queued as (\w+)\)",
        log,
    )
    assert hand_over, log[-3000:]
    second = hand_over.group(2)
    assert re.search(rf"postfix/qmgr\[\d+\]: {second}: from=<SRS0=", log), log[-3000:]


def test_srsd_down_postfix_defers_and_nothing_leaves_unrewritten(host):
    """srsd stopped: new mail gets 451 at RCPT (the first pass's reverse map), and a copy
    already queued for the second pass is deferred there (its cleanup cannot ask the
    forward map) instead of leaving with the original sender; once srsd is back it leaves
    as SRS0, once."""
    marker = send(host, ALICE, ["fwd@alias.example"], marker=new_marker(HOLD_PREFIX))
    log = host.postfix.wait_for_maillog(f"hold: header Subject: {marker}")
    (queue_id,) = re.findall(rf"cleanup\[\d+\]: (\w+): hold: header Subject: {marker}", log)

    host.srsd.stop()
    try:
        with host.postfix.smtp() as client:
            assert client.mail(ALICE)[0] == 250
            for rcpt in (host.mbox, "fwd@alias.example"):
                code, text = client.rcpt(rcpt)
                assert (code, text.decode().split(" ")[0]) == (451, "4.3.0"), (rcpt, code, text)

        host.postfix.postsuper("-H", queue_id)  # released: the alias was expanded while srsd was up
        deferred = wait_for_log_match(
            host.postfix, rf"srsd-forward/smtp\[\d+\]: {queue_id}: to=<v-target@remote\.example>.*status=(\w+) (.*)"
        )
        assert deferred.group(1) == "deferred", deferred.group(0)
        assert host.sink.matching(marker) == []
        assert queue_id in host.postfix.queue_listing()
    finally:
        host.srsd.start()

    host.postfix.flush()
    outcome = Outcome(host, marker, remote=["v-target@remote.example"], local=[])
    assert_srs0_of_alice(host, outcome.one_remote("v-target@remote.example"))
