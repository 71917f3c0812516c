"""The Sendmail milter protocol, version 6, as Postfix speaks it: framing, the
MTA's commands, and the replies srsd sends. Pure: bytes in, values out; no I/O.

Every packet is a 4-byte length (network order, counting the command byte), one
command byte and ``length - 1`` bytes of payload; strings in a payload end in NUL.
:class:`PacketDecoder` cuts a byte stream into packets under explicit size limits,
:func:`decode_command` turns one packet into a command value, and the ``encode_*``
functions and constants build the filter's replies.

Text is decoded as UTF-8 with ``surrogateescape``: any byte survives the round trip
back to the wire (:meth:`srsd.mailauth.message.Message.as_bytes` encodes the same way).
Nothing is IDNA-decoded or otherwise rewritten.

Sources: Postfix 3.7 ``src/milter/milter8.c`` (the MTA side we talk to) and
Sendmail's ``libmilter/mfdef.h``; see docs/milter.md.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "MilterProtocolError",
    "BadPacketLength",
    "PacketTooLong",
    "UnknownCommand",
    "MalformedPacket",
    "UnexpectedCommand",
    "NegotiationFailed",
    "PacketDecoder",
    "decode_command",
    "encode_packet",
    "encode_optneg",
    "encode_reply_code",
    "encode_insert_header",
    "encode_change_header",
    "encode_add_header",
    "encode_quarantine",
]

# -- commands (MTA -> filter), SMFIC_* ---------------------------------------------------

ABORT = "A"  # message aborted; the connection stays
BODY = "B"  # a body chunk
CONNECT = "C"  # client connection information
MACRO = "D"  # macros for the next command (never answered)
BODYEOB = "E"  # end of message
HELO = "H"
QUIT_NC = "K"  # quit, a new connection follows on the same socket (Sendmail only)
HEADER = "L"
MAIL = "M"
EOH = "N"  # end of headers
OPTNEG = "O"  # option negotiation
QUIT = "Q"
RCPT = "R"
DATA = "T"
UNKNOWN = "U"  # an SMTP command the MTA does not know

COMMANDS = frozenset("ABCDEHKLMNOQRTU")

# -- replies (filter -> MTA), SMFIR_* --------------------------------------------------

R_ADDHEADER = "h"
R_INSHEADER = "i"
R_CHGHEADER = "m"
R_ACCEPT = "a"
R_CONTINUE = "c"
R_PROGRESS = "p"
R_REJECT = "r"
R_TEMPFAIL = "t"
R_REPLYCODE = "y"
R_QUARANTINE = "q"  # at end of message only, before the final reply

# -- actions the filter may take (SMFIF_*), offered by the MTA in OPTNEG ---------------

SMFIF_ADDHDRS = 0x01  # add headers (also needed for insert)
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10  # change or delete headers
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100  # the filter may send macro lists in its OPTNEG reply

# -- protocol steps (SMFIP_*): "don't send X" and "no reply to X" ---------------------

SMFIP_NOCONNECT = 1 << 0
SMFIP_NOHELO = 1 << 1
SMFIP_NOMAIL = 1 << 2
SMFIP_NORCPT = 1 << 3
SMFIP_NOBODY = 1 << 4
SMFIP_NOHDRS = 1 << 5
SMFIP_NOEOH = 1 << 6
SMFIP_NR_HDR = 1 << 7
SMFIP_NOUNKNOWN = 1 << 8
SMFIP_NODATA = 1 << 9
SMFIP_SKIP = 1 << 10
SMFIP_RCPT_REJ = 1 << 11
SMFIP_NR_CONN = 1 << 12
SMFIP_NR_HELO = 1 << 13
SMFIP_NR_MAIL = 1 << 14
SMFIP_NR_RCPT = 1 << 15
SMFIP_NR_DATA = 1 << 16
SMFIP_NR_UNKN = 1 << 17
SMFIP_NR_EOH = 1 << 18
SMFIP_NR_BODY = 1 << 19
SMFIP_HDR_LEADSPC = 1 << 20  # header values keep the space after the colon, both ways

#: the command a "no reply" flag silences
NO_REPLY_FLAGS = {
    CONNECT: SMFIP_NR_CONN,
    HELO: SMFIP_NR_HELO,
    MAIL: SMFIP_NR_MAIL,
    RCPT: SMFIP_NR_RCPT,
    DATA: SMFIP_NR_DATA,
    UNKNOWN: SMFIP_NR_UNKN,
    HEADER: SMFIP_NR_HDR,
    EOH: SMFIP_NR_EOH,
    BODY: SMFIP_NR_BODY,
}

# -- macro stages in the OPTNEG reply (SMFIM_*) ----------------------------------------

STAGE_CONNECT = 0
STAGE_HELO = 1
STAGE_MAIL = 2
STAGE_RCPT = 3
STAGE_DATA = 4
STAGE_EOM = 5
STAGE_EOH = 6

# -- limits ------------------------------------------------------------------------------

#: Postfix sends body chunks of at most this many bytes (MILTER_CHUNK_SIZE); larger
#: chunks need the SMFIP_MDS_* flags, which Postfix does not offer.
MAX_BODY_CHUNK = 65535
#: other packets: CONNECT, HELO, MAIL, RCPT, MACRO ... are far smaller
MAX_PACKET = 65536
#: one header field: Postfix cuts headers at header_size_limit (102400 bytes by default)
MAX_HEADER_PACKET = 262144

_LENGTH = struct.Struct("!I")
_OPTNEG = struct.Struct("!III")
_PORT = struct.Struct("!H")


# -- errors: one class per way a stream can go wrong ------------------------------------


class MilterProtocolError(Exception):
    """The MTA broke the protocol; the connection cannot go on."""


class BadPacketLength(MilterProtocolError):
    """A packet length of 0: there is not even a command byte."""


class PacketTooLong(MilterProtocolError):
    """A packet longer than the limit for its command."""


class UnknownCommand(MilterProtocolError):
    """A command byte that is not a milter command."""


class MalformedPacket(MilterProtocolError):
    """A payload that does not parse for its command (missing NUL, short, bad family)."""


class UnexpectedCommand(MilterProtocolError):
    """A valid command in the wrong place (RCPT before MAIL, anything before OPTNEG)."""


class NegotiationFailed(MilterProtocolError):
    """The MTA offers too old a protocol or not the actions srsd needs."""


# -- framing -------------------------------------------------------------------------------


class PacketDecoder:
    """Incremental framing: feed bytes as they arrive, get complete packets.

    A packet is checked as soon as its 5-byte head is in, so an over-long one is
    refused before its payload is buffered. After an error the decoder is spent
    (the stream has lost its framing); feeding it again raises the same error.

    :param max_packet: payload limit for most commands (bytes, without the command byte).
    :param max_header: payload limit for HEADER (name, value, two NULs).
    :param max_body: payload limit for BODY and BODYEOB.
    """

    def __init__(
        self, max_packet: int = MAX_PACKET, max_header: int = MAX_HEADER_PACKET, max_body: int = MAX_BODY_CHUNK
    ) -> None:
        self._buffer = bytearray()
        self._limits = {HEADER: max_header, BODY: max_body, BODYEOB: max_body}
        self._max_packet = max_packet
        self._error: MilterProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """The packets completed by *data*, as (command, payload) in order.

        :raises BadPacketLength, UnknownCommand, PacketTooLong: the stream's framing
            is lost; packets before the bad one are lost with it (the connection ends).
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        packets = []
        pos = 0
        end = len(buffer)
        try:
            while end - pos >= 5:
                (length,) = _LENGTH.unpack_from(buffer, pos)
                if length < 1:
                    raise BadPacketLength("packet length 0 (no command byte)")
                command = chr(buffer[pos + 4])
                if command not in COMMANDS:
                    raise UnknownCommand(f"unknown command byte {command!r} (packet length {length})")
                limit = self._limits.get(command, self._max_packet)
                if length - 1 > limit:
                    raise PacketTooLong(f"command {command!r}: {length - 1} payload bytes, limit {limit}")
                if end - pos < 4 + length:
                    break
                packets.append((command, bytes(buffer[pos + 5 : pos + 4 + length])))
                pos += 4 + length
        except MilterProtocolError as exc:
            self._error = exc
            buffer.clear()
            raise
        del buffer[:pos]
        return packets


