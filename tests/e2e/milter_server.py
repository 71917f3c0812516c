"""A minimal milter for the end-to-end tests: srsd's MilterFactory with a handler
that inserts ``X-Test: <queue id> <sender> <recipients>`` at the top of every message,
or, for a message whose Subject contains ``srsd-order``, the edits in ORDER_EDITS
(to pin down how Postfix applies insert indexes and deletions).

    python -m tests.e2e.milter_server ENDPOINT [ENDPOINT ...]

ENDPOINT is a Twisted endpoint string (``unix:/path:mode=666``,
``tcp:PORT:interface=127.0.0.1``). Prints ``milter ready`` once every endpoint listens.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, endpoints, reactor

from srsd.mailauth.message import DeleteHeader, InsertHeader
from srsd.protocols.milter import MilterFactory

READY = "milter ready"


ORDER_EDITS = [
    InsertHeader(0, "X-A", " first at 0"),
    InsertHeader(0, "X-B", " second at 0"),
    InsertHeader(1, "X-One", " at 1"),
    InsertHeader(3, "X-Three", " at 3"),
    DeleteHeader("X-Del", 1),
    DeleteHeader("X-Del", 3),
    InsertHeader(0, "X-Folded", " line one\r\n\tline two"),
]


class TagHandler:
    def end_of_message(self, envelope, message):
        names = " ".join(name for name, _ in message.headers)
        print(f"message {envelope.queue_id}: headers {names}; {len(message.body)} body bytes", flush=True)
        if any(name.lower() == "subject" and "srsd-order" in value for name, value in message.headers):
            return ORDER_EDITS
        recipients = ",".join(envelope.recipients)
        sender = envelope.mail_from or "<>"
        value = f" {envelope.queue_id} {sender} {recipients} helo={envelope.helo} client={envelope.client_address}"
        return [InsertHeader(0, "X-Test", value)]


def main(argv: list[str]) -> int:
    factory = MilterFactory(TagHandler(), "test-milter", timeout=10)
    listening = [endpoints.serverFromString(reactor, spec).listen(factory) for spec in argv]

    def ready(_):
        print(READY, flush=True)

    def failed(failure):
        print(f"cannot listen: {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    defer.gatherResults(listening, consumeErrors=True).addCallbacks(ready, failed)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
