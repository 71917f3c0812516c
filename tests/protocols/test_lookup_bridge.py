"""LookupBridge: srsd's Twisted-style lookup adapters on uvloop over a real loopback socket
(srsd/lookup_loop.py): answers in order when one comes later through a Deferred, a
half-closed client still gets every answer, TCP_NODELAY, and the connection count."""

import asyncio
import socket

from srsd.lookup_loop import LookupBridge, new_loop
from srsd.protocols.tcp_table import TcpTableFactory
from srsd.rewrite import FOUND, Answer


def serve_and_ask(factory, requests: bytes, fire=None) -> tuple[bytes, dict]:
    """Serve *factory* on 127.0.0.1, send *requests*, half-close, read until the server
    closes. *fire*: called on the loop 50 ms after sending (to fire Deferreds)."""
    loop = new_loop()
    seen = {}
    try:

        class Probe(LookupBridge):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                seen["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                super().connection_made(transport)
                seen["connections"] = len(factory.connections)

        def bridge():
            return Probe(factory)

        async def run() -> bytes:
            server = await loop.create_server(bridge, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(requests)
            await writer.drain()
            writer.write_eof()  # nc -N: no more requests, answers still wanted
            if fire is not None:
                loop.call_later(0.05, fire)
            data = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server closes
            writer.close()
            server.close()
            await asyncio.sleep(0.01)
            seen["after"] = len(factory.connections)
            return data

        return loop.run_until_complete(run()), seen
    finally:
        loop.close()


def test_answers_in_order_after_a_half_close(lookups):
    factory = TcpTableFactory(lookups, "tcp_forward", "forward", idle_timeout=0)
    data, seen = serve_and_ask(
        factory,
        b"get slow:x\nget a@b.example\nget boom\n",
        fire=lambda: lookups.pending["slow:x"].callback(Answer(FOUND, "later")),
    )
    assert data == b"200 later\n200 FORWARD(a@b.example)\n400 internal%20error\n"
    assert seen["nodelay"] == 1
    assert seen["connections"] == 1 and seen["after"] == 0


def test_lone_requests_take_the_fast_path(lookups):
    factory = TcpTableFactory(lookups, "tcp_forward", "forward", idle_timeout=0)
    data, _ = serve_and_ask(factory, b"get a@b.example\n")
    assert data == b"200 FORWARD(a@b.example)\n"
