"""Property tests of the wire adapters: random bytes and random chunkings fed to
TcpTableProtocol and SocketmapProtocol over StringTransport (no sockets, no
reactor), answered by a real :class:`srsd.service.Daemon`.

Properties:

* nothing raises and nothing is logged as a failure (a lookup that raised would
  be answered TEMP "internal error" and logged);
* every reply is well formed (tcp_table ``^(200|400|500) \\S*\\n``; socketmap
  netstrings holding OK/NOTFOUND/TEMP/PERM);
* a stream of valid requests gets exactly one reply per request, in order;
* how the stream is cut into reads never changes the replies;
* replies come back in request order when lookups answer asynchronously in any order.

Example counts are small by default; see fuzz/README.md to run them longer
(``SRSD_FUZZ_PROFILE=long``).
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from srsd.config import parse_config
from srsd.protocols.socketmap import SocketmapFactory
from srsd.protocols.tcp_table import TcpTableFactory
from srsd.service import Daemon, endpoint_specs
from tests.lookup_clients import netstring, tcp_quote

# -- settings -----------------------------------------------------------------------

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("srsd-quick", max_examples=60, **_COMMON)
settings.register_profile("srsd-long", max_examples=5_000, **_COMMON)
settings.register_profile("srsd-soak", max_examples=100_000, **_COMMON)
PROFILE = os.environ.get("SRSD_FUZZ_PROFILE", "quick")
FUZZ = settings(settings.get_profile(f"srsd-{PROFILE}"))

LIMIT = 256  # limits.max_request_bytes: the smallest allowed, so over-long requests are common

# -- the daemon under test ------------------------------------------------------------


class Harness:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.specs = {spec.name: spec for spec, _ in endpoint_specs(daemon.config)}
        self.failures: list[dict] = []

    def observe(self, event: dict) -> None:
        if event.get("log_failure") is not None:
            self.failures.append(event)

    def factory(self, name: str):
        return self.specs[name].make_factory(self.daemon)

    def run(self, name: str, chunks: list[bytes], factory=None) -> tuple[bytes, bool]:
        """Feed *chunks* to a new connection; return (all output, closed by server)."""
        factory = factory or self.factory(name)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        try:
            for chunk in chunks:
                if transport.disconnecting:
                    break  # a real transport stops reading after loseConnection
                proto.dataReceived(chunk)
        finally:
            proto.connectionLost(None)
        failures, self.failures[:] = list(self.failures), []
        assert not failures, "logged failures:\n" + "\n".join(f["log_failure"].getTraceback() for f in failures)
        return transport.value(), transport.disconnecting


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    secrets = tmp_path_factory.mktemp("fuzz") / "secrets"
    secrets.write_text("fuzz-secret\nold-secret\n")
    config = parse_config(
        {
            "srs": {"domain": "fwd.example", "secrets_file": str(secrets), "local_domains": ["local.example"]},
            "limits": {"max_request_bytes": LIMIT},
            # No reactor runs here, so no store call could finish: the adapters are fuzzed,
            # the alias form's parser answers without a store (tests/unit/test_srs_alias.py).
            "store": {"backend": "none"},
        }
    )
    h = Harness(Daemon(config))
    globalLogPublisher.addObserver(h.observe)
    yield h
    globalLogPublisher.removeObserver(h.observe)


# -- strategies -----------------------------------------------------------------------

_TOKENS = [
    b"get ",
    b"get",
    b"put ",
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"%",
    b"%4",
    b"%41",
    b"%zz",
    b"%0A",
    b"%00",
    b"@",
    b"SRS0=",
    b"SRS1=",
    b"SRS0+",
    b"srs0=",
    b"=",
    b"==",
    b"JN=",
    b"abcd=",
    b"fwd.example",
    b"FWD.example",
    b"remote.example",
    b"local.example",
    b"user",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"a" * 100,
    b"b" * 250,
    b"x" * 300,
    b":",
    b",",
    b"0",
    b"5",
    b"12",
    b"256",
    b"257",
    b"9999999",
    b"forward ",
    b"reverse ",
    b"forward",
    b"nosuch ",
]
token_soup = st.lists(st.sampled_from(_TOKENS) | st.binary(max_size=20), max_size=60).map(b"".join)
junk = st.one_of(st.binary(max_size=1500), token_soup)

_local = st.text(st.characters(codec="utf-8", exclude_characters="@\x00"), min_size=1, max_size=30)
_domain = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True)


def _srs_like(parts):
    tag, sep, h, tt, dom, loc, hop = parts
    if tag == "SRS1":
        return f"SRS1{sep}{h}={hop}=={h}={tt}={dom}={loc}"
    return f"{tag}{sep}{h}={tt}={dom}={loc}"


_srs_local = st.tuples(
    st.sampled_from(["SRS0", "SRS1", "srs0", "SRS2"]),
    st.sampled_from("=+-"),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-", min_size=0, max_size=6),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567a", min_size=0, max_size=3),
    _domain,
    _local,
    _domain | st.just("6ppn"),
).map(_srs_like)
addresses = st.one_of(
    st.builds(
        lambda loc, dom: f"{loc}@{dom}",
        _local | _srs_local,
        _domain | st.sampled_from(["fwd.example", "local.example"]),
    ),
    st.text(max_size=40),
    st.sampled_from(
        ["", "@", "user", "@remote.example", "a@b@c.example", "SRS0=Fl1s=JN=example.com=alice@fwd.example"]
    ),
)
map_names = st.sampled_from(["forward", "reverse"])


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """*data* cut at the positions *cuts* (no empty chunks)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def cuts_for(data: bytes):
    return st.lists(st.integers(0, max(len(data), 1)), max_size=max(1, min(len(data), 40)))


