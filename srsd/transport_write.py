"""Writing to a Twisted transport without waiting for the next reactor pass.

Twisted's ``FileDescriptor.write()`` only buffers: the bytes go out when epoll next
reports the descriptor writable, which costs two ``epoll_ctl`` calls and one more
``epoll_wait`` pass per write. Every reply srsd writes is small and the socket's
buffer is nearly always empty, so a reply is sent at once instead (lookups, policy
answers, milter replies, job frames to the DKIM job processes).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

__all__ = ["write_now", "writer"]


def writer(transport: Any) -> Callable[[bytes], None]:
    """The fastest correct way to write replies to *transport*: :func:`write_now` on
    Twisted's socket transports, the transport's own ``write`` elsewhere (an asyncio
    transport, :mod:`srsd.lookup_loop`, already sends at once when it can)."""
    if hasattr(transport, "writeSomeData"):
        return partial(write_now, transport)
    return transport.write


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but sent at once when nothing is queued before it.

    Twisted's write() only buffers and waits for the next reactor pass to send:
    two passes and two more epoll_ctl calls per lookup, ~5 µs of the ~20 µs a
    lookup costs (bench/README.md). This uses Twisted's FileDescriptor internals
    (``dataBuffer``, ``_tempDataBuffer``, ``writeSomeData``) when they are there
    and empty; anything else (a non-TCP/unix transport, a backlog, a closing
    connection) takes the normal path, as does whatever the socket did not take
    (write() then pauses the protocol, the transport's producer, if that backlog
    is over its bufferSize).
    """
    if (
        not getattr(transport, "dataBuffer", True)
        and not getattr(transport, "_tempDataBuffer", True)
        and getattr(transport, "connected", False)
        and not transport.disconnecting
    ):
        sent = transport.writeSomeData(data)
        if type(sent) is int:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)  # the remainder, or a lost connection, the usual way
