"""Fuzz target: the milter protocol as Postfix speaks it (:mod:`srsd.protocols.milter_codec`,
:mod:`srsd.protocols.milter`): packet framing, each command's payload (macros included)
and the adapter's state machine, with a recording handler.

Input: the MTA's side of a session, e.g. OPTNEG, ``D`` macros, CONNECT, HELO, MAIL, RCPT,
header fields, body, end-of-message (the seeds are Postfix 3.7 sessions).

Invariants:

* framing, against a reference model (4-byte length counting the command byte, a command
  letter, per-command limits): the decoder raises only BadPacketLength, UnknownCommand or
  PacketTooLong, exactly when the model says the stream breaks; otherwise it returns the
  model's packets in any chunking, holds the rest, and the packets re-encode to the bytes
  they came from; on a break, what it returned before is a prefix of the model's packets;
* ``decode_command`` returns its command's value or raises MalformedPacket; every value
  re-encodes to its payload (NUL-terminated strings, port, OPTNEG words), macros have
  Sendmail's names in braces;
* the adapter logs no failure, writes only well-formed replies (``tests.protocols.milter_wire``,
  the MTA side written without srsd's codec), ends an error with one TEMPFAIL and a close
  (a message over the size limit is answered TEMPFAIL, the session going on),
  hands the handler header values with CRLF folding only, and -- when framing holds --
  writes the same replies and hands over the same messages in every chunking.
"""

from __future__ import annotations

import struct

from twisted.internet.task import Clock

from fuzz.harness import chunkings, expect, feed, instrumented, main
from tests.protocols import milter_wire

with instrumented(__name__):
    from srsd.mailauth.message import Action, DeleteHeader, Envelope, InsertHeader, Message
    from srsd.protocols import milter_codec as mc
    from srsd.protocols.milter import MilterFactory

__all__ = ["LIMITS", "test_one_input"]

#: PacketDecoder / MilterFactory limits: small, so every one is reachable
MAX_PACKET, MAX_HEADER, MAX_BODY, MAX_MESSAGE = 512, 1024, 2048, 2048
LIMITS = {mc.HEADER: MAX_HEADER, mc.BODY: MAX_BODY, mc.BODYEOB: MAX_BODY}
_FRAMING_ERRORS = (mc.BadPacketLength, mc.UnknownCommand, mc.PacketTooLong)

#: (packets, broken, bytes left unframed)
Framing = tuple[list[tuple[str, bytes]], bool, int]


def _model(data: bytes) -> Framing:
    packets = []
    pos = 0
    while len(data) - pos >= 5:
        (length,) = struct.unpack_from("!I", data, pos)
        command = chr(data[pos + 4])
        if length < 1 or command not in mc.COMMANDS or length - 1 > LIMITS.get(command, MAX_PACKET):
            return packets, True, 0
        if len(data) - pos < 4 + length:
            break
        packets.append((command, data[pos + 5 : pos + 4 + length]))
        pos += 4 + length
    return packets, False, len(data) - pos


def _framing(chunks: list[bytes]) -> Framing:
    decoder = mc.PacketDecoder(MAX_PACKET, MAX_HEADER, MAX_BODY)
    packets: list[tuple[str, bytes]] = []
    for chunk in chunks:
        try:
            packets += decoder.feed(chunk)
        except _FRAMING_ERRORS:
            try:
                decoder.feed(b"")
            except _FRAMING_ERRORS:
                return packets, True, 0
            raise AssertionError("a spent decoder took more input", chunks) from None
    return packets, False, decoder.buffered


def _cstrings(*parts: str) -> bytes:
    return b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in parts)


def _encoded(value: mc.Command, payload: bytes) -> bytes:
    """*value* back in its command's wire form (*payload*: what the value leaves out)."""
    if isinstance(value, mc.Body | mc.EndOfMessage):
        return value.data
    if isinstance(value, mc.Header):
        return _cstrings(value.name, value.value)
    if isinstance(value, mc.Mail | mc.Rcpt):
        return _cstrings(*value.args)
    if isinstance(value, mc.Helo):
        return _cstrings(value.name)
    if isinstance(value, mc.Simple):
        return b""
    if isinstance(value, mc.OptNeg):
        return struct.pack("!III", value.version, value.actions, value.protocol) + payload[12:]
    if isinstance(value, mc.Connect):
        if value.family == "U":
            return _cstrings(value.hostname) + b"U" + payload[payload.index(b"\0") + 2 :]
        port = struct.pack("!H", value.port)
        return _cstrings(value.hostname) + value.family.encode() + port + _cstrings(value.address)
    raise AssertionError("no wire form for", value)


