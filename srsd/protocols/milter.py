"""Sendmail milter protocol server, version 6 as Postfix speaks it (``smtpd_milters``,
``non_smtpd_milters``), without libmilter.

Postfix opens one connection per SMTP session (per message for local submission),
negotiates, then reports the session: CONNECT, HELO, and per message MAIL, RCPT...,
the header fields, the body in chunks of up to 64 KiB and end-of-message. srsd
asks for no DATA, EOH or unknown-command events and, where the MTA offers it, for
no reply to any event but end-of-message, so a message costs one round trip: the
MTA streams the events and waits only for the verdict. An MTA that cannot skip
replies gets CONTINUE, one write per read.

At end-of-message the factory's handler is called with an
:class:`~srsd.mailauth.message.Envelope` and a :class:`~srsd.mailauth.message.Message`; its actions
become replies, all in one write: header deletions (SMFIR_CHGHEADER with an empty
value) first, highest occurrence of each name first, so each counts fields of the
message as received even though Postfix applies each at once; then insertions
(SMFIR_INSHEADER) in the handler's order; then SMFIR_QUARANTINE for a
:class:`Quarantine` (Postfix holds the message), then CONTINUE. A :class:`Reject` or
:class:`TempFail` replaces all of it with SMFIR_REPLYCODE. ABORT drops the message
and keeps the connection's data (client, HELO, connect macros); a new MAIL may follow.

Mail is never lost to srsd: a handler that raises, fails or takes longer than
``timeout``, and a message over ``max_message_bytes``, are answered per
``on_error`` (``tempfail``: SMFIR_TEMPFAIL, Postfix answers the client 4xx and it
retries; ``continue``: the message passes unchanged). A stream that breaks the
protocol (bad framing, over-long packet, unknown or misplaced command) gets
SMFIR_TEMPFAIL and is closed; Postfix then applies ``milter_default_action``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger

from srsd.log_limit import LimitedLog
from srsd.mailauth.message import DeleteHeader, Envelope, InsertHeader, Message, Quarantine, Reject, TempFail
from srsd.protocols import milter_codec as mc
from srsd.protocols.base import EndpointFactory, EndpointProtocol
from srsd.transport_write import writer

__all__ = ["MilterFactory", "MilterProtocol", "DEFAULT_MACROS"]

log = Logger(namespace="srsd.milter")
limited = LimitedLog(log)

#: Macros srsd asks for in its OPTNEG reply, per stage. Postfix then sends these
#: instead of its milter_*_macros lists (for this milter only).
DEFAULT_MACROS: dict[int, str] = {
    mc.STAGE_CONNECT: "j {daemon_name} {daemon_addr} {client_addr} {client_name} _",
    mc.STAGE_HELO: "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    mc.STAGE_MAIL: "i {auth_type} {auth_authen} {auth_author} {mail_addr}",
    mc.STAGE_RCPT: "i {rcpt_addr}",
    mc.STAGE_DATA: "i",
    mc.STAGE_EOH: "i",
    mc.STAGE_EOM: "i",
}

#: header insert and change/delete
NEEDED_ACTIONS = mc.SMFIF_ADDHDRS | mc.SMFIF_CHGHDRS
#: asked for when offered (Postfix and Sendmail do): DMARC quarantine (dmarc.action)
OPTIONAL_ACTIONS = mc.SMFIF_QUARANTINE
#: steps asked for when the MTA offers them: skip what srsd does not use, reply to
#: nothing before end-of-message, and header values exactly as received
WANTED_PROTOCOL = (
    mc.SMFIP_NOUNKNOWN
    | mc.SMFIP_NODATA
    | mc.SMFIP_NOEOH
    | mc.SMFIP_NR_CONN
    | mc.SMFIP_NR_HELO
    | mc.SMFIP_NR_MAIL
    | mc.SMFIP_NR_RCPT
    | mc.SMFIP_NR_DATA
    | mc.SMFIP_NR_UNKN
    | mc.SMFIP_NR_EOH
    | mc.SMFIP_NR_HDR
    | mc.SMFIP_NR_BODY
    | mc.SMFIP_HDR_LEADSPC
)
MAX_VERSION = 6

#: big enough for Postfix's default message_size_limit (10240000) with room to spare
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024

_CONNECTION_STAGES = frozenset((mc.CONNECT, mc.HELO))
_STAGE_ORDER = (mc.CONNECT, mc.HELO, mc.MAIL, mc.RCPT, mc.DATA, mc.HEADER, mc.EOH, mc.BODY, mc.BODYEOB)
_LF = re.compile(r"\r?\n")

# message stages
_ENVELOPE = "envelope"  # after MAIL
_HEADERS = "headers"  # after the first header
_BODY = "body"  # after EOH or the first body chunk


def _path(arg: str) -> str:
    """``<a@b>`` -> ``a@b``; ``<>`` -> ``""``."""
    return arg[1:-1] if arg.startswith("<") and arg.endswith(">") else arg


class MilterProtocol(EndpointProtocol):
    factory: MilterFactory

    def __init__(self) -> None:
        super().__init__()
        self._decoder: mc.PacketDecoder | None = None
        self._negotiated = False
        self._no_reply: frozenset[str] = frozenset()
        self._leading_space = False
        self._can_quarantine = False
        self._closed = False
        self._quit = False
        self._pending: Deferred | None = None  # the handler's answer at end-of-message
        self._pending_queue_id = ""
        self._serial = 0  # end-of-message count: a late answer must not be written twice
        self._reset_connection()

    # -- state ---------------------------------------------------------------------------

    def _reset_connection(self) -> None:
        self._connected = False
        self._client_address = ""
        self._client_name = ""
        self._helo = ""
        self._macros: dict[str, dict[str, str]] = {}
        self._reset_message()

    def _reset_message(self, keep_stage: str = "") -> None:
        self._stage: str | None = None
        self._mail_from = ""
        self._recipients: list[str] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._oversize = False
        for stage in [s for s in self._macros if s not in _CONNECTION_STAGES and s != keep_stage]:
            del self._macros[stage]

    # -- connection --------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        f = self.factory
        self._decoder = mc.PacketDecoder(f.max_packet_bytes, f.max_header_bytes, mc.MAX_BODY_CHUNK)
        self._write = writer(self.transport)  # a reply goes out now, not on the next reactor pass
        if self.overloaded:
            # Postfix sees a failed handshake and applies milter_default_action.
            self._closed = True
            self._write(mc.TEMPFAIL)
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        super().connectionLost(reason)
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            log.info(
                "{endpoint}: connection closed while the message {queue_id} was being handled",
                endpoint=self.factory.name,
                queue_id=self._pending_queue_id,
            )
            pending.cancel()
        self._reset_connection()
        self._decoder = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.last_active = time.monotonic()
        if self._closed or self._decoder is None:
            return
        replies: list[bytes] = []
        try:
            for command, payload in self._decoder.feed(data):
                reply = self._dispatch(command, payload)
                if reply:
                    replies.append(reply)
                if self._quit:
                    break
        except mc.MilterProtocolError as exc:
            self._protocol_error(exc, replies)
            return
        except Exception:  # a bug here must not pass the message on unhandled
            self.factory.stats.error("internal_error")
            log.failure("{endpoint}: internal error; answering TEMPFAIL and closing", endpoint=self.factory.name)
            self._abandon(replies)
            return
        if replies:
            self._write(b"".join(replies))
        if self._quit:
            self._closed = True
            self.transport.loseConnection()

    def _protocol_error(self, exc: mc.MilterProtocolError, replies: list[bytes]) -> None:
        self.factory.stats.protocol_error(type(exc).__name__)
        limited.warn(
            "milter_protocol",
            "{endpoint}: milter protocol error ({kind}: {error}); answering TEMPFAIL and closing",
            endpoint=self.factory.name,
            kind=type(exc).__name__,
            error=exc,
        )
        self._abandon(replies)

    def _abandon(self, replies: list[bytes]) -> None:
        """Write *replies* and a TEMPFAIL, and close."""
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._write(b"".join(replies) + mc.TEMPFAIL)
        self.transport.loseConnection()

    # -- commands --------------------------------------------------------------------------

    def _dispatch(self, command: str, payload: bytes) -> bytes | None:
        """Apply one command; its reply, if one is due now."""
        if self._pending is not None:
            raise mc.UnexpectedCommand(f"command {command!r} while the end-of-message reply is pending")
        value = mc.decode_command(command, payload)
        if not self._negotiated:
            if command != mc.OPTNEG:
                raise mc.UnexpectedCommand(f"command {command!r} before option negotiation")
            return self._negotiate(value)  # type: ignore[arg-type]
        if command == mc.MACRO:
            self._macros.setdefault(value.stage, {}).update(value.values)  # type: ignore[union-attr]
            return None
        if command == mc.ABORT:
            self._reset_message()
            return None
        if command == mc.QUIT:
            self._quit = True
            return None
        if command == mc.QUIT_NC:
            self._reset_connection()
            return None
        if command == mc.OPTNEG:
            raise mc.UnexpectedCommand("second option negotiation")
        if command == mc.CONNECT:
            if self._connected:
                raise mc.UnexpectedCommand("second CONNECT")
            self._connect(value)  # type: ignore[arg-type]
        elif not self._connected:
            raise mc.UnexpectedCommand(f"command {command!r} before CONNECT")
        elif command == mc.BODYEOB:
            return self._end_of_message(value)  # type: ignore[arg-type]
        else:
            self._message_event(command, value)
        return None if command in self._no_reply else mc.CONTINUE

    def _negotiate(self, offer: mc.OptNeg) -> bytes:
        if offer.version < 2:
            raise mc.NegotiationFailed(f"the MTA speaks milter protocol {offer.version}; srsd needs 2 or later")
        if offer.actions & NEEDED_ACTIONS != NEEDED_ACTIONS:
            raise mc.NegotiationFailed(f"the MTA does not let filters add and change headers ({offer.actions:#x})")
        actions = NEEDED_ACTIONS | (OPTIONAL_ACTIONS & offer.actions)
        self._can_quarantine = bool(actions & mc.SMFIF_QUARANTINE)
        macros = self.factory.macros
        if macros and offer.actions & mc.SMFIF_SETSYMLIST:
            actions |= mc.SMFIF_SETSYMLIST
        else:
            macros = None
        protocol = WANTED_PROTOCOL & offer.protocol
        self._no_reply = frozenset(cmd for cmd, flag in mc.NO_REPLY_FLAGS.items() if protocol & flag)
        self._leading_space = bool(protocol & mc.SMFIP_HDR_LEADSPC)
        self._negotiated = True
        return mc.encode_optneg(min(offer.version, MAX_VERSION), actions, protocol, macros)

    def _connect(self, connect: mc.Connect) -> None:
        self._connected = True
        self._client_name = connect.hostname
        self._client_address = connect.address if connect.family in "46" else ""

    def _message_event(self, command: str, value: Any) -> None:
        stage = self._stage
        if command == mc.HEADER:
            if stage not in (_ENVELOPE, _HEADERS):
                raise mc.UnexpectedCommand(f"header field outside a message's header (stage {stage})")
            self._stage = _HEADERS
            self._add_header(value)
        elif command == mc.BODY:
            if stage is None:
                raise mc.UnexpectedCommand("body chunk before MAIL")
            self._stage = _BODY
            self._add_body(value.data)
        elif command == mc.RCPT:
            if stage != _ENVELOPE:
                raise mc.UnexpectedCommand(f"RCPT outside the envelope (stage {stage})")
            if value.args:
                self._recipients.append(_path(value.args[0]))
        elif command == mc.MAIL:
            if stage not in (None, _ENVELOPE):
                raise mc.UnexpectedCommand(f"MAIL inside a message (stage {stage})")
            self._reset_message(keep_stage=mc.MAIL)  # its macros came just before it
            self._stage = _ENVELOPE
            self._mail_from = _path(value.args[0]) if value.args else ""
        elif command == mc.HELO:
            if stage not in (None, _ENVELOPE):
                raise mc.UnexpectedCommand(f"HELO inside a message (stage {stage})")
            self._helo = value.name
        elif command == mc.EOH:
            if stage not in (_ENVELOPE, _HEADERS):
                raise mc.UnexpectedCommand(f"end of headers outside a message's header (stage {stage})")
            self._stage = _BODY
        elif command == mc.DATA:
            if stage != _ENVELOPE:
                raise mc.UnexpectedCommand(f"DATA outside the envelope (stage {stage})")
        elif command == mc.UNKNOWN:
            if stage not in (None, _ENVELOPE):
                raise mc.UnexpectedCommand(f"unknown SMTP command inside a message (stage {stage})")

    def _count(self, size: int) -> bool:
        """Count *size* more bytes of message; False once it is over the limit."""
        self._size += size
        if not self._oversize and self._size > self.factory.max_message_bytes:
            self._oversize = True
            self._headers, self._body = [], []  # stop buffering; answered at end-of-message
        return not self._oversize

    def _add_header(self, header: mc.Header) -> None:
        if not self._count(len(header.name) + len(header.value) + 3):
            return
        value = header.value
        if not self._leading_space:
            value = " " + value  # the MTA ate one space after the colon
        if "\n" in value:
            value = _LF.sub("\r\n", value)  # folded lines arrive joined by a bare LF
        self._headers.append((header.name, value))

    def _add_body(self, data: bytes) -> None:
        if data and self._count(len(data)):
            self._body.append(data)

    # -- end of message ------------------------------------------------------------------

    def _queue_id(self) -> str:
        for stage in (mc.BODYEOB, mc.BODY, mc.EOH, mc.HEADER, mc.DATA, mc.RCPT, mc.MAIL):
            queue_id = self._macros.get(stage, {}).get("i")
            if queue_id:
                return queue_id
        return "(no queue id)"

    def _envelope(self) -> Envelope:
        macros: dict[str, str] = {}
        for stage in _STAGE_ORDER:
            macros.update(self._macros.get(stage, {}))
        for stage, values in self._macros.items():
            if stage not in _STAGE_ORDER:
                macros.update(values)
        return Envelope(
            client_address=self._client_address,
            client_name=self._client_name,
            helo=self._helo,
            mail_from=self._mail_from,
            recipients=list(self._recipients),
            macros=macros,
        )

    def _end_of_message(self, eom: mc.EndOfMessage) -> bytes | None:
        if self._stage is None:
            raise mc.UnexpectedCommand("end of message before MAIL")
        self._add_body(eom.data)
        queue_id = self._queue_id()
        factory = self.factory
        started = time.perf_counter()
        if self._oversize:
            factory.stats.error("too_large")
            log.warn(
                "{endpoint}: message {queue_id} is larger than max_message_bytes ({limit}): "
                "not handled, answering {action}",
                endpoint=factory.name,
                queue_id=queue_id,
                limit=factory.max_message_bytes,
                action=factory.on_error,
            )
            self._reset_message()
            return self._error_reply()
        envelope, message = self._envelope(), Message(self._headers, b"".join(self._body))
        self._reset_message()
        self._serial += 1
        serial = self._serial
        try:
            result = factory.handler.end_of_message(envelope, message)
        except Exception:
            factory.stats.error("internal_error")
            log.failure("{endpoint}: handler failed on message {queue_id}", endpoint=factory.name, queue_id=queue_id)
            return self._error_reply()
        if not isinstance(result, Deferred):
            factory.stats.since(started)
            return self._encode_actions(result, queue_id)
        if factory.timeout > 0:
            result.addTimeout(factory.timeout, factory.reactor)
        result.addCallbacks(
            self._encode_actions, self._failed, callbackArgs=(queue_id,), errbackArgs=(serial, queue_id)
        )
        result.addCallback(factory.stats.since_later, started)
        # A Deferred that has already fired answers now, in this read's one write
        # and after the replies before it; otherwise the answer is written later.
        now: list[bytes] = []
        result.addCallback(lambda reply: now.append(reply) if not now else self._deliver(reply, serial))
        if now:
            return now[0]
        now.append(b"")  # from here on the callback writes
        self._pending = result
        self._pending_queue_id = self._queue_id()  # the message state is reset meanwhile
        return None

    def _deliver(self, reply: bytes, serial: int) -> None:
        """Write the end-of-message *reply*, unless it is stale or nobody listens."""
        if serial != self._serial or self._closed:
            return
        self._pending = None
        self.last_active = time.monotonic()
        self._write(reply)

    def _failed(self, failure: Any, serial: int, queue_id: str) -> bytes:
        factory = self.factory
        if failure.check(CancelledError) and (serial != self._serial or self._closed):
            return b""  # we cancelled it: the connection went away
        if failure.check(TimeoutError):
            factory.stats.error("timeout")
            log.error(
                "{endpoint}: handler took longer than {timeout} s on message {queue_id}; answering {action}",
                endpoint=factory.name,
                timeout=factory.timeout,
                queue_id=queue_id,
                action=factory.on_error,
            )
        else:
            factory.stats.error("internal_error")
            log.failure(
                "{endpoint}: handler failed on message {queue_id}", failure, endpoint=factory.name, queue_id=queue_id
            )
        return self._error_reply()

    def _error_reply(self) -> bytes:
        return mc.TEMPFAIL if self.factory.on_error == "tempfail" else mc.CONTINUE

    def _encode_actions(self, actions: Iterable[Any], queue_id: str) -> bytes:
        """The end-of-message reply for the handler's *actions*; never raises."""
        try:
            inserts, deletes, holds = [], [], []
            for action in actions:
                if isinstance(action, InsertHeader):
                    inserts.append(
                        mc.encode_insert_header(
                            action.index, action.name, action.value, leading_space=self._leading_space
                        )
                    )
                elif isinstance(action, DeleteHeader):
                    deletes.append(action)
                elif isinstance(action, Quarantine):
                    holds = self._quarantine(action, queue_id)
                elif isinstance(action, Reject | TempFail):
                    return self._refusal(action, queue_id)
                else:
                    raise TypeError(f"not a milter action: {action!r}")
            # Postfix applies each deletion at once: the highest occurrence first keeps
            # every occurrence number pointing at the field the handler meant.
            deletes.sort(key=lambda d: (d.name.lower(), -d.occurrence))
            edits = [mc.encode_change_header(d.occurrence, d.name, "") for d in deletes]
        except Exception:
            log.failure(
                "{endpoint}: handler gave unusable actions for message {queue_id}",
                endpoint=self.factory.name,
                queue_id=queue_id,
            )
            return self._error_reply()
        log.debug(
            "{endpoint}: message {queue_id}: {i} header(s) inserted, {d} deleted",
            endpoint=self.factory.name,
            queue_id=queue_id,
            i=len(inserts),
            d=len(edits),
        )
        return b"".join(edits + inserts + holds) + mc.CONTINUE

    def _quarantine(self, action: Quarantine, queue_id: str) -> list[bytes]:
        """SMFIR_QUARANTINE for *action*, or nothing (the message passes, said in the
        log) when the MTA did not offer it: a 4xx would have it retried for ever."""
        if not self._can_quarantine:
            limited.warn("milter_quarantine", "{endpoint}: message {queue_id} should be held ({reason}), but the "
                         "MTA offered no quarantine action: passed on", endpoint=self.factory.name,
                         queue_id=queue_id, reason=action.reason)  # fmt: skip
            return []
        return [mc.encode_quarantine(action.reason)]

    def _refusal(self, action: Reject | TempFail, queue_id: str) -> bytes:
        log.info(
            "{endpoint}: message {queue_id} refused: {code} {enhanced} {reason}",
            endpoint=self.factory.name,
            queue_id=queue_id,
            code=action.code,
            enhanced=action.enhanced,
            reason=action.reason,
        )
        try:
            return mc.encode_reply_code(action.code, action.enhanced, action.reason)
        except ValueError as exc:
            log.warn("{endpoint}: {error}; answering without a text", endpoint=self.factory.name, error=exc)
            return mc.REJECT if isinstance(action, Reject) else mc.TEMPFAIL


