"""socketmap adapter through StringTransport (no sockets)."""

import pytest

from srsd.protocols.socketmap import SocketmapFactory, netstring
from tests.protocols.conftest import connect


@pytest.fixture
def factory(lookups):
    return SocketmapFactory(lookups, "socketmap", max_request_bytes=256)


def ns(text):
    return netstring(text.encode())


def test_forward_reverse_notfound(factory, lookups):
    proto, t = connect(factory)
    proto.dataReceived(ns("forward a@b.example") + ns("reverse c@d.example") + ns("forward local"))
    assert t.value() == ns("OK FORWARD(a@b.example)") + ns("OK REVERSE(c@d.example)") + ns("NOTFOUND ")
    assert lookups.calls[-1] == ("forward", "local")


def test_null_sender_key(factory, lookups):
    proto, t = connect(factory)
    proto.dataReceived(ns("forward "))
    assert lookups.calls == [("forward", "")]
    assert t.value() == ns("NOTFOUND ")


def test_temp(factory):
    proto, t = connect(factory)
    proto.dataReceived(ns("forward temp@x"))
    assert t.value() == ns("TEMP dns down")


def test_byte_at_a_time(factory):
    proto, t = connect(factory)
    for b in ns("forward a@b.example"):
        proto.dataReceived(bytes([b]))
    assert t.value() == ns("OK FORWARD(a@b.example)")


def test_unknown_map_is_perm_in_frame(factory):
    proto, t = connect(factory)
    proto.dataReceived(ns("virtual a@b.example") + ns("forward a@b.example"))
    first = t.value()
    assert first.startswith(b"") and b"PERM unknown map name" in first
    assert first.endswith(ns("OK FORWARD(a@b.example)"))
    assert not t.disconnecting


def test_oversize_request_is_notfound_and_stream_continues(factory, lookups):
    proto, t = connect(factory)
    big = b"forward " + b"x" * 1000
    wire = netstring(big) + ns("forward a@b.example")
    proto.dataReceived(wire[:100])
    proto.dataReceived(wire[100:700])
    proto.dataReceived(wire[700:])
    assert t.value() == ns("NOTFOUND ") + ns("OK FORWARD(a@b.example)")
    assert lookups.calls == [("forward", "a@b.example")]


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\n", b"12345678901:x", b"5:forwardX", b"\x00\x01\x02:"])
def test_framing_errors_perm_and_close(factory, junk):
    proto, t = connect(factory)
    proto.dataReceived(junk)
    assert t.value().startswith(b"") and b"PERM " in t.value()
    assert t.disconnecting


def test_partial_length_waits(factory):
    proto, t = connect(factory)
    proto.dataReceived(b"2")
    assert t.value() == b"" and not t.disconnecting
    proto.dataReceived(b"1:forward a@b.example12,")
    assert t.value() == ns("OK FORWARD(a@b.example12)")


def test_lookup_exception_is_temp(factory):
    proto, t = connect(factory)
    proto.dataReceived(ns("forward boom"))
    assert t.value() == ns("TEMP internal error")
