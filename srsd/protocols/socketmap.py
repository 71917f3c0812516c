"""Sendmail/Postfix socketmap server (socketmap_table(5); PostSRSd 2.x's protocol).

Request: a netstring ``LEN:NAME SPACE KEY,``. Reply: a netstring holding
``OK value``, ``NOTFOUND ``, ``TEMP reason``, ``TIMEOUT reason`` or ``PERM reason``.
Postfix treats PERM as a lookup error that defers mail, so it is only used where
the client is not speaking the protocol at all (framing lost: the connection is
then closed) or names a map this server does not have; an over-long key is
answered NOTFOUND in frame (no address srsd mints or reverses is that long).
"""

from __future__ import annotations

from srsd.protocols.base import LookupFactory, LookupProtocol
from srsd.rewrite import FOUND, NOTFOUND, Answer

__all__ = ["SocketmapProtocol", "SocketmapFactory", "netstring", "MAPS"]

MAPS = ("forward", "reverse")
_MAX_LENGTH_DIGITS = 7


def netstring(payload: bytes) -> bytes:
    """Frame *payload* as ``LEN:payload,`` (LEN in decimal)."""
    return b"%d:%s," % (len(payload), payload)


class SocketmapProtocol(LookupProtocol):
    def __init__(self) -> None:
        super().__init__()
        self._buffer = b""
        self._skip = 0  # bytes of an over-long request still to discard

    def encode(self, answer: Answer) -> bytes:
        status, text = answer
        if status == FOUND:
            payload = b"OK " + text.encode("utf-8", "surrogateescape")
        elif status == NOTFOUND:
            payload = b"NOTFOUND "
        else:
            payload = b"TEMP " + text.encode("utf-8", "surrogateescape")
        return netstring(payload)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buffer = self._buffer + data if self._buffer else data
        replies = []
        pos = 0
        limit = self.factory.max_request_bytes
        while pos < len(buffer):
            colon = buffer.find(b":", pos, pos + _MAX_LENGTH_DIGITS + 1)
            if colon < 0:
                if len(buffer) - pos > _MAX_LENGTH_DIGITS or not buffer[pos:].isdigit():
                    return self._framing_error(replies, "malformed netstring length")
                break  # length still arriving
            digits = buffer[pos:colon]
            if not digits.isdigit():
                return self._framing_error(replies, "malformed netstring length")
            size = int(digits)
            start = colon + 1
            end = start + size
            if size > limit:
                # No address of ours is this long: NOTFOUND (PERM would defer the
                # mail); the payload and its comma are dropped as they arrive.
                replies.append(self.encode(Answer(NOTFOUND, "request too long")))
                self._skip = max(0, end + 1 - len(buffer))
                pos = min(end + 1, len(buffer))
                continue
            if len(buffer) <= end:
                break  # payload or comma still arriving
            if buffer[end] != 0x2C:  # ","
                return self._framing_error(replies, "netstring without trailing comma")
            replies.append(self.request(buffer[start:end]))
            pos = end + 1
        self._buffer = buffer[pos:]
        if replies:
            self.send(replies)

    def request(self, payload: bytes):
        """Answer one request payload ``NAME SPACE KEY``."""
        name, _, key = payload.partition(b" ")
        map_name = name.decode("ascii", "replace")
        if map_name not in MAPS:
            return netstring(b"PERM unknown map name; this server has: " + " ".join(MAPS).encode())
        return self.run_lookup(map_name, key.decode("utf-8", "surrogateescape"))

    def _framing_error(self, replies: list, reason: str) -> None:
        """Not a netstring stream: answer PERM and close; resynchronising is guesswork."""
        replies.append(netstring(b"PERM " + reason.encode()))
        self._buffer = b""
        self.send(replies)
        self.transport.loseConnection()


class SocketmapFactory(LookupFactory):
    protocol = SocketmapProtocol
