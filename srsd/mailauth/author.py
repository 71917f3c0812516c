"""The author domain: the domain of a message's RFC5322.From address (pure).

Local mail is signed with the keys of this domain (:mod:`srsd.mailauth.signing_table`),
so it must be exactly one domain. RFC 5322 3.6 allows exactly one From field; it
may list several mailboxes (with a Sender field), which is fine when they all share
one domain. Anything else gives no author domain, with the reason:

* no From field, or one without an address;
* several From fields (RFC 5322 3.6; the extra-field attack of RFC 6376 8.15:
  a verifier and a mail reader may pick different ones);
* mailboxes in several domains (no single domain to align with, RFC 7489 6.6.1);
* a From field the RFC 5322 parser finds defective, or a domain that is not a
  host name (an address literal, no domain);
* a From field over :data:`MAX_FROM` characters: the parser's time grows with the
  square of some inputs (10 KB of quotes: seconds), and no real From is that long.

The parser is the standard library's RFC 5322 header parser
(``email.headerregistry``); a field it cannot parse without an ``InvalidHeaderDefect``
is refused rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import errors
from email.headerregistry import HeaderRegistry

from srsd.config import is_domain
from srsd.mailauth.message import HeaderField

__all__ = ["MAX_FROM", "Author", "author_domain"]

#: characters of an unfolded From field the parser is given at most
MAX_FROM = 2000

_registry = HeaderRegistry()
_FOLD = re.compile(r"\r?\n(?=[ \t])")


@dataclass(frozen=True)
class Author:
    """``domain`` (lower case, A-labels) when the message names exactly one author
    domain, else "" and ``problem`` says why."""

    domain: str = ""
    problem: str = ""


def _a_label(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def author_domain(headers: Sequence[HeaderField]) -> Author:
    """The author domain of a message with header fields *headers* (see the module docstring)."""
    values = [value for name, value in headers if name.strip().lower() == "from"]
    if not values:
        return Author(problem="no From field")
    if len(values) > 1:
        return Author(problem=f"{len(values)} From fields")
    text = _FOLD.sub("", values[0]).strip()
    if len(text) > MAX_FROM:
        return Author(problem=f"From field longer than {MAX_FROM} characters")
    try:
        parsed = _registry("from", text)
    except Exception:  # the parser has raised on odd input before; refuse, do not guess
        return Author(problem="unparseable From field")
    if any(isinstance(d, errors.InvalidHeaderDefect | errors.NonPrintableDefect) for d in parsed.defects):
        return Author(problem="unparseable From field")
    domains = {_a_label(address.domain) for address in parsed.addresses}
    if not domains:
        return Author(problem="From field without an address")
    if len(domains) > 1:
        return Author(problem="From addresses in several domains")
    (domain,) = domains
    if not is_domain(domain):
        return Author(problem="From address without a domain name")
    return Author(domain=domain)
