"""tcp_table(5) adapter through StringTransport (no sockets)."""

import pytest

from srsd.protocols.tcp_table import TcpTableFactory, quote, unquote
from srsd.rewrite import FOUND, Answer
from tests.protocols.conftest import connect


@pytest.fixture
def factory(lookups):
    return TcpTableFactory(lookups, "tcp_forward", "forward", max_request_bytes=256, max_connections=2)


def test_found_and_not_found(factory, lookups):
    proto, t = connect(factory)
    proto.dataReceived(b"get a@b.example\nget local\n")
    assert t.value() == b"200 FORWARD(a@b.example)\n500 no\n"
    assert lookups.calls == [("forward", "a@b.example"), ("forward", "local")]


@pytest.mark.parametrize(
    ("received", "reply"),
    [
        pytest.param(b"get temp@x\n", b"400 dns%20down\n", id="temp_is_400"),
        pytest.param(b"get a@b.example\r\n", b"200 FORWARD(a@b.example)\n", id="crlf_tolerated"),
        pytest.param(
            b"get " + b"x" * 300 + b"\nget a@b.example\n",
            b"500 request%20longer%20than%20256%20bytes\n200 FORWARD(a@b.example)\n",
            id="oversize_complete_line",
        ),
        pytest.param(
            b"get boom\nget a@b.example\n",
            b"400 internal%20error\n200 FORWARD(a@b.example)\n",
            id="lookup_exception_is_temporary",
        ),
    ],
)
def test_reply(factory, received, reply):
    proto, t = connect(factory)
    proto.dataReceived(received)
    assert t.value() == reply


def test_key_and_value_are_percent_coded(factory, lookups):
    proto, t = connect(factory)
    proto.dataReceived(b"get %22a%20b%22@x%25y\n")
    assert lookups.calls == [("forward", '"a b"@x%y')]
    assert t.value() == b'200 FORWARD("a%20b"@x%25y)\n'


def test_request_split_across_reads(factory):
    proto, t = connect(factory)
    for chunk in (b"ge", b"t a@", b"b.example", b"\nget c@d.e", b"xample\n"):
        proto.dataReceived(chunk)
    assert t.value() == b"200 FORWARD(a@b.example)\n200 FORWARD(c@d.example)\n"


@pytest.mark.parametrize(
    ("request_line", "reply"),
    [
        (b"put a@b.example x\n", b"500 unsupported"),
        (b"GET a@b.example\n", b"500 unsupported"),
        (b"\n", b"500 unsupported"),
        (b"get a%zz@b\n", b"500 malformed"),
        (b"get a%4\n", b"500 malformed"),
        (b"\x00\xff\xfe junk\n", b"500 unsupported"),
    ],
)
def test_bad_requests_get_500_and_connection_stays(factory, request_line, reply):
    proto, t = connect(factory)
    proto.dataReceived(request_line + b"get a@b.example\n")
    first, second = t.value().split(b"\n")[:2]
    assert first.startswith(reply)
    assert second == b"200 FORWARD(a@b.example)"
    assert not t.disconnecting


def test_oversize_line_answered_once_then_resync(factory, lookups):
    proto, t = connect(factory)
    proto.dataReceived(b"get " + b"x" * 300)  # over 256 without a newline yet
    proto.dataReceived(b"y" * 1000)
    proto.dataReceived(b"z\nget a@b.example\n")
    assert t.value() == b"500 request%20longer%20than%20256%20bytes\n200 FORWARD(a@b.example)\n"
    assert lookups.calls == [("forward", "a@b.example")]


def test_deferred_answers_keep_request_order(factory, lookups):
    proto, t = connect(factory)
    proto.dataReceived(b"get slow:1\nget a@b.example\n")
    assert t.value() == b""  # the fast answer waits behind the slow one
    proto.dataReceived(b"get c@d.example\n")
    lookups.pending["slow:1"].callback(Answer(FOUND, "x@y"))
    assert t.value() == b"200 x@y\n200 FORWARD(a@b.example)\n200 FORWARD(c@d.example)\n"
    proto.dataReceived(b"get e@f.example\n")
    assert t.value().endswith(b"200 FORWARD(e@f.example)\n")


def test_deferred_failure_is_temporary(factory, lookups):
    proto, t = connect(factory)
    proto.dataReceived(b"get slow:2\n")
    lookups.pending["slow:2"].errback(RuntimeError("resolver crashed"))
    assert t.value() == b"400 internal%20error\n"


def test_connection_limit(factory):
    a, _ = connect(factory)
    b, _ = connect(factory)
    c, tc = connect(factory)
    c.dataReceived(b"get a@b.example\n")
    assert tc.value().startswith(b"400 ")
    assert tc.disconnecting
    c.connectionLost(None)  # StringTransport does not report the close itself
    a.connectionLost(None)
    d, td = connect(factory)
    d.dataReceived(b"get a@b.example\n")
    assert td.value() == b"200 FORWARD(a@b.example)\n"


def test_idle_clients_closed(factory):
    proto, t = connect(factory)
    factory.idle_timeout = 10
    proto.last_active -= 11
    factory.close_idle()
    assert t.disconnecting


@pytest.mark.parametrize("raw", [b"plain@x", b"a b", b"100%", b"\x00\x7f\xff", "ü".encode()])
def test_quote_round_trip(raw):
    assert unquote(quote(raw)) == raw
    assert not any(c <= 0x20 or c >= 0x7F for c in quote(raw))
