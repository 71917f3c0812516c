"""Property tests of the milter adapter (see fuzz/README.md for the profiles).

* random bytes, and valid Postfix streams with random bytes spliced in: nothing
  raises, nothing is logged as a failure, every reply is a well-formed milter
  reply, and a stream that ends in an error ends in TEMPFAIL and a close;
* a valid Postfix stream cut into reads anywhere gets the same replies and the
  handler sees the same messages.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from srsd.mailauth.message import DeleteHeader, InsertHeader
from srsd.protocols.milter import MilterFactory
from tests.protocols import milter_wire as w

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("milter-quick", max_examples=60, **_COMMON)
settings.register_profile("milter-long", max_examples=5_000, **_COMMON)
settings.register_profile("milter-soak", max_examples=100_000, **_COMMON)
FUZZ = settings(settings.get_profile(f"milter-{os.environ.get('SRSD_FUZZ_PROFILE', 'quick')}"))


class Recorder:
    def __init__(self):
        self.calls = []

    def end_of_message(self, envelope, message):
        self.calls.append((envelope, message))
        return [InsertHeader(0, "X-Fuzz", f" {len(self.calls)}"), DeleteHeader("X-Old", 1)]


def run(chunks, max_message_bytes=4096):
    handler = Recorder()
    factory = MilterFactory(handler, "fuzz", reactor=Clock(), max_message_bytes=max_message_bytes)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    with capturedLogs() as events:
        for chunk in chunks:
            if transport.disconnecting:
                break
            proto.dataReceived(chunk)
        proto.connectionLost(None)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert not failures, failures[0]["log_failure"].getTraceback()
    assert not factory.connections
    return transport.value(), transport.disconnecting, handler.calls


def well_formed(out: bytes, closed: bool) -> None:
    replies = w.describe(out)  # asserts framing and each reply's shape
    assert all(r[0] in "Ocitmy" for r in replies), replies
    if closed and replies and replies[-1][0] == "t":
        assert "t" not in [r[0] for r in replies[:-1]]  # one TEMPFAIL, the last thing said


_headers = st.lists(
    st.tuples(
        st.sampled_from(["From", "To", "Subject", "X-Old", "DKIM-Signature"]),
        st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"")),
    ),
    max_size=5,
)
_bodies = st.lists(st.binary(max_size=300), max_size=3)
_messages = st.lists(st.tuples(_headers, _bodies), min_size=1, max_size=3)


def stream_of(messages) -> bytes:
    out = w.session_start()
    for i, (headers, body) in enumerate(messages):
        out += w.message_events(f"Q{i}", f"s{i}@x.example", ["r@y.example"], headers, body, helo_name=None)
        out += w.ABORT
    return out + w.QUIT


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(data):
    out, closed, _ = run([data])
    well_formed(out, closed)


@FUZZ
@given(_messages, st.integers(0, 10_000), st.binary(min_size=1, max_size=30))
def test_valid_stream_with_junk_spliced_in(messages, where, junk):
    stream = stream_of(messages)
    where %= len(stream)
    out, closed, _ = run([stream[:where] + junk + stream[where:]])
    well_formed(out, closed)


@FUZZ
@given(_messages, st.lists(st.integers(1, 5000), max_size=30))
def test_any_chunking_same_result(messages, cuts):
    stream = stream_of(messages)
    points = sorted({c % len(stream) for c in cuts} - {0})
    bounds = [0, *points, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    whole = run([stream])
    split = run(chunks)
    assert whole == split
    out, closed, calls = whole
    well_formed(out, closed)
    assert closed  # QUIT
    assert [e.queue_id for e, _ in calls] == [f"Q{i}" for i, _ in enumerate(messages) if i < len(calls)]