# -- commands --------------------------------------------------------------------------------


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _strings(payload: bytes, command: str, count: int | None = None) -> list[bytes]:
    """The NUL-terminated strings of *payload*; exactly *count* of them if given."""
    if not payload.endswith(b"\0"):
        raise MalformedPacket(f"command {command!r}: payload does not end in NUL")
    parts = payload[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise MalformedPacket(f"command {command!r}: {len(parts)} strings, expected {count}")
    return parts


@dataclass(frozen=True, slots=True)
class OptNeg:
    """SMFIC_OPTNEG: the MTA's protocol version, offered actions and protocol steps."""

    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Macros:
    """SMFIC_MACRO: macro values for the command *stage* (a command letter)."""

    stage: str
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class Connect:
    """SMFIC_CONNECT. *hostname* as Postfix sends it (``[192.0.2.1]`` when the client
    has no verified name); *family* ``4``, ``6``, ``L`` (unix) or ``U`` (unknown);
    *address* empty for ``U``."""

    hostname: str
    family: str
    port: int
    address: str


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    """SMFIC_MAIL: ``args[0]`` is the sender as in MAIL FROM (``<a@b>``, ``<>``),
    then the ESMTP parameters (``SIZE=123``)."""

    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rcpt:
    """SMFIC_RCPT: ``args[0]`` is the recipient (``<a@b>``), then ESMTP parameters."""

    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Header:
    """SMFIC_HEADER: *value* as Postfix sends it: folded lines joined by ``\\n``,
    with its leading space only if SMFIP_HDR_LEADSPC was negotiated."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Body:
    """SMFIC_BODY (or data sent with SMFIC_BODYEOB): CRLF line ends."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """SMFIC_BODYEOB; *data* is a last body chunk (Postfix sends none)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Unknown:
    command: str


@dataclass(frozen=True, slots=True)
class Simple:
    """A command without payload: ABORT, DATA, EOH, QUIT, QUIT_NC."""

    command: str


Command = OptNeg | Macros | Connect | Helo | Mail | Rcpt | Header | Body | EndOfMessage | Unknown | Simple

_SIMPLE = frozenset((ABORT, DATA, EOH, QUIT, QUIT_NC))


def decode_command(command: str, payload: bytes) -> Command:
    """One packet's value. :raises MalformedPacket: the payload does not fit *command*."""
    if command == BODY:
        return Body(payload)
    if command == HEADER:
        name, value = _strings(payload, command, 2)
        if not name:
            raise MalformedPacket("command 'L': empty header name")
        return Header(_text(name), _text(value))
    if command == MACRO:
        return _decode_macros(payload)
    if command in (MAIL, RCPT):
        args = tuple(_text(a) for a in _strings(payload, command))
        return Mail(args) if command == MAIL else Rcpt(args)
    if command in _SIMPLE:
        if payload:
            raise MalformedPacket(f"command {command!r}: unexpected {len(payload)}-byte payload")
        return Simple(command)
    if command == BODYEOB:
        return EndOfMessage(payload)
    if command == HELO:
        (name,) = _strings(payload, command, 1)
        return Helo(_text(name))
    if command == CONNECT:
        return _decode_connect(payload)
    if command == OPTNEG:
        if len(payload) < _OPTNEG.size:
            raise MalformedPacket(f"command 'O': {len(payload)} bytes, expected at least {_OPTNEG.size}")
        # An MTA's OPTNEG may carry more (Sendmail does not; Postfix does not): ignored.
        return OptNeg(*_OPTNEG.unpack_from(payload))
    if command == UNKNOWN:
        return Unknown(_text(payload[:-1] if payload.endswith(b"\0") else payload))
    raise UnknownCommand(f"unknown command {command!r}")  # pragma: no cover (COMMANDS checked)


def _decode_macros(payload: bytes) -> Macros:
    if not payload:
        raise MalformedPacket("command 'D': no stage byte")
    stage = chr(payload[0])
    rest = payload[1:]
    if not rest:
        return Macros(stage, {})
    parts = _strings(rest, MACRO)
    if len(parts) % 2:
        raise MalformedPacket(f"command 'D': macro {parts[-1][:40]!r} without a value")
    values = {}
    for i in range(0, len(parts), 2):
        name = _text(parts[i])
        if len(name) > 1 and not name.startswith("{"):
            name = "{" + name + "}"  # Sendmail's long names arrive without braces
        values[name] = _text(parts[i + 1])
    return Macros(stage, values)


def _decode_connect(payload: bytes) -> Connect:
    nul = payload.find(b"\0")
    if nul < 0 or nul + 1 >= len(payload):
        raise MalformedPacket("command 'C': no host name or no address family")
    hostname = _text(payload[:nul])
    family = chr(payload[nul + 1])
    rest = payload[nul + 2 :]
    if family == "U":
        return Connect(hostname, family, 0, "")
    if family not in "46L":
        raise MalformedPacket(f"command 'C': unknown address family {family!r}")
    if len(rest) < _PORT.size + 1:
        raise MalformedPacket("command 'C': no port or no address")
    (port,) = _PORT.unpack_from(rest)
    (address,) = _strings(rest[_PORT.size :], CONNECT, 1)
    return Connect(hostname, family, port, _text(address))


# -- replies -----------------------------------------------------------------------------------


def encode_packet(command: str, payload: bytes = b"") -> bytes:
    return _LENGTH.pack(len(payload) + 1) + command.encode("ascii") + payload


CONTINUE = encode_packet(R_CONTINUE)
ACCEPT = encode_packet(R_ACCEPT)
TEMPFAIL = encode_packet(R_TEMPFAIL)
REJECT = encode_packet(R_REJECT)
PROGRESS = encode_packet(R_PROGRESS)


def encode_optneg(version: int, actions: int, protocol: int, macros: Mapping[int, str] | None = None) -> bytes:
    """The filter's OPTNEG reply; *macros* maps a stage (``STAGE_*``) to the
    space-separated macro names wanted before it."""
    payload = _OPTNEG.pack(version, actions, protocol)
    for stage, names in sorted((macros or {}).items()):
        payload += _LENGTH.pack(stage) + names.encode("ascii") + b"\0"
    return encode_packet(OPTNEG, payload)


def _wire(text: str) -> bytes:
    """A string for a NUL-terminated field; a NUL inside would cut it short."""
    raw = text.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"NUL byte in {text[:40]!r}")
    return raw


