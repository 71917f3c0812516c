"""The milter adapter through StringTransport (no sockets), fed what Postfix 3.7 sends."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from zope.interface import implementer

from srsd.mailauth.message import DeleteHeader, Envelope, InsertHeader, Message, Quarantine, Reject, TempFail
from srsd.protocols import milter_codec as mc
from srsd.protocols.milter import DEFAULT_MACROS, WANTED_PROTOCOL, MilterFactory
from tests.protocols import milter_wire as w
from tests.protocols.conftest import connect


class Handler:
    """Answers every message with ``actions``; ``mode`` picks how."""

    def __init__(self, actions=None, mode="list"):
        self.actions = [InsertHeader(0, "X-Test", " ok")] if actions is None else actions
        self.mode = mode
        self.calls: list[tuple[Envelope, Message]] = []
        self.pending: list[Deferred] = []
        self.cancelled: list[Deferred] = []
        self.canceller = None  # a Deferred without one ignores a callback after cancel()

    def end_of_message(self, envelope, message):
        self.calls.append((envelope, message))
        if self.mode == "raise":
            raise RuntimeError("handler bug")
        if self.mode == "fail":
            return fail(RuntimeError("handler failed later"))
        if self.mode == "later":
            d = Deferred(self.canceller)
            self.pending.append(d)
            return d
        if self.mode == "succeed":
            return succeed(list(self.actions))
        return list(self.actions)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def handler():
    return Handler()


@pytest.fixture
def factory(handler, clock):
    return MilterFactory(handler, "milter", reactor=clock, max_connections=3)


def negotiated(factory, start=None):
    """A connection past OPTNEG and CONNECT, output cleared."""
    proto, t = connect(factory)
    proto.dataReceived(start if start is not None else w.session_start())
    assert w.describe(t.value())[0][0] == "O"
    t.clear()
    return proto, t


HEADERS = [
    ("From", " Alice <alice@example.net>"),
    ("To", " bob@example.org"),
    ("Subject", " folded\n\tsecond line"),
    ("X-Empty", ""),
    ("X-Tight", "no-space"),
]
BODY = [b"line 1\r\n", b"line 2\r\n"]


def message(queue_id="4ABC123", sender="alice@example.net", recipients=("bob@example.org",), **kw):
    return w.message_events(queue_id, sender, list(recipients), kw.pop("headers", HEADERS), kw.pop("body", BODY), **kw)


# -- negotiation --------------------------------------------------------------------------


def test_negotiation_asks_for_few_events_and_no_replies(factory):
    proto, t = connect(factory)
    proto.dataReceived(w.optneg())
    ((command, version, actions, protocol, lists),) = w.describe(t.value())
    assert (command, version) == ("O", 6)
    assert actions == mc.SMFIF_ADDHDRS | mc.SMFIF_CHGHDRS | mc.SMFIF_QUARANTINE | mc.SMFIF_SETSYMLIST
    assert protocol == WANTED_PROTOCOL
    # every event we get is unanswered; DATA, EOH, UNKNOWN are not sent at all
    for flag in (mc.SMFIP_NR_CONN, mc.SMFIP_NR_HELO, mc.SMFIP_NR_MAIL, mc.SMFIP_NR_RCPT, mc.SMFIP_NR_HDR):
        assert protocol & flag
    for flag in (mc.SMFIP_NODATA, mc.SMFIP_NOEOH, mc.SMFIP_NOUNKNOWN, mc.SMFIP_HDR_LEADSPC):
        assert protocol & flag
    for flag in (mc.SMFIP_NOCONNECT, mc.SMFIP_NOHELO, mc.SMFIP_NOMAIL, mc.SMFIP_NORCPT, mc.SMFIP_NOHDRS):
        assert not protocol & flag
    assert lists == DEFAULT_MACROS
    assert "{auth_authen}" in lists[mc.STAGE_MAIL] and "{daemon_name}" in lists[mc.STAGE_CONNECT]


def test_negotiation_with_an_old_mta_gets_a_continue_per_event(handler, clock):
    factory = MilterFactory(handler, "milter", reactor=clock)
    proto, t = connect(factory)
    proto.dataReceived(w.optneg(version=2, actions=w.SENDMAIL_V2_ACTIONS, protocol=w.POSTFIX_V2_PROTOCOL))
    ((_, version, actions, protocol, lists),) = w.describe(t.value())
    assert (version, actions, lists) == (2, mc.SMFIF_ADDHDRS | mc.SMFIF_CHGHDRS | mc.SMFIF_QUARANTINE, {})
    assert protocol == mc.SMFIP_NOEOH  # the only one offered that we want
    t.clear()
    proto.dataReceived(w.connect() + w.helo() + w.mail("<a@b.example>") + w.rcpt("<c@d.example>"))
    proto.dataReceived(w.header("Subject", "hi") + w.body(b"x\r\n") + w.EOB)
    # one CONTINUE per event, one write per read; the header value lost its space: put back
    assert w.describe(t.value()) == [("c",)] * 6 + [("i", 0, "X-Test", "ok"), ("c",)]
    assert handler.calls[0][1].headers == [("Subject", " hi")]


def test_no_macro_lists_when_disabled(handler, clock):
    proto, t = connect(MilterFactory(handler, "milter", reactor=clock, macros=None))
    proto.dataReceived(w.optneg())
    ((_, _, actions, _, lists),) = w.describe(t.value())
    assert lists == {} and not actions & mc.SMFIF_SETSYMLIST


def test_mta_without_header_actions_is_refused(factory):
    proto, t = connect(factory)
    proto.dataReceived(w.optneg(actions=mc.SMFIF_ADDRCPT))
    assert w.describe(t.value()) == [("t",)]
    assert t.disconnecting


# -- one message ---------------------------------------------------------------------------


def test_full_transaction(factory, handler):
    proto, t = negotiated(factory)
    stream = message(auth="alice")
    proto.dataReceived(stream[: len(stream) // 2])
    assert t.value() == b""  # nothing to answer before end-of-message
    proto.dataReceived(stream[len(stream) // 2 :])
    ((envelope, msg),) = handler.calls
    assert envelope == Envelope(
        client_address="192.0.2.1",
        client_name="mail.example.net",
        helo="mail.example.net",
        mail_from="alice@example.net",
        recipients=["bob@example.org"],
        macros={
            **w.CONNECT_MACROS,
            "i": "4ABC123",
            "{mail_addr}": "alice@example.net",
            "{auth_type}": "PLAIN",
            "{auth_authen}": "alice",
            "{rcpt_addr}": "bob@example.org",
        },
    )
    assert envelope.queue_id == "4ABC123" and envelope.authenticated
    assert msg.headers == [
        ("From", " Alice <alice@example.net>"),
        ("To", " bob@example.org"),
        ("Subject", " folded\r\n\tsecond line"),
        ("X-Empty", ""),
        ("X-Tight", "no-space"),
    ]
    assert msg.body == b"line 1\r\nline 2\r\n"
    assert msg.as_bytes().startswith(b"From: Alice <alice@example.net>\r\nTo: bob@example.org\r\nSubject: folded\r\n\t")
    assert w.describe(t.value()) == [("i", 0, "X-Test", " ok"), ("c",)]
    assert not t.disconnecting


def test_reply_is_one_write(factory, handler):
    handler.actions = [InsertHeader(0, "ARC-Seal", " a"), InsertHeader(0, "ARC-Message-Signature", " b")]
    proto, t = negotiated(factory)
    writes = []
    proto._write = writes.append  # what connectionMade bound: the transport's write here
    proto.dataReceived(message())
    assert len(writes) == 1
    assert w.describe(writes[0]) == [
        ("i", 0, "ARC-Seal", " a"),
        ("i", 0, "ARC-Message-Signature", " b"),
        ("c",),
    ]


def test_actions_to_replies(factory, handler):
    handler.actions = [
        InsertHeader(0, "Authentication-Results", " mx.example.org;\r\n\tdkim=pass"),
        DeleteHeader("Authentication-Results", 1),
        DeleteHeader("authentication-results", 3),
        DeleteHeader("X-Other", 1),
        InsertHeader(2, "X-Two", " 2"),
    ]
    proto, t = negotiated(factory)
    proto.dataReceived(message())
    assert w.describe(t.value()) == [
        # deletions first, highest occurrence of each name first
        ("m", 3, "authentication-results", ""),
        ("m", 1, "Authentication-Results", ""),
        ("m", 1, "X-Other", ""),
        # folding with a bare LF on the milter wire
        ("i", 0, "Authentication-Results", " mx.example.org;\n\tdkim=pass"),
        ("i", 2, "X-Two", " 2"),
        ("c",),
    ]


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        (Reject("DMARC policy says reject"), "550 5.7.1 DMARC policy says reject"),
        (TempFail("key not loaded"), "451 4.3.0 key not loaded"),
        (Reject("100% bad\r\nreally", code="554", enhanced="5.7.0"), "554 5.7.0 100%% bad really"),
    ],
)
def test_refusals(factory, handler, action, reply):
    handler.actions = [InsertHeader(0, "X-Test", " dropped"), action, Reject("second, ignored")]
    proto, t = negotiated(factory)
    proto.dataReceived(message())
    assert w.describe(t.value()) == [("y", reply)]


def test_quarantine_comes_after_the_edits(factory, handler):
    handler.actions = [Quarantine("held per DMARC policy for example.com"), InsertHeader(0, "X-Test", " kept")]
    proto, t = negotiated(factory)
    proto.dataReceived(message())
    assert w.describe(t.value()) == [("i", 0, "X-Test", " kept"), ("q", "held per DMARC policy for example.com"),
                                     ("c",)]  # fmt: skip


def test_quarantine_without_the_mta_offering_it_passes_the_message(factory, handler):
    handler.actions = [InsertHeader(0, "X-Test", " kept"), Quarantine("held")]
    proto, t = negotiated(factory, w.optneg(actions=w.POSTFIX_ACTIONS & ~mc.SMFIF_QUARANTINE) + w.connect())
    with capturedLogs() as events:
        proto.dataReceived(message())
    assert w.describe(t.value()) == [("i", 0, "X-Test", " kept"), ("c",)]
    assert any("offered no quarantine action" in e["log_format"] for e in events)


def test_refusal_with_a_bad_code_still_refuses(factory, handler):
    handler.actions = [Reject("x", code="250", enhanced="2.0.0")]
    proto, t = negotiated(factory)
    proto.dataReceived(message())
    assert w.describe(t.value()) == [("r",)]


def test_no_actions_just_continue(factory, handler):
    handler.actions = []
    proto, t = negotiated(factory)
    proto.dataReceived(message())
    assert w.describe(t.value()) == [("c",)]


def test_eight_bit_data_survives(factory, handler):
    raw_subject = " caf\xc3\xa9 \xff".encode("latin-1")
    proto, t = negotiated(factory)
    proto.dataReceived(
        w.message_events("Q1", "j\u00f6rg@example.net", ["b@example.org"], [("Subject", raw_subject)], [b"\xff\r\n"])
    )
    envelope, msg = handler.calls[0]
    assert envelope.mail_from == "j\u00f6rg@example.net"
    assert msg.as_bytes() == b"Subject:" + raw_subject + b"\r\n\r\n\xff\r\n"


def test_null_sender_and_several_recipients(factory, handler):
    proto, t = negotiated(factory)
    proto.dataReceived(message(sender="", recipients=["a@x.example", "b@y.example"]))
    envelope, _ = handler.calls[0]
    assert (envelope.mail_from, envelope.recipients) == ("", ["a@x.example", "b@y.example"])


def test_empty_body(factory, handler):
    proto, t = negotiated(factory)
    proto.dataReceived(message(body=[]))
    assert handler.calls[0][1].body == b""
    assert w.describe(t.value())[-1] == ("c",)


# -- several messages, abort, quit ------------------------------------------------------------


def test_two_messages_on_one_connection(factory, handler):
    proto, t = negotiated(factory)
    proto.dataReceived(message("Q1", "a@one.example", ["r1@x.example"]))
    proto.dataReceived(w.ABORT)  # Postfix resets after every message
    proto.dataReceived(
        message("Q2", "b@two.example", ["r2@x.example"], helo_name=None, headers=[("Subject", " 2")], body=[b"2\r\n"])
    )
    (e1, m1), (e2, m2) = handler.calls
    assert (e1.queue_id, e1.mail_from, e1.recipients) == ("Q1", "a@one.example", ["r1@x.example"])
    assert (e2.queue_id, e2.mail_from, e2.recipients) == ("Q2", "b@two.example", ["r2@x.example"])
    assert (e2.client_address, e2.helo) == ("192.0.2.1", "mail.example.net")  # connection data kept
    assert e2.macros["j"] == "mx.example.org"
    assert (m2.headers, m2.body) == ([("Subject", " 2")], b"2\r\n")
    assert w.describe(t.value()) == [("i", 0, "X-Test", " ok"), ("c",)] * 2


def test_abort_drops_the_message_keeps_the_connection(factory, handler):
    proto, t = negotiated(factory)
    stream = message("Q1", "a@one.example", ["r1@x.example"])
    proto.dataReceived(stream[: stream.index(w.header("Subject", HEADERS[2][1]))])  # MAIL, RCPT, 2 headers
    proto.dataReceived(w.ABORT)
    proto.dataReceived(message("Q2", "b@two.example", ["r2@x.example"], helo_name=None, auth=""))
    ((envelope, msg),) = handler.calls
    assert (envelope.queue_id, envelope.mail_from, envelope.recipients) == ("Q2", "b@two.example", ["r2@x.example"])
    assert "{auth_authen}" not in envelope.macros
    assert msg.headers == [(n, v.replace("\n", "\r\n")) for n, v in HEADERS]
    assert envelope.helo == "mail.example.net"


def test_mail_without_abort_starts_over(factory, handler):
    proto, t = negotiated(factory)
    proto.dataReceived(w.mail("<first@x.example>") + w.rcpt("<r@x.example>"))
    proto.dataReceived(message("Q2", "second@x.example", ["r2@x.example"], helo_name=None))
    assert handler.calls[0][0].recipients == ["r2@x.example"]


def test_quit_closes(factory):
    proto, t = negotiated(factory)
    proto.dataReceived(w.QUIT)
    assert t.value() == b"" and t.disconnecting


def test_quit_nc_resets_for_a_new_connection(factory, handler):
    proto, t = negotiated(factory)
    proto.dataReceived(message("Q1"))
    proto.dataReceived(w.QUIT_NC + w.connect("other.example", "198.51.100.7") + message("Q2", helo_name=None))
    e2 = handler.calls[1][0]
    assert (e2.client_address, e2.client_name, e2.helo) == ("198.51.100.7", "other.example", "")
    assert "j" not in e2.macros
    assert not t.disconnecting


def test_unknown_family_and_unix_clients(factory, handler):
    proto, _ = negotiated(factory, w.optneg() + w.connect("localhost", family=b"U"))
    proto.dataReceived(message())
    assert (handler.calls[0][0].client_address, handler.calls[0][0].client_name) == ("", "localhost")


# -- errors in the handler ----------------------------------------------------------------------


@pytest.mark.parametrize(("on_error", "reply"), [("tempfail", [("t",)]), ("continue", [("c",)])])
@pytest.mark.parametrize("mode", ["raise", "fail"])
def test_handler_errors_answer_per_on_error(clock, mode, on_error, reply):
    handler = Handler(mode=mode)
    proto, t = negotiated(MilterFactory(handler, "milter", reactor=clock, on_error=on_error))
    with capturedLogs() as events:
        proto.dataReceived(message())
    assert w.describe(t.value()) == reply
    assert any(e.get("log_failure") is not None and "handler failed" in e["log_format"] for e in events)
    assert not t.disconnecting
    t.clear()
    handler.mode = "list"  # the connection goes on
    proto.dataReceived(w.ABORT + message("Q2", helo_name=None))
    assert w.describe(t.value()) == [("i", 0, "X-Test", " ok"), ("c",)]


def test_unusable_actions_answer_per_on_error(factory, handler):
    handler.actions = [InsertHeader(0, "Bad Name", " x")]
    proto, t = negotiated(factory)
    with capturedLogs() as events:
        proto.dataReceived(message())
    assert w.describe(t.value()) == [("t",)]
    assert any("unusable actions" in e["log_format"] for e in events)
    handler.actions = ["not an action"]
    t.clear()
    proto.dataReceived(message("Q2", helo_name=None))
    assert w.describe(t.value()) == [("t",)]


def test_deferred_answer_is_written_when_it_comes(factory, handler):
    handler.mode = "later"
    proto, t = negotiated(factory)
    proto.dataReceived(message())
    assert t.value() == b""
    handler.pending[0].callback([DeleteHeader("X-Old", 1)])
    assert w.describe(t.value()) == [("m", 1, "X-Old", ""), ("c",)]


def test_already_fired_deferred_answers_in_the_same_write(handler, clock):
    handler.mode = "succeed"
    factory = MilterFactory(handler, "milter", reactor=clock)
    proto, t = negotiated(factory, w.optneg(protocol=w.POSTFIX_V2_PROTOCOL) + w.connect())
    writes = []
    proto._write = writes.append  # what connectionMade bound: the transport's write here
    proto.dataReceived(w.mail("<a@b.example>") + w.header("Subject", "x") + w.EOB)
    assert [w.describe(x) for x in writes] == [[("c",), ("c",), ("i", 0, "X-Test", "ok"), ("c",)]]
    assert not clock.getDelayedCalls()  # the timeout was cancelled


@pytest.mark.parametrize(("on_error", "reply"), [("tempfail", [("t",)]), ("continue", [("c",)])])
def test_slow_handler_times_out(clock, on_error, reply):
    handler = Handler(mode="later")
    proto, t = negotiated(MilterFactory(handler, "milter", reactor=clock, on_error=on_error, timeout=30))
    proto.dataReceived(message())
    clock.advance(29)
    assert t.value() == b""
    with capturedLogs() as events:
        clock.advance(1)
    assert w.describe(t.value()) == reply
    assert any(e["log_level"] == LogLevel.error and "longer than" in e["log_format"] for e in events)
    # The late answer is dropped (the Deferred was cancelled; firing it is ignored).
    handler.pending[0].callback([InsertHeader(0, "X-Late", " 1")])
    assert w.describe(t.value()) == reply
    # and the connection serves the next message
    t.clear()
    proto.dataReceived(w.ABORT + message("Q2", helo_name=None))
    handler.pending[1].callback([])
    assert w.describe(t.value()) == [("c",)]


def test_disconnect_while_pending_cancels(factory, handler):
    handler.mode = "later"
    handler.canceller = handler.cancelled.append
    proto, t = negotiated(factory)
    proto.dataReceived(message())
    proto.connectionLost(None)
    assert handler.cancelled == handler.pending and proto not in factory.connections
    assert t.value() == b""


def test_oversize_message_is_not_handled(handler, clock):
    factory = MilterFactory(handler, "milter", reactor=clock, max_message_bytes=100, on_error="continue")
    proto, t = negotiated(factory)
    with capturedLogs() as events:
        proto.dataReceived(message(body=[b"x" * 60 + b"\r\n", b"y" * 60 + b"\r\n"]))
    assert handler.calls == []
    assert w.describe(t.value()) == [("c",)]
    assert any("max_message_bytes" in e["log_format"] for e in events)
    t.clear()
    proto.dataReceived(message("Q2", helo_name=None, body=[b"small\r\n"], headers=[("Subject", " s")]))
    assert handler.calls[0][1].body == b"small\r\n"


# -- malformed streams --------------------------------------------------------------------


def _err(factory, stream):
    proto, t = connect(factory)
    with capturedLogs() as events:
        proto.dataReceived(stream)
    return proto, t, events


MALFORMED = {
    "zero length": w.optneg() + b"\0\0\0\0" + w.connect(),
    "unknown command": w.optneg() + w.pkt(b"Z", b"x"),
    "reply code as command": w.optneg() + w.pkt(b"c"),
    "over-long packet": w.optneg() + struct.pack("!I", 70000) + b"H",
    "over-long body chunk": w.session_start() + w.mail("<a@b>") + struct.pack("!I", 65537) + b"B",
    "over-long header": w.session_start() + w.mail("<a@b>") + struct.pack("!I", mc.MAX_HEADER_PACKET + 2) + b"L",
    "header without NUL": w.session_start() + w.mail("<a@b>") + w.pkt(b"L", b"Subject\0hi"),
    "header with 3 strings": w.session_start() + w.mail("<a@b>") + w.pkt(b"L", b"a\0b\0c\0"),
    "connect without family": w.optneg() + w.pkt(b"C", b"host\0"),
    "connect bad family": w.optneg() + w.pkt(b"C", b"host\0X\0\0" + b"1.2.3.4\0"),
    "short optneg": w.pkt(b"O", b"\0\0\0\6"),
    "macro without value": w.optneg() + w.pkt(b"D", b"Mi\0"),
    "abort with payload": w.optneg() + w.pkt(b"A", b"x"),
    "before optneg": w.connect(),
    "second optneg": w.optneg() + w.optneg(),
    "second connect": w.session_start() + w.connect(),
    "mail before connect": w.optneg() + w.mail("<a@b>"),
    "rcpt before mail": w.session_start() + w.rcpt("<a@b>"),
    "header before mail": w.session_start() + w.header("Subject", "x"),
    "eob before mail": w.session_start() + w.EOB,
    "rcpt after header": w.session_start() + w.mail("<a@b>") + w.header("S", "x") + w.rcpt("<c@d>"),
    "header after body": w.session_start() + w.mail("<a@b>") + w.body(b"x") + w.header("S", "x"),
    "mail inside a message": w.session_start() + w.mail("<a@b>") + w.body(b"x") + w.mail("<c@d>"),
    "old mta version": w.optneg(version=1),
}


@pytest.mark.parametrize("stream", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_stream_tempfails_and_closes(factory, handler, stream):
    other, other_t = negotiated(factory)
    proto, t, events = _err(factory, stream)
    out = w.describe(t.value())
    assert out[-1] == ("t",) and all(r[0] == "O" for r in out[:-1])
    assert t.disconnecting
    assert any(e["log_level"] == LogLevel.warn and "protocol error" in e["log_format"] for e in events)
    assert not any(e.get("log_failure") for e in events)
    proto.dataReceived(w.EOB)  # ignored after the error
    assert w.describe(t.value())[-1] == ("t",) and len(w.describe(t.value())) == len(out)
    proto.connectionLost(None)
    # the other connection is unaffected
    other.dataReceived(message())
    assert w.describe(other_t.value())[-1] == ("c",)
    assert handler.calls and proto not in factory.connections


def test_command_while_pending_is_an_error(factory, handler):
    handler.mode = "later"
    proto, t = negotiated(factory)
    proto.dataReceived(message())
    proto.dataReceived(w.ABORT)
    assert w.describe(t.value()) == [("t",)] and t.disconnecting
    handler.pending[0].callback([])  # cancelled: ignored
    assert w.describe(t.value()) == [("t",)]


def test_replies_before_the_error_are_kept(handler, clock):
    proto, t = connect(MilterFactory(handler, "milter", reactor=clock))
    proto.dataReceived(w.optneg(protocol=w.POSTFIX_V2_PROTOCOL) + w.connect() + w.rcpt("<a@b>"))
    assert [r[0] for r in w.describe(t.value())] == ["O", "c", "t"]


# -- framing: partial reads ------------------------------------------------------------------


def _run(factory, chunks):
    proto, t = connect(factory)
    writes = []
    proto._write = writes.append  # what connectionMade bound: the transport's write here
    for chunk in chunks:
        proto.dataReceived(chunk)
    return writes


def test_byte_by_byte_equals_all_at_once(clock):
    stream = w.session_start() + message("Q1") + w.ABORT + message("Q2", helo_name=None) + w.QUIT
    h1, h2 = Handler(), Handler()
    whole = _run(MilterFactory(h1, "m", reactor=clock), [stream])
    split = _run(MilterFactory(h2, "m", reactor=clock), [stream[i : i + 1] for i in range(len(stream))])
    assert b"".join(whole) == b"".join(split)
    assert h1.calls == h2.calls and len(h2.calls) == 2
    assert len(split) == 3  # OPTNEG reply, then one write per end-of-message


def test_large_body_in_postfix_chunks(factory, handler):
    chunks = [b"a" * 65535, b"b" * 65535, b"c" * 100]
    proto, t = negotiated(factory)
    stream = message(body=chunks)
    for i in range(0, len(stream), 4096):
        proto.dataReceived(stream[i : i + 4096])
    assert handler.calls[0][1].body == b"".join(chunks)


# -- connections -------------------------------------------------------------------------------


def test_connection_limit(factory):
    conns = [connect(factory) for _ in range(3)]
    proto, t = connect(factory)
    assert w.describe(t.value()) == [("t",)] and t.disconnecting
    proto.dataReceived(w.optneg())  # nothing more
    assert w.describe(t.value()) == [("t",)]
    proto.connectionLost(None)
    conns[0][0].connectionLost(None)
    proto, t = connect(factory)
    proto.dataReceived(w.optneg())
    assert w.describe(t.value())[0][0] == "O"


@implementer(ITCPTransport)
class TCPTransport(StringTransport):
    nodelay = False

    def setTcpNoDelay(self, enabled):  # noqa: N802
        self.nodelay = enabled


def test_tcp_nodelay(factory):
    proto = factory.buildProtocol(None)
    transport = TCPTransport()
    proto.makeConnection(transport)
    assert transport.nodelay


def test_idle_connection_closed(factory):
    proto, t = negotiated(factory)
    factory.idle_timeout = 10
    proto.last_active -= 11
    factory.close_idle()
    assert t.disconnecting


def test_bad_on_error_is_refused(handler):
    with pytest.raises(ValueError, match="on_error"):
        MilterFactory(handler, "milter", on_error="accept")


def test_on_error_follows_a_function(clock):
    setting = {"on_error": "tempfail"}
    handler = Handler(mode="raise")
    proto, t = negotiated(MilterFactory(handler, "milter", reactor=clock, on_error=lambda: setting["on_error"]))
    proto.dataReceived(message())
    setting["on_error"] = "continue"  # a reload
    proto.dataReceived(w.ABORT + message("Q2", helo_name=None))
    assert w.describe(t.value()) == [("t",), ("c",)]


def test_internal_error_tempfails_and_closes(factory, monkeypatch):
    proto, t = negotiated(factory)
    monkeypatch.setattr(proto, "_message_event", lambda *a: 1 / 0)
    with capturedLogs() as events:
        proto.dataReceived(w.mail("<a@b.example>"))
    assert w.describe(t.value()) == [("t",)] and t.disconnecting
    assert any(e.get("log_failure") is not None and "internal error" in e["log_format"] for e in events)
