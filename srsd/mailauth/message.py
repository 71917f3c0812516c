"""What the milter hands the mail-authentication logic, and what it gets back.

Shared by :mod:`srsd.protocols.milter` (the wire) and :mod:`srsd.mailauth.handler`
(the decisions: verify, DKIM-sign, ARC-seal, DMARC). No sockets, no reactor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "HeaderField",
    "message_bytes",
    "raw_value",
    "split_message",
    "Envelope",
    "Message",
    "InsertHeader",
    "DeleteHeader",
    "Reject",
    "TempFail",
    "Quarantine",
    "Action",
]

HeaderField = tuple[str, str]
"""(name, value) as on the wire: the value is everything after the colon (leading
space and folding kept)."""


def message_bytes(headers: Sequence[HeaderField], body: bytes) -> bytes:
    """RFC 5322 bytes, as DKIM canonicalizes them: CRLF line ends (a bare LF in a
    folded value becomes CRLF) from (name, value) fields and a CRLF body."""
    lines = [name.encode("utf-8", "surrogateescape") + b":" + raw_value(value) + b"\r\n" for name, value in headers]
    return b"".join(lines) + b"\r\n" + body


def raw_value(value: str) -> bytes:
    """A field value as the message carries it: CRLF line ends (a bare LF in a folded
    value becomes CRLF) and undecodable bytes (kept as lone surrogates) back as bytes."""
    if "\n" in value:
        value = value.replace("\r\n", "\n").replace("\n", "\r\n")
    return value.encode("utf-8", "surrogateescape")


def split_message(message: bytes) -> tuple[list[HeaderField], bytes]:
    """RFC 5322 bytes (CRLF or LF line ends) as the milter would hold them: (name,
    value) fields, values with their folding and without the final line end, and the
    body; :func:`message_bytes` undoes it (tests, benchmarks, fuzz targets; the milter
    gets the fields one by one from Postfix).

    :raises ValueError: a header line that is neither a field nor a continuation.
    """
    import dkim  # here: the policy service reads HeaderField without loading dkimpy

    try:
        fields, body = dkim.rfc822_parse(message)
    except (dkim.MessageFormatError, IndexError) as exc:  # IndexError: a continuation line first
        raise ValueError(str(exc) or "a continuation line before any field") from None
    headers = [(name.decode("utf-8", "surrogateescape"),
                value.decode("utf-8", "surrogateescape").removesuffix("\r\n").removesuffix("\n"))
               for name, value in fields]  # fmt: skip
    return headers, body


@dataclass
class Envelope:
    """The SMTP transaction as the milter saw it (milter protocol v6, Postfix).

    ``client_address`` is the connecting IP (Postfix presents local submission through
    ``non_smtpd_milters`` as 127.0.0.1 with HELO ``localhost``), ``helo`` the
    HELO/EHLO name, ``mail_from`` the envelope sender without angle brackets
    ("" = null sender), ``recipients`` in RCPT order (before Postfix's virtual
    alias expansion), ``macros`` Postfix's milter macros by name (``i``, ``j``,
    ``{auth_authen}``, ``{daemon_name}``, ...).
    """

    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    mail_from: str = ""
    recipients: list[str] = field(default_factory=list)
    macros: dict[str, str] = field(default_factory=dict)

    @property
    def queue_id(self) -> str:
        return self.macros.get("i", "")

    @property
    def authenticated(self) -> bool:
        """True when the client authenticated with SASL (``{auth_authen}`` set)."""
        return bool(self.macros.get("{auth_authen}"))


@dataclass
class Message:
    """The message as received: header fields in order, as (name, value) with the
    value exactly as on the wire minus the name and colon (folding kept, CRLF line
    ends), and the body with CRLF line ends."""

    headers: list[HeaderField]
    body: bytes

    def as_bytes(self) -> bytes:
        """RFC 5322 bytes (CRLF), as DKIM canonicalizes them (:func:`message_bytes`)."""
        return message_bytes(self.headers, self.body)


@dataclass(frozen=True)
class InsertHeader:
    """Insert a header field at 0-based *index* among the fields (0 = top).
    Milter SMFIR_INSHEADER; *value* without the leading space after the colon
    unless it is meant to be there."""

    index: int
    name: str
    value: str


@dataclass(frozen=True)
class DeleteHeader:
    """Delete the *occurrence*-th (1-based) field called *name* (SMFIR_CHGHEADER
    with an empty value). Postfix applies each at once: delete from the highest
    occurrence down."""

    name: str
    occurrence: int


@dataclass(frozen=True)
class Reject:
    """Refuse the message permanently (SMFIR_REPLYCODE 5xx)."""

    reason: str
    code: str = "550"
    enhanced: str = "5.7.1"


@dataclass(frozen=True)
class TempFail:
    """Refuse the message for now (SMFIR_REPLYCODE 4xx / SMFIR_TEMPFAIL)."""

    reason: str
    code: str = "451"
    enhanced: str = "4.3.0"


@dataclass(frozen=True)
class Quarantine:
    """Accept the message but hold it (SMFIR_QUARANTINE; Postfix puts it in its hold
    queue, ``postsuper -H`` releases it); the header edits still apply. *reason* goes
    to the MTA (Sendmail logs it; Postfix 3.7 reads and drops it) and srsd's log."""

    reason: str


Action = InsertHeader | DeleteHeader | Reject | TempFail | Quarantine
