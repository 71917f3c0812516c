"""srsd.milter_codec: framing, command payloads and replies, byte for byte."""

from __future__ import annotations

import struct

import pytest

from srsd.protocols import milter_codec as mc
from tests.protocols import milter_wire as w


def test_decoder_partial_reads():
    stream = w.optneg() + w.connect() + w.body(b"x" * 1000) + w.QUIT
    decoder = mc.PacketDecoder()
    packets = []
    for i in range(len(stream)):
        packets += decoder.feed(stream[i : i + 1])
    assert [c for c, _ in packets] == ["O", "C", "B", "Q"]
    assert packets[2][1] == b"x" * 1000
    assert decoder.buffered == 0


def test_decoder_many_in_one_read():
    decoder = mc.PacketDecoder()
    assert decoder.feed(w.ABORT * 3 + w.QUIT[:3]) == [("A", b"")] * 3
    assert decoder.buffered == 3
    assert decoder.feed(w.QUIT[3:]) == [("Q", b"")]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\0\0\0\0X", mc.BadPacketLength),
        (w.pkt(b"z"), mc.UnknownCommand),
        (struct.pack("!I", mc.MAX_PACKET + 2) + b"C", mc.PacketTooLong),
        (struct.pack("!I", mc.MAX_BODY_CHUNK + 2) + b"B", mc.PacketTooLong),
        (struct.pack("!I", mc.MAX_HEADER_PACKET + 2) + b"L", mc.PacketTooLong),
        (struct.pack("!I", 0xFFFFFFFF) + b"B", mc.PacketTooLong),
    ],
)
def test_decoder_errors_are_raised_at_the_head(data, error):
    decoder = mc.PacketDecoder()
    with pytest.raises(error):
        decoder.feed(data)  # no payload needed to know
    with pytest.raises(error):
        decoder.feed(w.QUIT)  # the decoder stays spent


def test_decoder_limits_at_the_edge():
    assert mc.PacketDecoder().feed(w.body(b"b" * 65535)) == [("B", b"b" * 65535)]
    value = b"v" * (mc.MAX_HEADER_PACKET - 4)
    assert mc.PacketDecoder().feed(w.header("To", value)) == [("L", b"To\0" + value + b"\0")]
    small = mc.PacketDecoder(max_packet=10, max_header=20, max_body=30)
    with pytest.raises(mc.PacketTooLong):
        small.feed(w.helo("h" * 10))  # 11 bytes with its NUL


@pytest.mark.parametrize(
    ("packet", "value"),
    [
        (w.optneg(), mc.OptNeg(6, 0x1FF, 0x1FFFFF)),
        (
            w.macros(b"M", {"i": "Q1", "{auth_authen}": "j\u00f6rg"}),
            mc.Macros("M", {"i": "Q1", "{auth_authen}": "j\u00f6rg"}),
        ),
        (w.macros(b"C", {"daemon_name": "x"}), mc.Macros("C", {"{daemon_name}": "x"})),
        (w.pkt(b"D", b"N"), mc.Macros("N", {})),
        (w.connect(), mc.Connect("mail.example.net", "4", 41234, "192.0.2.1")),
        (
            w.connect("[2001:db8::1]", "2001:db8::1", family=b"6"),
            mc.Connect("[2001:db8::1]", "6", 41234, "2001:db8::1"),
        ),
        (w.connect("localhost", family=b"U"), mc.Connect("localhost", "U", 0, "")),
        (w.helo("xn--zz.example"), mc.Helo("xn--zz.example")),  # kept as sent, never IDNA-decoded
        (w.mail("<a@b.example>", "SIZE=10"), mc.Mail(("<a@b.example>", "SIZE=10"))),
        (w.rcpt("<>"), mc.Rcpt(("<>",))),
        (w.header("Subject", " hi\n\tthere"), mc.Header("Subject", " hi\n\tthere")),
        (w.header("X-Empty", ""), mc.Header("X-Empty", "")),
        (w.body(b"\0\xff\r\n"), mc.Body(b"\0\xff\r\n")),
        (w.EOB, mc.EndOfMessage(b"")),
        (w.QUIT_NC, mc.Simple("K")),
        (w.pkt(b"U", b"XFOO bar\0"), mc.Unknown("XFOO bar")),
    ],
)
def test_decode_command(packet, value):
    ((command, payload),) = mc.PacketDecoder().feed(packet)
    assert mc.decode_command(command, payload) == value


def test_decoded_text_round_trips_any_byte():
    ((command, payload),) = mc.PacketDecoder().feed(w.header(b"X-Raw", b"\xff\xfe caf\xc3\xa9"))
    header = mc.decode_command(command, payload)
    assert header.value.encode("utf-8", "surrogateescape") == b"\xff\xfe caf\xc3\xa9"


@pytest.mark.parametrize(
    ("command", "payload"),
    [
        ("L", b"Subject\0hi"),
        ("L", b"\0value\0"),
        ("H", b"a\0b\0"),
        ("C", b"host"),
        ("C", b"host\0" + b"4" + b"\0"),
        ("O", b"\0\0\0\6"),
        ("D", b""),
        ("D", b"Mi\0Q1\0j\0"),
        ("N", b"x"),
        ("M", b""),
    ],
)
def test_malformed_payloads(command, payload):
    with pytest.raises(mc.MalformedPacket):
        mc.decode_command(command, payload)


def test_replies():
    assert mc.CONTINUE == b"\0\0\0\x01c"
    assert mc.TEMPFAIL == b"\0\0\0\x01t"
    assert mc.encode_optneg(6, 0x111, 0x40, {5: "i", 0: "j {daemon_name}"}) == w.pkt(
        b"O", struct.pack("!III", 6, 0x111, 0x40) + b"\0\0\0\0j {daemon_name}\0" + b"\0\0\0\x05i\0"
    )
    assert mc.encode_insert_header(0, "X-A", " v\r\n\tw") == w.pkt(b"i", b"\0\0\0\0X-A\0 v\n\tw\0")
    assert mc.encode_insert_header(1, "X-A", " v", leading_space=False) == w.pkt(b"i", b"\0\0\0\x01X-A\0v\0")
    assert mc.encode_change_header(2, "X-A", "") == w.pkt(b"m", b"\0\0\0\x02X-A\0\0")
    assert mc.encode_add_header("X-A", " v") == w.pkt(b"h", b"X-A\0 v\0")
    assert mc.encode_reply_code("550", "5.7.1", "no\r\n100%") == w.pkt(b"y", b"550 5.7.1 no 100%%\0")
    assert mc.encode_quarantine("held per DMARC\r\npolicy") == w.pkt(b"q", b"held per DMARC policy\0")


@pytest.mark.parametrize(
    "call",
    [
        lambda: mc.encode_insert_header(-1, "X", "v"),
        lambda: mc.encode_insert_header(0, "Bad Name", "v"),
        lambda: mc.encode_insert_header(0, "X:Y", "v"),
        lambda: mc.encode_insert_header(0, "", "v"),
        lambda: mc.encode_insert_header(0, "X", "a\0b"),
        lambda: mc.encode_change_header(0, "X", ""),
        lambda: mc.encode_reply_code("250", "2.0.0", "ok"),
        lambda: mc.encode_reply_code("550", "4.7.1", "mixed"),
        lambda: mc.encode_reply_code("55", "5.7.1", "short"),
        lambda: mc.encode_quarantine(" \r\n"),  # libmilter refuses an empty reason too
    ],
)
def test_bad_replies_are_refused(call):
    with pytest.raises(ValueError):
        call()
