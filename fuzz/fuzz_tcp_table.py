"""Fuzz target: the tcp_table(5) adapter (:mod:`srsd.protocols.tcp_table`): request lines,
``%XX`` decoding and encoding, the fast path for a lone request and the answer cache.

Input: bytes as Postfix's tcp_table client would send them, e.g. ``get a%40b.example\\n``.
The lookup echoes its key (FOUND), so every reply shows what the adapter decoded.

Invariants:

* ``unquote(quote(x)) == x`` for any bytes; ``quote`` leaves only printable ASCII but
  space, with ``%`` only as an escape; ``unquote`` returns bytes or raises ValueError, and
  what it returns re-quotes to something that unquotes the same;
* the replies, however the stream is cut into reads, are exactly those of a reference
  model of tcp_table(5) written from the module's docstring: one per complete line (an
  unfinished line only once it is over the limit), ``200 <key %XX-encoded>`` for
  ``get <key>``, ``500 ...`` for an over-long line, another command or a bad escape;
* every reply is ``(200|400|500) SPACE [!-~]* NEWLINE``; nothing is logged as a failure.
"""

from __future__ import annotations

import re

from fuzz.harness import chunkings, expect, feed, instrumented, main

with instrumented(__name__):
    from srsd.answer_cache import AnswerCache
    from srsd.protocols.tcp_table import TcpTableFactory, quote, unquote
    from srsd.rewrite import FOUND, NOTFOUND, TEMP, Answer

__all__ = ["LIMIT", "test_one_input"]

LIMIT = 256  # limits.max_request_bytes: the smallest allowed, so over-long lines are common
_REPLY = re.compile(rb"(?:200|400|500) [!-~]*\n")
_QUOTED = re.compile(rb"(?:[!-$&-~]|%[0-9A-F]{2})*")


def _lookup(map_name: str, key: str) -> Answer:
    if not key:
        return Answer(NOTFOUND, "-")
    if key.startswith("temp"):
        return Answer(TEMP, "try later")
    return Answer(FOUND, key)


def _cacheable(map_name: str, answer: Answer) -> tuple[str, str] | None:
    return (map_name, "found") if answer.status == FOUND else None


def _reply(answer: Answer) -> bytes:
    code = {FOUND: b"200 ", NOTFOUND: b"500 "}.get(answer.status, b"400 ")
    return code + quote(answer.text.encode("utf-8", "surrogateescape")) + b"\n"


_REFUSED = b"500 -\n"  # a refused request; its reason text is the adapter's to choose


def _model_line(line: bytes) -> bytes:
    """The reply tcp_table(5) and the docstring ask for one complete line."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > LIMIT or not line.startswith(b"get "):
        return _REFUSED
    try:
        key = unquote(line[4:])
    except ValueError:
        return _REFUSED
    return _reply(_lookup("reverse", key.decode("utf-8", "surrogateescape")))


def _model(stream: bytes) -> bytes:
    *lines, unfinished = stream.split(b"\n")
    replies = [_model_line(line) for line in lines]
    if len(unfinished) > LIMIT + 1:  # +1: it may still end in the "\r" of a CRLF
        replies.append(_REFUSED)
    return b"".join(replies)


def _refusals_blurred(out: bytes) -> bytes:
    """*out* with the text of each 500 reply replaced by ``-`` (the model has none)."""
    return re.sub(rb"(?m)^500 [^\n]*\n", _REFUSED, out)


def _check_codec(data: bytes) -> None:
    quoted = quote(data)
    expect(_QUOTED.fullmatch(quoted), "quote left a byte tcp_table cannot carry", data, quoted)
    expect(unquote(quoted) == data, "unquote(quote(x)) != x", data, quoted)
    try:
        plain = unquote(data)
    except ValueError:
        return
    expect(type(plain) is bytes and unquote(quote(plain)) == plain, "re-quoting changed a key", data, plain)


def test_one_input(data: bytes) -> None:
    """The codec on *data*, then *data* as a request stream in every chunking.

    :raises AssertionError: an invariant of the module docstring broke.
    """
    _check_codec(data)
    want = _model(data)
    for chunks in chunkings(data):
        factory = TcpTableFactory(_lookup, "fuzz_tcp", "reverse", max_request_bytes=LIMIT,
                                  cache=AnswerCache(64), cacheable=_cacheable)  # fmt: skip
        out, closed = feed(factory, chunks)
        expect(all(_REPLY.fullmatch(r + b"\n") for r in out.split(b"\n")[:-1]), "malformed reply", chunks, out)
        expect(_refusals_blurred(out) == want, "replies differ from the tcp_table model", chunks, out, want)
        expect(not closed, "the adapter closed the connection", chunks)


if __name__ == "__main__":
    main(test_one_input)
