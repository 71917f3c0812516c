"""Back-pressure in the lookup adapters (srsd/protocols/base.py), over StringTransport:
a connection stops being read while too many replies wait for it, and is read again
once they are out. tests/faults/test_hostile_clients.py shows the same on real sockets."""

from srsd.protocols.base import MAX_PENDING
from srsd.protocols.tcp_table import TcpTableFactory
from srsd.rewrite import FOUND, Answer
from tests.protocols.conftest import connect


def _factory(lookups):
    return TcpTableFactory(lookups, "tcp_forward", "forward")


def test_registered_as_its_transports_producer(lookups):
    proto, transport = connect(_factory(lookups))
    assert transport.producer is proto and transport.streaming


def test_reading_pauses_past_max_pending_replies_behind_a_slow_one(lookups):
    proto, transport = connect(_factory(lookups))
    proto.dataReceived(b"get slow:first\n" + b"get a@b.example\n" * (MAX_PENDING - 1))
    assert transport.producerState == "producing"  # MAX_PENDING waiting: at the bound
    proto.dataReceived(b"get a@b.example\n")
    assert transport.producerState == "paused"
    assert transport.value() == b""  # all behind the slow answer, in order

    lookups.pending["slow:first"].callback(Answer(FOUND, "first@x"))
    assert transport.producerState == "producing"
    replies = transport.value().split(b"\n")
    assert replies[0] == b"200 first@x" and len(replies) == MAX_PENDING + 2  # and the "" after the last


def test_transport_pause_and_resume_stop_and_restart_reading(lookups):
    proto, transport = connect(_factory(lookups))
    proto.pauseProducing()  # what the transport does past its bufferSize of unwritten replies
    assert transport.producerState == "paused"
    proto.resumeProducing()  # ... and once they are written
    assert transport.producerState == "producing"


def test_closing_while_paused_unregisters_so_the_close_completes(lookups):
    """Twisted's loseConnection() waits for a registered producer to go; a paused one
    is resumed when the buffer drains, and must let go then."""
    proto, transport = connect(_factory(lookups))
    proto.pauseProducing()
    transport.loseConnection()
    proto.resumeProducing()
    assert transport.producer is None