_REPLY_CODE = re.compile(r"[45][0-9][0-9]")
_ENHANCED = re.compile(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}")
_LINE_BREAKS = re.compile(r"[\r\n\0]+")


def encode_reply_code(code: str, enhanced: str, text: str) -> bytes:
    """SMFIR_REPLYCODE ``"550 5.7.1 text"``.

    Postfix reads ``%%`` as ``%`` and drops a lone ``%`` (Sendmail uses the reply as a
    format string), so ``%`` is doubled; line breaks in *text* become spaces.

    :raises ValueError: *code* is not 4xx/5xx, or *enhanced* not ``X.Y.Z`` of the same class.
    """
    if not _REPLY_CODE.fullmatch(code) or not _ENHANCED.fullmatch(enhanced) or enhanced[0] != code[0]:
        raise ValueError(f"bad SMTP reply code {code!r} {enhanced!r}")
    line = f"{code} {enhanced} {_LINE_BREAKS.sub(' ', text).strip()}".rstrip().replace("%", "%%")
    return encode_packet(R_REPLYCODE, _wire(line) + b"\0")


def _header_value(value: str, leading_space: bool) -> bytes:
    # The milter wire folds with a bare LF (Postfix stores lines without CR): a CRLF
    # from a DKIM library would come out as CR CR LF.
    value = value.replace("\r\n", "\n")
    if not leading_space and value.startswith(" "):
        value = value[1:]  # without SMFIP_HDR_LEADSPC Postfix puts one space back
    return _wire(value)


