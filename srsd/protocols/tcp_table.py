"""Postfix tcp_table(5) server (PostSRSd 1.x's protocol).

Request ``get SPACE key NEWLINE`` with the key %XX-encoded; reply
``200 SPACE value`` (found), ``500 SPACE text`` (not found) or ``400 SPACE text``
(temporary failure: Postfix disconnects and retries), each ending in ``\\n`` and
%XX-encoding whitespace, ``%`` and non-printable bytes. One endpoint serves one
map: the factory's ``map_name`` is passed to the lookup with every key.
"""

from __future__ import annotations

import re
import time

from srsd.protocols.base import LineBuffer, LookupFactory, LookupProtocol
from srsd.rewrite import FOUND, NOTFOUND, Answer

__all__ = ["TcpTableProtocol", "TcpTableFactory", "quote", "unquote"]

_NEEDS_QUOTE = re.compile(rb"[\x00-\x20%\x7f-\xff]")
_HEX_PAIR = re.compile(rb"[0-9A-Fa-f]{2}")
_CODES = {FOUND: b"200 ", NOTFOUND: b"500 "}


def quote(data: bytes) -> bytes:
    """%XX-encode what tcp_table(5) may not carry raw (whitespace, ``%``, >0x7e)."""
    if _NEEDS_QUOTE.search(data) is None:
        return data
    return _NEEDS_QUOTE.sub(lambda m: b"%%%02X" % m.group()[0], data)


def unquote(data: bytes) -> bytes:
    """Decode %XX escapes. :raises ValueError: a ``%`` not followed by two hex digits."""
    if b"%" not in data:
        return data
    first, *rest = data.split(b"%")
    out = [first]
    for part in rest:
        if not _HEX_PAIR.match(part):
            raise ValueError("bad %XX escape")
        out += (bytes((int(part[:2], 16),)), part[2:])
    return b"".join(out)


class TcpTableProtocol(LookupProtocol):
    def __init__(self) -> None:
        super().__init__()
        self._lines = LineBuffer()

    def encode(self, answer: Answer) -> bytes:
        status, text = answer
        data = text.encode("utf-8", "surrogateescape")
        # Most answers are plain printable ASCII: str checks cost less than the regex.
        if not (text.isascii() and text.isprintable() and " " not in text and "%" not in text):
            data = quote(data)
        return _CODES.get(status, b"400 ") + data + b"\n"

    def at_boundary(self) -> bool:
        return not self._lines.partial and not self._lines.discarding

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        # The usual read: one whole plain request (Postfix waits for each answer),
        # often asked before (cleanup looks every result up again).
        reply = self.cached(data)
        if reply is not None:
            self.write_reply(reply)
            return
        if (
            data[-1:] == b"\n"
            and data.startswith(b"get ")
            and not self._lines.partial
            and not self._lines.discarding
            and data.count(b"\n") == 1
            and b"%" not in data
            and b"\r" not in data
            and len(data) <= self.factory.max_request_bytes + 1
        ):
            reply = self.run_lookup(self.factory.map_name, data[4:-1].decode("utf-8", "surrogateescape"), data)
            if type(reply) is bytes and not self._queue and not self.overloaded:
                self.last_active = time.monotonic()
                self.write_reply(reply)  # send()'s common case, without its list
            else:
                self.send([reply])
            return
        limit = self.factory.max_request_bytes
        # +1: an unfinished line may still end in the "\r" of a CRLF.
        lines, overflow = self._lines.feed(data, limit + 1)
        replies = [self.request(line) for line in lines]
        if overflow:
            self.factory.stats.protocol_error("too_long")
            replies.append(self.encode(Answer(NOTFOUND, f"request longer than {limit} bytes")))
        if replies:
            self.send(replies)

    def request(self, line: bytes):
        """Answer one request line (without its newline)."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.factory.max_request_bytes:
            self.factory.stats.protocol_error("too_long")
            return self.encode(Answer(NOTFOUND, f"request longer than {self.factory.max_request_bytes} bytes"))
        if not line.startswith(b"get "):
            self.factory.stats.protocol_error("unsupported_request")
            return self.encode(Answer(NOTFOUND, "unsupported request: only 'get KEY' is served"))
        try:
            key = unquote(line[4:]).decode("utf-8", "surrogateescape")
        except ValueError:
            self.factory.stats.protocol_error("bad_escape")
            return self.encode(Answer(NOTFOUND, "malformed %XX encoding in key"))
        return self.run_lookup(self.factory.map_name, key)


class TcpTableFactory(LookupFactory):
    """A tcp_table endpoint answering one map (``forward`` or ``reverse``)."""

    protocol = TcpTableProtocol

    def __init__(self, lookup, name: str, map_name: str, **limits) -> None:
        super().__init__(lookup, name, **limits)
        self.map_name = map_name
