"""The MTA side of the milter protocol, for tests: packets encoded as Postfix 3.7's
milter8.c sends them, and a parser for the filter's replies. Deliberately written
without srsd.milter_codec, so the two check each other."""

from __future__ import annotations

import struct

# What Postfix 3.7 offers with milter_protocol = 6 (milter8.c: my_actions, MILTER8_V6_PROTO_MASK).
POSTFIX_ACTIONS = 0x1FF
POSTFIX_V6_PROTOCOL = 0x1FFFFF
POSTFIX_V2_PROTOCOL = 0x7F  # milter_protocol = 2: the "don't send" flags only
SENDMAIL_V2_ACTIONS = 0x3F  # no SETSYMLIST


def pkt(command: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("!I", len(payload) + 1) + command + payload


def cstr(text: str | bytes) -> bytes:
    return (text.encode("utf-8") if isinstance(text, str) else text) + b"\0"


def optneg(version: int = 6, actions: int = POSTFIX_ACTIONS, protocol: int = POSTFIX_V6_PROTOCOL) -> bytes:
    return pkt(b"O", struct.pack("!III", version, actions, protocol))


def macros(stage: bytes, values: dict[str, str | bytes]) -> bytes:
    return pkt(b"D", stage + b"".join(cstr(k) + cstr(v) for k, v in values.items()))


def connect(hostname: str = "mail.example.net", address: str = "192.0.2.1", port: int = 41234, family=b"4") -> bytes:
    if family == b"U":
        return pkt(b"C", cstr(hostname) + b"U")
    return pkt(b"C", cstr(hostname) + family + struct.pack("!H", port) + cstr(address))


def helo(name: str = "mail.example.net") -> bytes:
    return pkt(b"H", cstr(name))


def mail(*args: str) -> bytes:
    return pkt(b"M", b"".join(cstr(a) for a in args))


def rcpt(*args: str) -> bytes:
    return pkt(b"R", b"".join(cstr(a) for a in args))


def header(name: str | bytes, value: str | bytes) -> bytes:
    return pkt(b"L", cstr(name) + cstr(value))


def body(data: bytes) -> bytes:
    return pkt(b"B", data)


EOH = pkt(b"N")
EOB = pkt(b"E")
ABORT = pkt(b"A")
QUIT = pkt(b"Q")
QUIT_NC = pkt(b"K")
DATA = pkt(b"T")

# -- a whole session, event by event, as Postfix 3.7 sends it ---------------------------

CONNECT_MACROS = {"j": "mx.example.org", "{daemon_name}": "mx.example.org", "{client_addr}": "192.0.2.1"}


def session_start(**connect_args) -> bytes:
    return optneg() + macros(b"C", CONNECT_MACROS) + connect(**connect_args)


def message_events(
    queue_id: str,
    sender: str,
    recipients: list[str],
    headers: list[tuple[str, str | bytes]],
    body_chunks: list[bytes],
    *,
    helo_name: str | None = "mail.example.net",
    auth: str = "",
) -> bytes:
    """HELO (optional), MAIL, RCPT..., DATA (skipped by Postfix when the filter said
    NODATA, but its macros still come), the header fields (each after its macros),
    EOH macros, body chunks and end-of-message, each with its macros first."""
    out = b""
    if helo_name is not None:
        out += macros(b"H", {}) + helo(helo_name)
    mail_macros = {"i": queue_id, "{mail_addr}": sender}
    if auth:
        mail_macros |= {"{auth_type}": "PLAIN", "{auth_authen}": auth}
    out += macros(b"M", mail_macros) + mail(f"<{sender}>", "SIZE=1234", "BODY=8BITMIME")
    for r in recipients:
        out += macros(b"R", {"i": queue_id, "{rcpt_addr}": r}) + rcpt(f"<{r}>")
    out += macros(b"T", {"i": queue_id})  # DATA itself is not sent (SMFIP_NODATA)
    for name, value in headers:
        out += macros(b"L", {"i": queue_id}) + header(name, value)
    out += macros(b"N", {"i": queue_id})  # EOH itself is not sent (SMFIP_NOEOH)
    for chunk in body_chunks:
        out += macros(b"E", {"i": queue_id}) + body(chunk)
    out += macros(b"E", {"i": queue_id}) + EOB
    return out


# -- the filter's replies -----------------------------------------------------------------


def replies(data: bytes) -> list[tuple[str, bytes]]:
    """Split the filter's output into (command, payload); fails on a partial packet."""
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 5, f"truncated reply at {pos}: {data[pos:]!r}"
        (length,) = struct.unpack_from("!I", data, pos)
        assert length >= 1 and pos + 4 + length <= len(data), f"bad reply length {length} at {pos}"
        out.append((chr(data[pos + 4]), data[pos + 5 : pos + 4 + length]))
        pos += 4 + length
    return out


def describe(data: bytes) -> list[tuple]:
    """Replies in readable form: ("c",), ("i", 0, "X-Test", " value"), ("y", "550 5.7.1 x") ..."""
    out: list[tuple] = []
    for command, payload in replies(data):
        if command in "im":
            (index,) = struct.unpack_from("!I", payload)
            name, value, rest = payload[4:].split(b"\0")
            assert rest == b""
            out.append((command, index, name.decode(), value.decode("utf-8", "surrogateescape")))
        elif command == "h":
            name, value, rest = payload.split(b"\0")
            out.append((command, name.decode(), value.decode()))
        elif command in "yq":
            assert payload.endswith(b"\0")
            out.append((command, payload[:-1].decode()))
        elif command == "O":
            version, actions, protocol = struct.unpack_from("!III", payload)
            lists = {}
            rest = payload[12:]
            while rest:
                (stage,) = struct.unpack_from("!I", rest)
                names, _, rest = rest[4:].partition(b"\0")
                lists[stage] = names.decode()
            out.append((command, version, actions, protocol, lists))
        else:
            assert payload == b"", (command, payload)
            out.append((command,))
    return out
