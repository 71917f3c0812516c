"""Text that srsd writes into header fields and one-line replies: the quoting rules.

Shared by the SPF policy service (Received-SPF, RFC 7208 9.1; policy replies) and
Authentication-Results (RFC 8601), so a token, a comment or a quoted value means
the same everywhere. Pure.
"""

from __future__ import annotations

import re

__all__ = ["MAX_REPLY_TEXT", "TOKEN", "DOT_ATOM", "one_line", "comment", "comment_text", "quoted", "pvalue"]

# \Z, not $: "$" also matches before a final newline, which would then end the header line.
#: RFC 2045 token (RFC 8601 2.2 ``value``/``pvalue``, authserv-id)
TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")
#: RFC 5322 3.2.3 dot-atom (Received-SPF key=value pairs, RFC 7208 9.1)
DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*\Z")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
#: RFC 8601 2.2 pvalue ``[ [ local-part ] "@" ] domain-name``: dot-atoms, no empty label
#: (authres reads "@example." or "@a..b" as a syntax error)
_ADDRESS = re.compile(rf"^(?:{_ATEXT}+(?:\.{_ATEXT}+)*)?@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_NON_ASCII = re.compile(r"[^\x20-\x7e]")


#: characters of a policy reply text srsd writes (Postfix adds "<rcpt>: Recipient address rejected: ")
MAX_REPLY_TEXT = 250


def one_line(text: str, limit: int = MAX_REPLY_TEXT, *, ascii_only: bool = True) -> str:
    """*text* safe inside one header line or policy reply: control characters (a TXT
    record's newline would end a reply early and desynchronise the connection) become
    spaces, runs of spaces one, non-ASCII ``?`` (*ascii_only*), at most *limit* chars
    (cut with ``...``)."""
    if text.isascii() and text.isprintable() and "  " not in text and text.strip() == text and len(text) <= limit:
        return text  # already one clean line (the usual case: srsd's own headers)
    text = " ".join(_CONTROL.sub(" ", text).split())
    if ascii_only:
        text = _NON_ASCII.sub("?", text)
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def comment_text(text: str) -> str:
    """*text* as the inside of an RFC 5322 comment: control characters become spaces,
    non-ASCII ``?``, ``(``, ``)`` and ``\\`` are escaped.

    ASCII only: a header field with UTF-8 is valid in SMTPUTF8 messages alone (RFC 6532),
    and readers built on authres (dkimpy's ARC sealer, at the next hop) skip such a field."""
    return re.sub(r"([()\\])", r"\\\1", _NON_ASCII.sub("?", _CONTROL.sub(" ", text)))


def comment(text: str) -> str:
    """*text* as an RFC 5322 comment, parentheses included (:func:`comment_text`)."""
    return "(" + comment_text(text) + ")"


def quoted(value: str, plain: re.Pattern[str]) -> str:
    """*value* as is when it matches *plain* (TOKEN, DOT_ATOM), else an RFC 5322
    quoted-string."""
    if value and plain.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pvalue(value: str) -> str:
    """An RFC 8601 2.2 property value: a token or a plain ``local@domain`` as is, else
    quoted (authres would leave anything with an ``@`` bare, a space included); non-ASCII
    and control characters become ``?`` (see :func:`comment_text`)."""
    if TOKEN.match(value) or _ADDRESS.match(value):
        return value
    return quoted(_NON_ASCII.sub("?", _CONTROL.sub("?", value)), TOKEN)