# -- reply checks ---------------------------------------------------------------------

_TCP_REPLY = re.compile(rb"(200|400|500) \S*\n")


def tcp_replies(out: bytes) -> list[bytes]:
    replies = out.splitlines(keepends=True)
    for reply in replies:
        assert _TCP_REPLY.fullmatch(reply), f"malformed tcp_table reply {reply!r}"
    return replies


_SM_PAYLOAD = re.compile(rb"OK .*|NOTFOUND |TEMP .*|TIMEOUT .*|PERM .*", re.DOTALL)


def socketmap_replies(out: bytes) -> list[bytes]:
    replies, pos = [], 0
    while pos < len(out):
        m = re.compile(rb"(0|[1-9][0-9]{0,8}):").match(out, pos)
        assert m, f"malformed netstring length at {pos}: {out[pos : pos + 40]!r}"
        end = m.end() + int(m.group(1))
        assert out[end : end + 1] == b",", f"netstring without comma: {out[pos : end + 1]!r}"
        payload = out[m.end() : end]
        assert _SM_PAYLOAD.fullmatch(payload), f"socketmap reply {payload!r}"
        replies.append(payload)
        pos = end + 1
    return replies


def tcp_request(key: str) -> bytes:
    return b"get " + tcp_quote(key) + b"\n"


def sm_request(map_name: str, key: str) -> bytes:
    return netstring(f"{map_name} {key}".encode("utf-8", "surrogatepass"))


# -- tcp_table ------------------------------------------------------------------------


@FUZZ
@given(data=junk, draw=st.data())
def test_tcp_table_random_bytes(harness, data, draw):
    cuts = draw.draw(cuts_for(data))
    for name in ("tcp_forward", "tcp_reverse"):
        whole, closed = harness.run(name, [data])
        assert not closed, "tcp_table closed a connection"
        replies = tcp_replies(whole)
        # every complete line gets one answer; an unfinished one only once it is over the limit
        tail = data.rsplit(b"\n", 1)[-1]
        assert len(replies) == data.count(b"\n") + (len(tail) > LIMIT), (len(replies), data)
        assert not any(r.startswith(b"400 ") for r in replies), "TEMP for a request: internal error?"
        pieces, _ = harness.run(name, chunked(data, cuts))
        assert pieces == whole, "chunking changed the replies"


@FUZZ
@given(keys=st.lists(addresses, max_size=30), map_name=map_names, draw=st.data())
def test_tcp_table_valid_requests(harness, keys, map_name, draw):
    keys = [k for k in keys if len(tcp_request(k)) <= LIMIT]
    stream = b"".join(tcp_request(k) for k in keys)
    name = f"tcp_{map_name}"
    whole, _ = harness.run(name, [stream])
    replies = tcp_replies(whole)
    assert len(replies) == len(keys)
    assert not any(r.startswith(b"400 ") for r in replies)
    # one request per connection answers the same as pipelined ones, in order
    singles = [harness.run(name, [tcp_request(k)])[0] for k in keys]
    assert replies == singles
    pieces, _ = harness.run(name, chunked(stream, draw.draw(cuts_for(stream))))
    assert pieces == whole


@FUZZ
@given(key=addresses, extra=st.integers(-3, 3), cr=st.booleans(), draw=st.data())
def test_tcp_table_lines_near_the_limit(harness, key, extra, cr, draw):
    """Lines of LIMIT-3 .. LIMIT+3 bytes, with or without CR, cut anywhere."""
    body = (b"get " + tcp_quote(key) + b"@remote.example")[: LIMIT + extra]
    body = body + b"x" * (LIMIT + extra - len(body))
    line = body + (b"\r\n" if cr else b"\n")
    stream = line + b"get after@remote.example\n"
    whole, _ = harness.run("tcp_forward", [stream])
    assert len(tcp_replies(whole)) == 2
    near_the_end = st.integers(len(line) - 3, len(line))  # where the limit checks differ
    cuts = draw.draw(st.lists(near_the_end | st.integers(0, len(stream)), max_size=4))
    pieces, _ = harness.run("tcp_forward", chunked(stream, cuts))
    assert pieces == whole, "chunking changed the replies"


