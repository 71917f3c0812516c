"""Postfix policy delegation adapter through StringTransport (no sockets)."""

import pytest
from twisted.internet.defer import Deferred, succeed

from srsd.config import PolicySettings
from srsd.policy_service import PolicyService
from srsd.protocols.policy import PolicyFactory, encode_action
from srsd.spf import SPFResult
from tests.protocols.conftest import connect

# What Postfix 3.7 sends for one RCPT (SMTPD_POLICY_README), in its order.
POSTFIX_REQUEST = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=RCPT\n"
    b"protocol_name=ESMTP\n"
    b"client_address=192.0.2.1\n"
    b"client_name=mail.example.net\n"
    b"client_port=41234\n"
    b"reverse_client_name=mail.example.net\n"
    b"server_address=198.51.100.25\n"
    b"server_port=25\n"
    b"helo_name=mail.example.net\n"
    b"sender=alice@example.net\n"
    b"recipient=bob@example.org\n"
    b"recipient_count=0\n"
    b"queue_id=\n"
    b"instance=2f4a.65b1c0de.9a1b2.0\n"
    b"size=1234\n"
    b"etrn_domain=\n"
    b"stress=\n"
    b"sasl_method=\n"
    b"sasl_username=\n"
    b"sasl_sender=\n"
    b"ccert_subject=\n"
    b"ccert_issuer=\n"
    b"ccert_fingerprint=\n"
    b"ccert_pubkey_fingerprint=\n"
    b"encryption_protocol=TLSv1.3\n"
    b"encryption_cipher=TLS_AES_256_GCM_SHA384\n"
    b"encryption_keysize=256\n"
    b"policy_context=\n"
    b"compatibility_level=3.6\n"
    b"\n"
)
PASS_HEADER = (
    "Pass (mx.example.org: domain of alice@example.net designates 192.0.2.1 as permitted sender) "
    'client-ip=192.0.2.1; envelope-from="alice@example.net"; helo=mail.example.net; '
    "receiver=mx.example.org; identity=mailfrom"
)


class Checker:
    def __init__(self, result="pass"):
        self.result = result
        self.calls = []

    def check(self, ip, sender, helo, budget=None):
        self.calls.append((ip, sender, helo))
        return succeed(SPFResult(self.result, "explained", "mailfrom" if sender else "helo", PASS_HEADER))


class Scripted:
    """A service answering ``recipient`` as the action; ``slow:*`` waits to be fired,
    ``boom`` raises, ``fails`` errbacks."""

    def __init__(self, error="DUNNO"):
        self.seen = []
        self.pending = {}
        self.all_pending = []
        self.error = error

    def handle(self, attrs):
        self.seen.append(attrs)
        rcpt = attrs.get("recipient", "")
        if rcpt == "boom":
            raise RuntimeError("bug")
        if rcpt == "fails":
            d = Deferred()
            d.errback(RuntimeError("bug"))
            return d
        if rcpt.startswith("slow:"):
            d = Deferred()
            self.pending[rcpt] = d
            self.all_pending.append(d)
            return d
        if rcpt == "sync":
            return "OK-SYNC"
        return succeed(f"ANSWER {rcpt}")

    def error_action(self):
        return self.error


def req(**attrs):
    return b"".join(b"%s=%s\n" % (k.encode(), v.encode()) for k, v in attrs.items()) + b"\n"


@pytest.fixture
def scripted():
    return Scripted()


@pytest.fixture
def factory(scripted):
    return PolicyFactory(
        scripted, "policy", max_request_bytes=512, max_line_bytes=128, max_attributes=8, max_connections=2
    )


def test_full_postfix_request_with_the_real_service():
    checker = Checker("pass")
    svc = PolicyService(PolicySettings(), checker, "mx.example.org")
    proto, t = connect(PolicyFactory(svc, "policy"))
    proto.dataReceived(POSTFIX_REQUEST)
    assert t.value() == b"action=PREPEND Received-SPF: " + PASS_HEADER.encode() + b"\n\n"
    assert checker.calls == [("192.0.2.1", "alice@example.net", "mail.example.net")]
    # The second recipient of the same message, on the same connection: no second header.
    t.clear()
    proto.dataReceived(POSTFIX_REQUEST.replace(b"bob@example.org", b"carol@example.org"))
    assert t.value() == b"action=DUNNO\n\n"
    assert not t.disconnecting
    assert len(checker.calls) == 1


def test_full_postfix_request_rejected():
    svc = PolicyService(PolicySettings(mail_from_reject="fail"), Checker("fail"), "mx.example.org")
    proto, t = connect(PolicyFactory(svc, "policy"))
    proto.dataReceived(POSTFIX_REQUEST)
    assert t.value() == b"action=550 5.7.23 SPF fail for sender domain example.net: explained\n\n"


