"""Netstrings (``LEN:payload,``, D. J. Bernstein; socketmap_table(5)): a pure,
incremental decoder with a length limit, and the encoder.

No sockets: :class:`NetstringDecoder` takes bytes as they arrive and gives back
complete payloads. A payload over the limit is not buffered: it is reported as
:data:`TOO_LONG` as soon as its length is read, and its bytes (and comma) are
skipped as they arrive, so the stream stays in frame. Anything that is not a
netstring stream raises :class:`NetstringError`: resynchronising would be guesswork.
"""

from __future__ import annotations

__all__ = ["NetstringDecoder", "NetstringError", "TOO_LONG", "encode"]

#: digits of the longest length field accepted (9 999 999 bytes; far above any limit)
MAX_LENGTH_DIGITS = 7


class NetstringError(ValueError):
    """The stream is not made of netstrings (a bad length field, a missing comma).

    ``decoded``: the netstrings completed before the error, in order.
    """

    def __init__(self, reason: str, decoded: list | None = None) -> None:
        super().__init__(reason)
        self.decoded = decoded or []


class _TooLong:
    """Stands in the decoded list for a payload over the limit (its bytes are skipped)."""

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG = _TooLong()


def encode(payload: bytes) -> bytes:
    """Frame *payload* as ``LEN:payload,`` (LEN in decimal)."""
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """Incremental netstring decoder.

    :param limit: longest payload (bytes) delivered; longer ones become :data:`TOO_LONG`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = b""
        self._skip = 0  # bytes of an over-long payload (and its comma) still to drop

    @property
    def at_boundary(self) -> bool:
        """Nothing held or being skipped: the next byte starts a netstring."""
        return not self._buffer and not self._skip

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished netstring."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | _TooLong]:
        """The netstrings completed by *data*, in order: payloads, or :data:`TOO_LONG`.

        :raises NetstringError: the stream broke framing (with what was decoded
            before it); the decoder drops what it held.
        """
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes | _TooLong] = []
        pos = 0
        end_of_data = len(buffer)
        while pos < end_of_data:
            colon = buffer.find(b":", pos, pos + MAX_LENGTH_DIGITS + 1)
            if colon < 0:
                if end_of_data - pos > MAX_LENGTH_DIGITS or not buffer[pos:].isdigit():
                    raise self._error("malformed netstring length", out)
                break  # the length is still arriving
            digits = buffer[pos:colon]
            if not digits.isdigit():
                raise self._error("malformed netstring length", out)
            size = int(digits)
            start = colon + 1
            end = start + size
            if size > self.limit:
                out.append(TOO_LONG)
                self._skip = max(0, end + 1 - end_of_data)
                pos = min(end + 1, end_of_data)
                continue
            if end_of_data <= end:
                break  # the payload or its comma is still arriving
            if buffer[end] != 0x2C:  # ","
                raise self._error("netstring without trailing comma", out)
            out.append(buffer[start:end])
            pos = end + 1
        self._buffer = buffer[pos:]
        return out

    def _error(self, reason: str, decoded: list) -> NetstringError:
        self._buffer = b""
        return NetstringError(reason, decoded)