_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but ':'


def _header_name(name: str) -> bytes:
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"bad header field name {name!r}")
    return name.encode("ascii")


def encode_insert_header(index: int, name: str, value: str, *, leading_space: bool = True) -> bytes:
    """SMFIR_INSHEADER: insert at 0-based *index* among the header fields (0 = top).

    :param leading_space: SMFIP_HDR_LEADSPC is in force: *value* goes out as is.
    :raises ValueError: a bad field name, a NUL in *value*, a negative index.
    """
    if index < 0:
        raise ValueError(f"negative header index {index}")
    payload = _LENGTH.pack(index) + _header_name(name) + b"\0" + _header_value(value, leading_space) + b"\0"
    return encode_packet(R_INSHEADER, payload)


def encode_change_header(occurrence: int, name: str, value: str, *, leading_space: bool = True) -> bytes:
    """SMFIR_CHGHEADER: replace the *occurrence*-th (1-based) field *name*; an empty
    *value* deletes it."""
    if occurrence < 1:
        raise ValueError(f"header occurrence {occurrence} (must be 1 or more)")
    payload = _LENGTH.pack(occurrence) + _header_name(name) + b"\0" + _header_value(value, leading_space) + b"\0"
    return encode_packet(R_CHGHEADER, payload)


def encode_add_header(name: str, value: str, *, leading_space: bool = True) -> bytes:
    """SMFIR_ADDHEADER: append a field after the last one."""
    return encode_packet(R_ADDHEADER, _header_name(name) + b"\0" + _header_value(value, leading_space) + b"\0")


def encode_quarantine(reason: str) -> bytes:
    """SMFIR_QUARANTINE: hold the message (needs SMFIF_QUARANTINE negotiated). *reason*
    may not be empty (libmilter's smfi_quarantine refuses that); line breaks and NULs
    become spaces.

    :raises ValueError: an empty *reason*.
    """
    text = _LINE_BREAKS.sub(" ", reason).strip()
    if not text:
        raise ValueError("empty quarantine reason")
    return encode_packet(R_QUARANTINE, _wire(text) + b"\0")