def test_two_requests_one_connection(factory, scripted):
    proto, t = connect(factory)
    proto.dataReceived(req(request="smtpd_access_policy", recipient="a"))
    assert t.value() == b"action=ANSWER a\n\n"
    proto.dataReceived(req(request="smtpd_access_policy", recipient="b"))
    assert t.value() == b"action=ANSWER a\n\naction=ANSWER b\n\n"
    assert [a["recipient"] for a in scripted.seen] == ["a", "b"]
    assert not t.disconnecting


def test_pipelined_and_split_requests(factory):
    proto, t = connect(factory)
    data = req(recipient="a") + req(recipient="sync") + req(recipient="c")
    for i in range(0, len(data), 5):
        proto.dataReceived(data[i : i + 5])
    assert t.value() == b"action=ANSWER a\n\naction=OK-SYNC\n\naction=ANSWER c\n\n"


def test_slow_answer_keeps_order(factory, scripted):
    proto, t = connect(factory)
    proto.dataReceived(req(recipient="slow:1") + req(recipient="b") + req(recipient="slow:3") + req(recipient="d"))
    assert t.value() == b""
    scripted.pending["slow:3"].callback("THIRD")
    assert t.value() == b""
    scripted.pending["slow:1"].callback("FIRST")
    assert t.value() == b"action=FIRST\n\naction=ANSWER b\n\naction=THIRD\n\naction=ANSWER d\n\n"


def test_crlf_tolerated_and_values_kept_verbatim(factory, scripted):
    proto, t = connect(factory)
    proto.dataReceived(b"request=smtpd_access_policy\r\nsender= a=b@x \r\nrecipient=c\r\n\r\n")
    assert t.value() == b"action=ANSWER c\n\n"
    assert scripted.seen == [{"request": "smtpd_access_policy", "sender": " a=b@x ", "recipient": "c"}]


def test_repeated_attribute_last_wins(factory, scripted):
    proto, t = connect(factory)
    proto.dataReceived(b"recipient=a\nrecipient=b\n\n")
    assert t.value() == b"action=ANSWER b\n\n"


def test_repeated_attribute_at_the_attribute_limit(factory, scripted):
    # A repeat is no new attribute: it was counted as one once the limit was reached (the
    # name, bytes, was looked up among decoded names). Found by fuzz/fuzz_policy.py.
    attrs = b"".join(b"a%d=1\n" % i for i in range(7)) + b"recipient=a\nrecipient=b\n\n"
    proto, t = connect(factory)
    proto.dataReceived(attrs)
    assert t.value() == b"action=ANSWER b\n\n"


def test_crlf_line_at_the_limit_split_before_newline(factory, scripted):
    # 128 bytes and its CR, the LF in the next read: as in one read, not over the limit.
    line = b"recipient=" + b"r" * 118 + b"\r"
    proto, t = connect(factory)
    proto.dataReceived(line)
    proto.dataReceived(b"\n\n")
    assert t.value() == b"action=ANSWER " + b"r" * 118 + b"\n\n"


def test_empty_request_is_passed_on(factory, scripted):
    """A lone empty line is a request without attributes (the service says DUNNO)."""
    proto, t = connect(factory)
    proto.dataReceived(b"\n")
    assert scripted.seen == [{}]
    assert t.value() == b"action=ANSWER \n\n"


@pytest.mark.parametrize(
    "junk",
    [
        b"this is not a policy request\n\n",
        b"=value\nrecipient=x\n\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\xff\xfe\n\n",
        b"".join(b"a%d=1\n" % i for i in range(9)) + b"\n",  # 9 attributes, limit 8
        b"recipient=" + b"x" * 200 + b"\n\n",  # line over 128
        b"".join(b"a%d=%s\n" % (i % 4, b"y" * 100) for i in range(6)) + b"\n",  # request over 512
    ],
)
def test_malformed_request_gets_error_action_and_stream_continues(factory, scripted, junk):
    proto, t = connect(factory)
    proto.dataReceived(junk + req(recipient="next"))
    assert t.value() == b"action=DUNNO\n\naction=ANSWER next\n\n"
    assert [a.get("recipient") for a in scripted.seen] == ["next"]
    assert not t.disconnecting


def test_error_action_follows_the_service(scripted):
    scripted.error = "DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later"
    proto, t = connect(PolicyFactory(scripted, "policy", max_attributes=2))
    proto.dataReceived(b"a=1\nb=2\nc=3\n\n")
    assert t.value() == b"action=DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later\n\n"