def test_tcp_table_crlf_line_at_the_limit_split_before_newline(harness):
    """Found by test_tcp_table_lines_near_the_limit (srsd-long): a CRLF line of exactly
    LIMIT bytes before its CR is served when it arrives in one read, refused as too
    long when the read ends between CR and LF."""
    line = b"get " + b"u" * (LIMIT - 4 - len(b"@remote.example")) + b"@remote.example"
    assert len(line) == LIMIT
    whole, _ = harness.run("tcp_forward", [line + b"\r\n"])
    split, _ = harness.run("tcp_forward", [line + b"\r", b"\n"])
    assert split == whole, "the answer depends on where a read ends"


# -- socketmap ------------------------------------------------------------------------


@FUZZ
@given(data=junk, draw=st.data())
def test_socketmap_random_bytes(harness, data, draw):
    whole, closed = harness.run("socketmap", [data])
    replies = socketmap_replies(whole)
    perms = [r for r in replies if r.startswith(b"PERM ") and b"unknown map" not in r]
    if perms:  # framing lost: PERM is the last reply and the connection is closed
        assert perms == [replies[-1]] and closed, replies
    else:
        assert not closed
    assert not any(r.startswith(b"TEMP ") for r in replies), "TEMP for a request: internal error?"
    pieces, closed_too = harness.run("socketmap", chunked(data, draw.draw(cuts_for(data))))
    assert (pieces, closed_too) == (whole, closed), "chunking changed the replies"


@FUZZ
@given(requests=st.lists(st.tuples(map_names, addresses), max_size=30), draw=st.data())
def test_socketmap_valid_requests(harness, requests, draw):
    requests = [(m, k) for m, k in requests if len(sm_request(m, k)) <= LIMIT]
    stream = b"".join(sm_request(m, k) for m, k in requests)
    whole, closed = harness.run("socketmap", [stream])
    assert not closed
    replies = socketmap_replies(whole)
    assert len(replies) == len(requests)
    assert all(r.startswith((b"OK ", b"NOTFOUND ")) for r in replies), replies
    singles = [harness.run("socketmap", [sm_request(m, k)])[0] for m, k in requests]
    assert whole == b"".join(singles)
    pieces, _ = harness.run("socketmap", chunked(stream, draw.draw(cuts_for(stream))))
    assert pieces == whole


@FUZZ
@given(
    items=st.lists(
        st.one_of(
            st.tuples(map_names, addresses).map(lambda t: ("ok", sm_request(*t))),
            st.integers(LIMIT + 1, 3 * LIMIT).map(lambda n: ("big", b"%d:" % n + b"f" * n + b",")),
            st.sampled_from([b"nosuch x@y.example", b"", b"Forward a@b.example"]).map(lambda p: ("map", netstring(p))),
        ),
        max_size=20,
    ),
    draw=st.data(),
)
def test_socketmap_oversize_and_unknown_maps_stay_in_frame(harness, items, draw):
    stream = b"".join(raw for _, raw in items)
    whole, closed = harness.run("socketmap", [stream])
    assert not closed
    replies = socketmap_replies(whole)
    assert len(replies) == len(items)
    for (kind, _), reply in zip(items, replies, strict=True):
        if kind == "big":
            assert reply == b"NOTFOUND "
        elif kind == "map":
            assert reply.startswith(b"PERM ")
        else:
            assert reply.startswith((b"OK ", b"NOTFOUND "))
    pieces, _ = harness.run("socketmap", chunked(stream, draw.draw(cuts_for(stream))))
    assert pieces == whole


# -- asynchronous lookups: order --------------------------------------------------------


@FUZZ
@given(
    requests=st.lists(st.tuples(map_names, addresses), min_size=1, max_size=20),
    asynchronous=st.data(),
)
def test_replies_keep_request_order_with_async_lookups(harness, requests, asynchronous):
    requests = [(m, k) for m, k in requests if len(sm_request(m, k)) <= LIMIT]
    pending: list[tuple[Deferred, str, str]] = []
    is_async = asynchronous.draw(st.lists(st.booleans(), min_size=len(requests), max_size=len(requests)))
    flags = iter(is_async)

    def lookup(map_name, key):
        if next(flags, False):
            d = Deferred()
            pending.append((d, map_name, key))
            return d
        return harness.daemon.lookup(map_name, key)

    for name, stream, make in (
        ("socketmap", b"".join(sm_request(m, k) for m, k in requests), SocketmapFactory),
        ("tcp_forward", b"".join(tcp_request(k) for _, k in requests), TcpTableFactory),
    ):
        if make is SocketmapFactory:
            factory = make(lookup, name, max_request_bytes=LIMIT)
            expected, _ = harness.run(name, [stream])
        else:
            factory = make(lookup, name, "forward", max_request_bytes=LIMIT)
            keep = [k for _, k in requests if len(tcp_request(k)) <= LIMIT]
            expected, _ = harness.run(name, [b"".join(tcp_request(k) for k in keep)])
            stream = b"".join(tcp_request(k) for k in keep)
        flags = iter(is_async)
        pending.clear()
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(stream)
        order = asynchronous.draw(st.permutations(range(len(pending))))
        for i in order:
            d, map_name, key = pending[i]
            d.callback(harness.daemon.lookup(map_name, key))
        proto.connectionLost(None)
        assert transport.value() == expected, "async answers came out of order"
