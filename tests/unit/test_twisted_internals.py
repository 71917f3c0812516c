"""The private Twisted internals srsd relies on, checked against the installed Twisted.

pyproject.toml pins Twisted to the tested range; this fails first when a release
moves one of them, naming the one that moved:

- ``srsd.transport_write.write_now`` reads ``FileDescriptor.dataBuffer`` /
  ``_tempDataBuffer`` and calls ``writeSomeData`` (one send per reply, not two
  reactor passes), on sockets and on the DKIM job processes' stdin pipes
  (``process.ProcessWriter``, reached as ``Process.pipes[0]``);
- ``srsd.dns_async.ReactorExchange`` sends its queries with ``udp.Port.socket.sendto``
  (``Port.write`` re-checks the address text each time);
- ``srsd.workers`` builds ports with ``unix.Port._fromListeningDescriptor``, reads
  ``TCP*ServerEndpoint._port`` / ``_interface`` / ``_backlog`` and clears
  ``Port._shouldShutdown`` (a worker must not shut the shared socket down).
"""

from __future__ import annotations

import inspect
import os
import socket

from twisted.internet import abstract, endpoints, process, reactor, tcp, udp, unix
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from srsd.transport_write import write_now


def test_file_descriptor_buffers():
    fd = abstract.FileDescriptor(reactor)
    assert fd.dataBuffer == b"" and fd._tempDataBuffer == [] and fd.producer is None
    assert list(inspect.signature(tcp.Connection.writeSomeData).parameters) == ["self", "data"]


def test_write_now_sends_without_a_reactor_pass():
    """On a real connected TCP transport, write_now's bytes reach the peer before the
    reactor runs again (the internals are there and mean what write_now assumes)."""
    server, client = socket.socketpair()
    try:
        server.setblocking(False)
        transport = tcp.Connection(server, Protocol(), reactor)
        transport.connected = True  # what tcp.Server sets once accepted
        write_now(transport, b"200 x\n")
        client.settimeout(5)
        assert client.recv(100) == b"200 x\n"
        assert transport.dataBuffer == b"" and transport._tempDataBuffer == []
    finally:
        server.close()
        client.close()


def test_write_now_sends_to_a_process_pipe_without_a_reactor_pass():
    """The same on the writer of a child's stdin, as spawnProcess builds it."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # nothing written yet fails the read instead of hanging
    writer = process.ProcessWriter(reactor, None, 0, write_end, forceReadHack=True)
    try:
        assert writer.connected and not writer.disconnecting
        write_now(writer, b"frame")
        assert os.read(read_end, 100) == b"frame"
        assert writer.dataBuffer == b"" and writer._tempDataBuffer == []
    finally:
        writer.stopReading()
        os.close(write_end)
        os.close(read_end)


def test_endpoint_fields_workers_read():
    for cls in (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint):
        endpoint = cls(reactor, 10001, 50, "::1" if cls is endpoints.TCP6ServerEndpoint else "127.0.0.1")
        assert (endpoint._port, endpoint._backlog) == (10001, 50)
        assert endpoint._interface in ("127.0.0.1", "::1")


def test_ports_workers_build():
    assert callable(unix.Port._fromListeningDescriptor)
    assert tcp.Port._shouldShutdown is True
    port = tcp.Port(0, Factory(), interface="127.0.0.1")
    assert port._shouldShutdown is True


def test_udp_port_socket_sends_datagrams():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = udp.Port(0, DatagramProtocol(), "127.0.0.1", reactor=reactor)
        port.startListening()
        try:
            port.socket.sendto(b"query", receiver.getsockname())
            assert receiver.recv(100) == b"query"
        finally:
            port.stopListening()
    finally:
        receiver.close()