def test_oversize_line_without_newline_is_discarded_as_it_arrives(factory, scripted):
    proto, t = connect(factory)
    proto.dataReceived(b"recipient=a\nsender=" + b"x" * 300)  # over 128, no newline yet
    proto.dataReceived(b"y" * 5000)
    proto.dataReceived(b"z\nclient_address=1.2.3.4\n\n" + req(recipient="next"))
    assert t.value() == b"action=DUNNO\n\naction=ANSWER next\n\n"
    assert [a.get("recipient") for a in scripted.seen] == ["next"]


def test_oversize_request_made_of_short_lines(scripted):
    proto, t = connect(PolicyFactory(scripted, "policy", max_request_bytes=300, max_attributes=100))
    lines = b"".join(b"attr%03d=%s\n" % (i, b"v" * 20) for i in range(50))
    proto.dataReceived(lines + b"\n" + req(recipient="next"))
    assert t.value() == b"action=DUNNO\n\naction=ANSWER next\n\n"


@pytest.mark.parametrize("rcpt", ["boom", "fails"])
def test_service_failure_becomes_error_action(factory, rcpt):
    proto, t = connect(factory)
    proto.dataReceived(req(recipient=rcpt) + req(recipient="next"))
    assert t.value() == b"action=DUNNO\n\naction=ANSWER next\n\n"


def test_newline_in_action_cannot_split_the_reply(factory, scripted):
    proto, t = connect(factory)
    proto.dataReceived(req(recipient="slow:x"))
    scripted.pending["slow:x"].callback("550 5.7.23 bad\n\naction=OK")
    assert t.value() == b"action=550 5.7.23 bad  action=OK\n\n"
    assert encode_action("a\rb\0c") == b"action=a b c\n\n"


def test_connection_limit(factory):
    connect(factory)
    connect(factory)
    proto, t = connect(factory)  # third, limit 2
    proto.dataReceived(req(recipient="a"))
    assert t.value() == b"action=DUNNO\n\n"
    assert t.disconnecting


def test_connection_lost_while_waiting(factory, scripted):
    proto, t = connect(factory)
    proto.dataReceived(req(recipient="slow:1"))
    proto.connectionLost(None)
    scripted.pending["slow:1"].callback("LATE")  # must not raise
    assert proto not in factory.connections


def test_random_bytes_never_break_the_stream(scripted):
    """Whatever arrives, replies stay well-formed, and a clean request after an empty
    line is answered correctly."""
    import random
    import re

    rng = random.Random(7208)
    alphabet = b"ab=\n\r\x00\xff recipient=slow"
    for _ in range(300):
        factory = PolicyFactory(scripted, "policy", max_request_bytes=256, max_line_bytes=64, max_attributes=4)
        proto, t = connect(factory)
        junk = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 600)))
        cuts = sorted(rng.sample(range(len(junk) + 1), min(4, len(junk) + 1)))
        for a, b in zip([0, *cuts], [*cuts, len(junk)], strict=True):
            proto.dataReceived(junk[a:b])
        for d in scripted.all_pending:
            if not d.called:
                d.callback("LATE")
        proto.dataReceived(b"\n\n" + req(recipient="final"))
        out = t.value()
        assert re.fullmatch(rb"(action=[^\n]*\n\n)*", out), out
        assert out.endswith(b"action=ANSWER final\n\n")


def test_whole_request_path_reads_what_the_line_path_reads():
    """A request in one segment is read at once (PolicyProtocol._whole_request); fed a
    byte at a time it goes line by line. Both give the service the same attributes and
    the client the same replies, for well-formed requests and near misses (CRs, no "=",
    long lines, too many attributes, repeated names, bytes that are not UTF-8, two
    requests in one segment)."""
    import random

    rng = random.Random(52)
    pieces = [b"a=1", b"b=", b"=x", b"nox", b"c=\xff\xfe", b"d=" + b"y" * 60, b"a=2", b"e=\r", b"f=g=h", b"", b"\xff=1"]
    for _ in range(400):
        lines = [rng.choice(pieces) for _ in range(rng.randrange(0, 7))]
        data = b"\n".join(lines) + b"\n\n"
        if rng.random() < 0.1:
            data += req(recipient="second")
        outputs = []
        for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
            scripted = Scripted()
            factory = PolicyFactory(scripted, "policy", max_request_bytes=120, max_line_bytes=40, max_attributes=3)
            proto, t = connect(factory)
            for chunk in chunks:
                proto.dataReceived(chunk)
            outputs.append((scripted.seen, t.value()))
        assert outputs[0] == outputs[1], data