class MilterFactory(EndpointFactory):
    """A milter endpoint.

    :param handler: has ``end_of_message(envelope, message)`` returning a list of
        :data:`srsd.mailauth.message.Action` or a Deferred firing with one; it reads the
        current configuration itself, so a reload needs no new factory.
    :param name: the endpoint's name for logs.
    :param on_error: ``"tempfail"`` (Postfix answers 4xx, the client retries) or
        ``"continue"`` (the message passes unchanged) when the handler raises, fails
        or times out, or the message is over *max_message_bytes*; or a function
        returning one, asked each time (``lambda: daemon.config.dkim.on_error``
        follows reloads).
    :param timeout: seconds the handler may take per message (0 = no limit); keep
        it below Postfix's ``milter_content_timeout`` (300 s).
    :param max_message_bytes: header fields plus body buffered per message; keep it
        above Postfix's ``message_size_limit``.
    :param macros: macro names asked for per stage (``milter_codec.STAGE_*`` ->
        ``"i {auth_authen}"``) in the negotiation; None leaves Postfix's
        ``milter_*_macros`` in force.
    :param max_packet_bytes: longest packet other than a header field or body chunk.
    :param max_header_bytes: longest header field packet (Postfix's
        ``header_size_limit`` is 102400).
    :param reactor: for the handler timeout (tests pass a ``Clock``).
    :param limits: ``max_connections``, ``idle_timeout`` (see :class:`EndpointFactory`).
    """

    protocol = MilterProtocol

    def __init__(
        self,
        handler: Any,
        name: str,
        *,
        on_error: str | Callable[[], str] = "tempfail",
        timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        macros: Mapping[int, str] | None = DEFAULT_MACROS,
        max_packet_bytes: int = mc.MAX_PACKET,
        max_header_bytes: int = mc.MAX_HEADER_PACKET,
        reactor: Any = None,
        **limits: Any,
    ) -> None:
        if not callable(on_error):
            _check_on_error(on_error)
        super().__init__(name, **limits)
        if reactor is None:
            from twisted.internet import reactor
        self.handler = handler
        self._on_error = on_error
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.macros = dict(macros) if macros else None
        self.max_packet_bytes = max_packet_bytes
        self.max_header_bytes = max_header_bytes
        self.reactor = reactor

    @property
    def on_error(self) -> str:
        """``"tempfail"`` or ``"continue"``, read at each use (it may follow reloads)."""
        if callable(self._on_error):
            return _check_on_error(self._on_error())
        return self._on_error


def _check_on_error(value: str) -> str:
    if value not in ("tempfail", "continue"):
        raise ValueError(f"on_error must be 'tempfail' or 'continue', not {value!r}")
    return value
