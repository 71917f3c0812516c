"""SRS through a real Postfix, once per protocol (tcp_table and socketmap).

Mail enters the private Postfix over SMTP; everything non-local is relayed to
the SMTP sink, which stands for the rest of the world. The Postfix config is
the shipped snippet file with the test's ports put in.
"""

from __future__ import annotations

import re
import uuid

import pytest

from .conftest import FORWARD_TARGET, FORWARDING_ALIAS

SRS_HASH = r"[A-Za-z0-9+/_-]{4}"
SRS_TIMESTAMP = r"[A-Z2-7]{2}"
ALICE = "alice@orig.example"
ALICE_SRS0 = re.compile(rf"SRS0={SRS_HASH}={SRS_TIMESTAMP}=orig\.example=alice@fwd\.example")
HOP1_SRS0 = "SRS0=abcd=AB=orig.example=carol@hop1.example"
HOP1_SRS1 = re.compile(rf"SRS1={SRS_HASH}=hop1\.example==abcd=AB=orig\.example=carol@fwd\.example")


@pytest.fixture(autouse=True)
def _srsd_stays_up(srsd):
    srsd.assert_running()
    yield
    srsd.assert_running()


def new_marker() -> str:
    return f"srsd-e2e-{uuid.uuid4().hex}"


def message(marker: str, *, from_header: str, to_header: str) -> bytes:
    return (
        f"From: {from_header}\r\n"
        f"To: {to_header}\r\n"
        f"Subject: {marker}\r\n"
        f"Message-ID: <{marker}@client.test>\r\n"
        "\r\n"
        f"Test message {marker}.\r\n"
    ).encode("ascii")


def submit(postfix, mail_from: str, rcpt_to: str, *, to_header: str | None = None) -> str:
    """One message through Postfix's smtpd; every reply must be 2xx/3xx. Returns its marker."""
    marker = new_marker()
    with postfix.smtp() as client:
        reply = client.mail(mail_from)
        assert reply[0] == 250, f"MAIL FROM:<{mail_from}> -> {reply}"
        reply = client.rcpt(rcpt_to)
        assert reply[0] == 250, f"RCPT TO:<{rcpt_to}> -> {reply}"
        body = message(
            marker,
            from_header=mail_from or "MAILER-DAEMON@remote.example",
            to_header=to_header or rcpt_to,
        )
        reply = client.data(body)
        assert reply[0] == 250, f"DATA -> {reply}"
    return marker


def delivered(postfix, sink, marker: str):
    """The message with `marker` at the sink; one `postqueue -f` if it is slow."""
    try:
        return sink.wait_for(marker, timeout=5)
    except AssertionError:
        postfix.flush()
        return sink.wait_for(marker, timeout=10)


def forward_via_alias(postfix, sink, sender: str):
    """Mail from `sender` to the forwarding alias, as the sink receives it."""
    received = delivered(postfix, sink, submit(postfix, sender, FORWARDING_ALIAS))
    assert received.rcpt_tos == (FORWARD_TARGET,), received
    return received


def tampered(srs_address: str) -> str:
    """The address with the first hash character replaced by a different letter.

    Hashes compare case-insensitively, so the new letter differs from the old
    one in both cases.
    """
    position = len("SRS0=")
    old = srs_address[position]
    new = next(c for c in "ABC" if c.lower() != old.lower())
    return srs_address[:position] + new + srs_address[position + 1 :]


def test_snippet_tables_answer_postmap(postfix):
    """The snippet's own map names, queried the way Postfix queries them."""
    sender_map = postfix.postconf("sender_canonical_maps")
    recipient_map = postfix.postconf("recipient_canonical_maps")

    srs0 = postfix.lookup(ALICE, sender_map)
    assert srs0 is not None and ALICE_SRS0.fullmatch(srs0), srs0
    assert postfix.lookup(srs0, recipient_map) == ALICE
    # cleanup looks every result up again: our own output must be "not found".
    assert postfix.lookup(srs0, sender_map) is None
    assert postfix.lookup("bob@local.example", sender_map) is None
    assert postfix.lookup(ALICE, recipient_map) is None


def test_forwarded_mail_leaves_with_srs0_sender(postfix, sink, srsd):
    received = forward_via_alias(postfix, sink, ALICE)

    assert ALICE_SRS0.fullmatch(received.mail_from), received
    # sender_canonical_classes = envelope_sender: the From: header is untouched.
    assert received.headers["From"] == ALICE
    reverse = srsd.cli("reverse", received.mail_from)
    assert (reverse.returncode, reverse.stdout.strip()) == (0, ALICE), reverse


def test_bounce_to_srs0_goes_back_to_original_sender(postfix, sink):
    srs0 = forward_via_alias(postfix, sink, ALICE).mail_from

    bounce = delivered(postfix, sink, submit(postfix, "", srs0))

    assert bounce.mail_from == ""
    assert bounce.rcpt_tos == (ALICE,)
    # recipient_canonical_classes includes header_recipient: To: is restored too.
    assert bounce.headers["To"] == ALICE


def test_tampered_srs0_is_rejected_and_never_reaches_original_sender(postfix, sink, srsd):
    forged = tampered(forward_via_alias(postfix, sink, ALICE).mail_from)

    reverse = srsd.cli("reverse", forged)
    assert reverse.returncode == 1 and reverse.stdout.strip() == "", reverse
    assert postfix.lookup(forged, postfix.postconf("recipient_canonical_maps")) is None

    # A forged address at the SRS domain is an unknown local user: smtpd
    # rejects it at RCPT time, permanently. A valid recipient in the same
    # transaction shows the message itself went through.
    marker = new_marker()
    with postfix.smtp() as client:
        assert client.mail("")[0] == 250
        code, text = client.rcpt(forged)
        assert code == 550, (code, text)
        assert text.decode() == (f"5.1.1 <{forged}>: Recipient address rejected: User unknown in local recipient table")
        assert client.rcpt(FORWARDING_ALIAS)[0] == 250
        body = message(marker, from_header="MAILER-DAEMON@remote.example", to_header=forged)
        assert client.data(body)[0] == 250

    control = delivered(postfix, sink, marker)
    assert control.rcpt_tos == (FORWARD_TARGET,), control
    assert sink.matching(marker) == [control]
    # The To: header is not an SRS address that reverses, so it stays as it was.
    assert control.headers["To"] == forged


@pytest.mark.parametrize(
    "sender",
    ["bob@local.example", "", "carol@fwd.example"],
    ids=["local-domain", "null-sender", "srs-domain"],
)
def test_sender_is_not_rewritten(postfix, sink, sender):
    received = forward_via_alias(postfix, sink, sender)
    assert received.mail_from == sender


def test_srs0_of_another_forwarder_becomes_srs1_and_bounces_back_to_it(postfix, sink, srsd):
    received = forward_via_alias(postfix, sink, HOP1_SRS0)
    srs1 = received.mail_from

    assert HOP1_SRS1.fullmatch(srs1), received
    # SRS1 carries no timestamp: the CLI must mint exactly the same address.
    forward = srsd.cli("forward", HOP1_SRS0)
    assert (forward.returncode, forward.stdout.strip()) == (0, srs1), forward

    bounce = delivered(postfix, sink, submit(postfix, "", srs1))

    assert bounce.mail_from == ""
    assert bounce.rcpt_tos == (HOP1_SRS0,)
