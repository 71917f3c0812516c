"""The pure netstring decoder (socketmap framing): limits, skipping, errors, chunking."""

import pytest

from srsd.protocols.netstring import TOO_LONG, NetstringDecoder, NetstringError, encode


def test_encode_and_decode_whole():
    assert encode(b"forward a@b") == b"11:forward a@b,"
    assert NetstringDecoder(100).feed(b"3:abc,0:,5:hello,") == [b"abc", b"", b"hello"]


def test_byte_by_byte_gives_the_same():
    stream = encode(b"abc") + encode(b"forward x@y.z") + encode(b"q")
    decoder = NetstringDecoder(100)
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == [b"abc", b"forward x@y.z", b"q"] and decoder.buffered == 0


def test_over_limit_is_reported_at_once_and_skipped_as_it_arrives():
    decoder = NetstringDecoder(4)
    assert decoder.feed(b"10:01234") == [TOO_LONG]  # reported before the payload is all there
    assert decoder.feed(b"56789") == []
    assert decoder.feed(b",2:ok,") == [b"ok"]  # its comma skipped, in frame again
    assert decoder.buffered == 0


@pytest.mark.parametrize("stream", [b"x:abc,", b"3:abcX", b"12345678:", b"-1:a,", b" 3:abc,"])
def test_broken_framing_raises_with_what_came_before(stream):
    decoder = NetstringDecoder(100)
    with pytest.raises(NetstringError) as caught:
        decoder.feed(b"1:a," + stream)
    assert caught.value.decoded == [b"a"]
    assert decoder.buffered == 0


def test_partial_length_waits():
    decoder = NetstringDecoder(100)
    assert decoder.feed(b"12") == [] and decoder.buffered == 2
    assert decoder.feed(b":hello world!,") == [b"hello world!"]
