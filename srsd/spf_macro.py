"""SPF macro expansion (RFC 7208 7).

:func:`expand` turns a macro-string into text, given the values of the macro letters;
srsd.spf_eval supplies them (and looks ``%{p}`` up in DNS first when a string uses it).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable

from srsd.spf_record import DOMAIN_LETTERS, EXPLANATION_LETTERS, SPFPermError

__all__ = ["expand", "uses_letter", "MAX_DOMAIN"]

MAX_DOMAIN = 253  # bytes of an expanded domain-spec, leftmost labels dropped beyond it (7.3)
# Characters an expansion may build: a record is up to 64 KB over TCP and each %{s} can be
# a few hundred bytes, so a hostile one could build megabytes on the reactor thread. No
# real domain-spec or explanation comes near (RFC 7208 3.4 asks records to fit 512 bytes).
MAX_EXPANSION = 16384

_MACRO = re.compile(r"%(?:\{([a-z])([0-9]*)(r?)([.\-+,/_=]*)\}|(.)|\Z)", re.IGNORECASE | re.DOTALL)
_DOMAIN_LETTERS = frozenset(DOMAIN_LETTERS)
_EXP_LETTERS = frozenset(EXPLANATION_LETTERS)
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}


def uses_letter(text: str, letter: str) -> bool:
    """Whether *text* has a macro of *letter* (lower or upper case)."""
    lowered = text.lower()
    return "%{" + letter in lowered


def expand(text: str, value: Callable[[str], str], *, explanation: bool = False) -> str:
    """*text* with its macros expanded (RFC 7208 7.3, 7.4).

    :param value: the value of a lower-case macro letter (``"s"`` -> the sender ...).
    :param explanation: *text* is an explanation string (exp=), where c, r and t are
        allowed too; a domain-spec's expansion is cut to :data:`MAX_DOMAIN` bytes by
        dropping leftmost labels.
    :raises SPFPermError: a malformed macro, an unknown letter, a zero DIGIT transformer,
        an expansion over :data:`MAX_EXPANSION` characters.
    """
    if "%" not in text:
        return text if explanation else _fit(text)
    letters = _EXP_LETTERS if explanation else _DOMAIN_LETTERS
    out: list[str] = []
    at = size = 0
    for match in _MACRO.finditer(text):
        size += match.start() - at
        out.append(text[at : match.start()])
        at = match.end()
        letter, digits, reverse, delimiters, escape = match.groups()
        if escape is not None:
            if escape not in _ESCAPES:
                raise SPFPermError("Invalid macro", text)
            out.append(_ESCAPES[escape])
            size += len(out[-1])
            continue
        if letter is None or letter.lower() not in letters:
            raise SPFPermError("Invalid macro", text)
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value(letter.lower()))
        if reverse:
            parts.reverse()
        if digits:
            keep = int(digits)
            if keep == 0:
                raise SPFPermError("Invalid macro: a DIGIT transformer of zero", text)
            parts = parts[-keep:]
        expanded = ".".join(parts)
        if letter.isupper():  # URL-escaped (7.3), RFC 3986's unreserved characters kept
            expanded = urllib.parse.quote(expanded, safe="-._~")
        out.append(expanded)
        size += len(expanded)
        if size > MAX_EXPANSION:
            raise SPFPermError(f"macro expansion over {MAX_EXPANSION} characters", text[:64])
    out.append(text[at:])
    result = "".join(out)
    return result if explanation else _fit(result)


def _fit(domain: str) -> str:
    """An expanded domain-spec of at most 253 bytes: leftmost labels dropped (7.3); with
    no label boundary close enough, the last label alone. One search, not a copy a label."""
    if len(domain) <= MAX_DOMAIN:
        return domain
    cut = domain.find(".", len(domain) - MAX_DOMAIN - 1)  # the first dot the rest fits behind
    if cut == -1:
        cut = domain.rfind(".")
    return domain[cut + 1 :] if cut != -1 else domain
