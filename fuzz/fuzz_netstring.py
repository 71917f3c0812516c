"""Fuzz target: the pure incremental netstring decoder (:mod:`srsd.protocols.netstring`)
fed arbitrary chunkings, at two payload limits.

Input: a socketmap byte stream, e.g. ``18:reverse a@b.example,``.

Invariants:

* ``feed`` returns payloads (bytes, at most the limit long) and :data:`TOO_LONG`, or raises
  only :class:`NetstringError` (carrying what it completed before the error);
* the decoded sequence, and whether and where the stream broke, are exactly those of a
  reference model (a plain, non-incremental reading of the netstring grammar with the
  decoder's documented limits), however the stream is cut into reads; at the end the
  decoder holds exactly the unfinished netstring;
* round trip: netstrings made with ``encode`` from pieces of the input decode, in any
  chunking, to those pieces (:data:`TOO_LONG` for those over the limit), ending at a
  boundary.
"""

from __future__ import annotations

import re

from fuzz.harness import chunkings, expect, instrumented, main

with instrumented(__name__):
    from srsd.protocols.netstring import MAX_LENGTH_DIGITS, TOO_LONG, NetstringDecoder, NetstringError, encode

__all__ = ["LIMITS", "test_one_input"]

LIMITS = (8, 1000)  # small, so TOO_LONG is common; and above most inputs
_DIGITS = re.compile(rb"[0-9]*")

#: (items, broken, bytes still buffered, at a boundary): a stream's outcome
Outcome = tuple[list[object], bool, int, bool]


def _model(data: bytes, limit: int) -> Outcome:
    """The netstring grammar read at once: ``LEN ":" payload ","`` with LEN of 1 to
    MAX_LENGTH_DIGITS digits; a payload over *limit* is TOO_LONG as soon as LEN is read,
    its bytes and the byte after them skipped unseen."""
    items: list[object] = []
    pos = 0
    while pos < len(data):
        digits = _DIGITS.match(data, pos).group()
        after = pos + len(digits)
        if len(digits) > MAX_LENGTH_DIGITS or (after < len(data) and (not digits or data[after] != 0x3A)):
            return items, True, 0, True
        if after == len(data):
            return items, False, len(data) - pos, False  # the length is still arriving
        size = int(digits)
        end = after + 1 + size
        if size > limit:
            items.append(TOO_LONG)
            pos = end + 1
            continue
        if end >= len(data):
            return items, False, len(data) - pos, False
        if data[end] != 0x2C:
            return items, True, 0, True
        items.append(data[after + 1 : end])
        pos = end + 1
    return items, False, 0, pos == len(data)  # past the end: inside a skipped payload


def _decode(chunks: list[bytes], limit: int) -> Outcome:
    decoder = NetstringDecoder(limit)
    items: list[object] = []
    for chunk in chunks:
        try:
            got = decoder.feed(chunk)
        except NetstringError as exc:
            items += exc.decoded
            expect(decoder.buffered == 0, "decoder kept bytes after an error", chunks)
            return items, True, 0, True
        expect(type(got) is list, "feed did not return a list", chunks, got)
        items += got
    for item in items:
        expect(item is TOO_LONG or (type(item) is bytes and len(item) <= limit), "bad item", chunks, item)
    return items, False, decoder.buffered, decoder.at_boundary


def _pieces(data: bytes) -> list[bytes]:
    """Payloads cut from *data*: each byte gives the length (0-23) of the piece after it."""
    pieces = []
    pos = 0
    while pos < len(data) and len(pieces) < 40:
        size = data[pos] % 24
        pieces.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size
    return pieces


def test_one_input(data: bytes) -> None:
    """*data* as a stream against the model, then pieces of it framed and decoded.

    :raises AssertionError: an invariant of the module docstring broke.
    """
    ways = chunkings(data)
    pieces = _pieces(data)
    framed = b"".join(encode(p) for p in pieces)
    for limit in LIMITS:
        want = _model(data, limit)
        for chunks in ways:
            got = _decode(chunks, limit)
            expect(got == want, "decoder differs from the netstring model", limit, chunks, got, want)
        framed_want = ([p if len(p) <= limit else TOO_LONG for p in pieces], False, 0, True)
        for chunks in chunkings(framed):
            got = _decode(chunks, limit)
            expect(got == framed_want, "encode/decode round trip", limit, chunks, got)


if __name__ == "__main__":
    main(test_one_input)
