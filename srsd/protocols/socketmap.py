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
from srsd.protocols.netstring import TOO_LONG, NetstringDecoder, NetstringError
from srsd.protocols.netstring import encode as netstring
from srsd.rewrite import FOUND, NOTFOUND, Answer
from srsd.srs_maps import MAPS

__all__ = ["SocketmapProtocol", "SocketmapFactory", "netstring"]


class SocketmapProtocol(LookupProtocol):
    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self._decoder = NetstringDecoder(self.factory.max_request_bytes)

    def encode(self, answer: Answer) -> bytes:
        status, text = answer
        if status == FOUND:
            payload = b"OK " + text.encode("utf-8", "surrogateescape")
        elif status == NOTFOUND:
            payload = b"NOTFOUND "
        else:
            payload = b"TEMP " + text.encode("utf-8", "surrogateescape")
        return netstring(payload)

    def at_boundary(self) -> bool:
        return self._decoder.at_boundary

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        reply = self.cached(data)
        if reply is not None:
            self.write_reply(reply)
            return
        at_boundary = self._decoder.at_boundary
        try:
            requests = self._decoder.feed(data)
        except NetstringError as exc:
            # Not a netstring stream: answer PERM and close; resynchronising is guesswork.
            self.factory.stats.protocol_error("framing")
            replies = [self.request(r) for r in exc.decoded]
            replies.append(netstring(b"PERM " + str(exc).encode()))
            self.send(replies)
            self.transport.loseConnection()
            return
        if len(requests) == 1 and at_boundary and self._decoder.at_boundary:
            self.send([self.request(requests[0], data)])  # the whole read was this request
        elif requests:
            self.send([self.request(r) for r in requests])

    def request(self, payload, whole: bytes | None = None):
        """Answer one request payload ``NAME SPACE KEY``; *whole*: the netstring
        it came in, when alone in its read (its reply may be cached under it)."""
        if payload is TOO_LONG:
            # No address of ours is this long: NOTFOUND (PERM would defer the mail).
            self.factory.stats.protocol_error("too_long")
            return self.encode(Answer(NOTFOUND, "request too long"))
        name, _, key = payload.partition(b" ")
        map_name = name.decode("ascii", "replace")
        if map_name not in MAPS:
            self.factory.stats.protocol_error("unknown_map")
            return netstring(b"PERM unknown map name; this server has: " + " ".join(MAPS).encode())
        return self.run_lookup(map_name, key.decode("utf-8", "surrogateescape"), whole)


class SocketmapFactory(LookupFactory):
    protocol = SocketmapProtocol
