"""Postfix policy delegation server (SMTPD_POLICY_README; ``check_policy_service``).

Request: ``name=value`` lines, each ending in ``\\n``, then an empty line. Reply:
``action=<action>`` and an empty line. Postfix keeps the connection for the next
request; replies go out in request order even when a later one is decided first.

A request that breaks the protocol -- a line without ``=``, more than
``max_attributes`` attributes, a line over ``max_line_bytes`` or a request over
``max_request_bytes`` -- is read to its empty line and answered with the service's
error action (DUNNO when the configuration only adds headers, ``DEFER_IF_PERMIT
4.3.0`` when it enforces; never a rejection), so the stream stays in step and the
connection stays open. Postfix never sends such requests: the default limits are
far above what its SMTP line limits allow.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from srsd.log_limit import LimitedLog
from srsd.protocols.base import LineBuffer, RequestFactory, RequestProtocol

__all__ = ["PolicyProtocol", "PolicyFactory", "encode_action"]

log = Logger(namespace="srsd.protocol")
limited = LimitedLog(log)


def encode_action(action: str) -> bytes:
    """``action=<action>\\n\\n``; a newline or NUL inside *action* (which would end
    the reply early) becomes a space."""
    safe = action.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    return b"action=" + safe.encode("utf-8", "replace") + b"\n\n"


class PolicyProtocol(RequestProtocol):
    factory: PolicyFactory

    def __init__(self) -> None:
        super().__init__()
        self._lines = LineBuffer()
        self._new_request()

    def _new_request(self) -> None:
        self._attrs: dict[str, str] = {}
        self._size = 0
        self._error = ""  # why the request being read is malformed

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        attrs = self._whole_request(data)
        if attrs is not None:
            self.send([self.respond(attrs)])
            return
        # +1: an unfinished line may still end in the "\r" of a CRLF (line_received drops it)
        lines, overflow = self._lines.feed(data, self.factory.max_line_bytes + 1)
        replies = []
        for line in lines:
            reply = self.line_received(line)
            if reply is not None:
                replies.append(reply)
        if overflow:
            self._size += overflow
            self._fail(f"attribute line longer than {self.factory.max_line_bytes} bytes")
        if replies:
            self.send(replies)

    def _whole_request(self, data: bytes) -> dict[str, str] | None:
        """The attributes of *data* when it is one whole, well-formed request and nothing
        of another is buffered (what Postfix sends in one segment); None: the line-by-line
        path reads it (CRs, a malformed or over-long line, several requests, a part).
        Both give the same attributes: :meth:`line_received`'s rules, checked at once."""
        factory = self.factory
        if (
            self._attrs
            or self._error
            or self._lines.partial
            or self._lines.discarding
            or not data.endswith(b"\n\n")
            or data.find(b"\n\n") != len(data) - 2
            or len(data) - 1 > factory.max_request_bytes
            or b"\r" in data
        ):
            return None
        lines = data[:-2].split(b"\n")
        limit = factory.max_line_bytes
        pairs = [line.partition(b"=") for line in lines]
        if any(not sep or not name or len(name) + 1 + len(value) > limit for name, sep, value in pairs):
            return None
        attrs = {name.decode("utf-8", "replace"): value.decode("utf-8", "replace") for name, _, value in pairs}
        return attrs if len(attrs) <= factory.max_attributes else None

    def _fail(self, reason: str) -> None:
        if not self._error:
            self._error = reason

    def line_received(self, line: bytes) -> bytes | Deferred | None:
        """Take one line (without its newline); the reply when it ends a request."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            attrs, error = self._attrs, self._error
            self._new_request()
            if error:
                return self.malformed(error, attrs)
            return self.respond(attrs)
        factory = self.factory
        self._size += len(line) + 1
        if self._error:
            return None
        if self._size > factory.max_request_bytes:
            self._fail(f"request longer than {factory.max_request_bytes} bytes")
        elif len(line) > factory.max_line_bytes:
            self._fail(f"attribute line longer than {factory.max_line_bytes} bytes")
        else:
            name, sep, value = line.partition(b"=")
            key = name.decode("utf-8", "replace")
            if not sep or not name:
                self._fail(f"not a name=value line: {line[:60]!r}")
            elif len(self._attrs) >= factory.max_attributes and key not in self._attrs:
                self._fail(f"more than {factory.max_attributes} attributes")
            else:
                # The last of repeated attributes wins (SMTPD_POLICY_README allows either).
                self._attrs[key] = value.decode("utf-8", "replace")
        return None

    # -- answering --------------------------------------------------------------

    def malformed(self, reason: str, attrs: dict[str, str]) -> bytes:
        action = self.factory.service.error_action()
        self.factory.stats.protocol_error("malformed")
        limited.warn(
            "policy_malformed",
            "{endpoint}: malformed policy request from {peer} ({reason}; instance={instance!r}): {action}",
            endpoint=self.factory.name,
            peer=self._peer(),
            reason=reason,
            instance=attrs.get("instance", ""),
            action=action,
        )
        return encode_action(action)

    def temporary_failure(self) -> bytes:
        return encode_action(self.factory.service.error_action())

    def describe(self, args: tuple) -> str:
        return "policy request"

    def respond(self, attrs: dict[str, str]) -> bytes | Deferred:
        """Ask the service; never raises: a failure inside becomes the error action."""
        if self.overloaded:
            return self.temporary_failure()
        return self.answer(self.factory.service.handle, (attrs,), encode_action)

    def _peer(self) -> str:
        try:
            peer = self.transport.getPeer()
        except Exception:
            return "?"
        host = getattr(peer, "host", None)
        return f"{host}:{peer.port}" if host is not None else str(peer)


class PolicyFactory(RequestFactory):
    """A policy delegation endpoint.

    :param service: a :class:`~srsd.policy_service.PolicyService` (anything with
        ``handle(attrs) -> Deferred[str] | str`` and ``error_action() -> str``).
    :param name: the endpoint's name for logs.
    :param max_request_bytes: longest request (all lines); Postfix's run ~0.5-1 KB,
        at most ~8 KB with its default 2048-byte SMTP line limit.
    :param max_line_bytes: longest ``name=value`` line.
    :param max_attributes: distinct attributes per request (Postfix 3.7 sends ~30).
    :param limits: ``max_connections``, ``idle_timeout`` (see :class:`RequestFactory`).
    """

    protocol = PolicyProtocol

    def __init__(
        self,
        service: Any,
        name: str,
        *,
        max_request_bytes: int = 16384,
        max_line_bytes: int = 4096,
        max_attributes: int = 100,
        **limits: Any,
    ) -> None:
        super().__init__(name, max_request_bytes=max_request_bytes, **limits)
        self.service = service
        self.max_line_bytes = max_line_bytes
        self.max_attributes = max_attributes