def _check_command(command: str, payload: bytes) -> None:
    try:
        value = mc.decode_command(command, payload)
    except mc.MalformedPacket:
        return
    if isinstance(value, mc.Macros):
        expect(len(value.stage) == 1 and ord(value.stage) == payload[0], "macro stage", payload, value)
        for name, text in value.values.items():
            expect(type(text) is str and (len(name) <= 1 or name.startswith("{")), "macro name", payload, name)
        return
    if isinstance(value, mc.Unknown):
        body = payload[:-1] if payload.endswith(b"\0") else payload
        expect(value.command.encode("utf-8", "surrogateescape") == body, "UNKNOWN text", payload, value)
        return
    expect(_encoded(value, payload) == payload, "value does not re-encode to its payload", command, payload, value)


Call = tuple[Envelope, Message]


class _Recorder:
    """The milter's handler: records each message, asks for two header edits."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def end_of_message(self, envelope: Envelope, message: Message) -> list[Action]:
        self.calls.append((envelope, message))
        for name, value in message.headers:
            expect(name and "\n" not in value.replace("\r\n", ""), "header handed over with a bare LF", name, value)
        return [InsertHeader(0, "X-Fuzz", f" {len(self.calls)}"), DeleteHeader("X-Old", 1)]


def _session(chunks: list[bytes]) -> tuple[bytes, bool, list[Call]]:
    handler = _Recorder()
    factory = MilterFactory(handler, "fuzz_milter", reactor=Clock(), max_message_bytes=MAX_MESSAGE,
                            max_packet_bytes=MAX_PACKET, max_header_bytes=MAX_HEADER)  # fmt: skip
    too_large_before = factory.stats.errors.get("too_large", 0)  # the endpoint's counts outlive a factory
    out, closed = feed(factory, chunks)
    replies = milter_wire.describe(out)  # fails on a malformed reply
    expect(all(r[0] in "Ocitmy" for r in replies), "unexpected reply", replies)
    tempfails = [r[0] for r in replies].count("t")
    # A message over max_message_bytes is answered TEMPFAIL and the session goes on
    # (on_error = "tempfail"); any other TEMPFAIL is the last word before the close.
    too_large = factory.stats.errors.get("too_large", 0) - too_large_before
    if tempfails > too_large:
        expect(replies[-1] == ("t",) and closed, "TEMPFAIL is not the last word", replies)
        expect(tempfails == too_large + 1, "more than one closing TEMPFAIL", replies, too_large)
    else:
        expect(tempfails == too_large, "an oversize message not answered TEMPFAIL", replies, too_large)
    expect(not factory.connections, "connection still counted after it closed")
    return out, closed, handler.calls


def test_one_input(data: bytes) -> None:
    """*data* as an MTA's packet stream: framing, each command, then a whole session.

    :raises AssertionError: an invariant of the module docstring broke.
    """
    packets, broken, left = _model(data)
    if not broken:
        framed = b"".join(mc.encode_packet(c, p) for c, p in packets)
        expect(framed == data[: len(data) - left], "packets do not re-encode to the stream", data)
    for command, payload in packets:
        _check_command(command, payload)
    ways = chunkings(data)
    for chunks in ways:
        got = _framing(chunks)
        if broken:
            expect(got[1] and got[0] == packets[: len(got[0])], "framing error not as modelled", chunks, got)
        else:
            expect(got == (packets, False, left), "framing differs from the milter model", chunks, got)
    whole = _session([data])
    for chunks in ways[1:]:
        split = _session(chunks)
        if not broken:
            expect(split == whole, "the session depends on how the stream was cut", chunks, split, whole)


if __name__ == "__main__":
    main(test_one_input)
