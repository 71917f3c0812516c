"""Authentication-Results (RFC 8601): the one builder and reader for srsd's fields.

Every result srsd records -- SPF from the policy service and the milter, DKIM, ARC
and DMARC from the milter -- is an ``authres`` result object built here, rendered
either folded (one result per line, the milter's field) or on one line (the
policy service's ``PREPEND``). Property values are quoted by
:func:`srsd.header_text.pvalue` (authres leaves any value with an ``@`` bare, a
space included), comments escaped by :func:`srsd.header_text.comment_text`.

Reading is narrower: srsd only needs the authserv-id of fields a message brings
along, to delete the ones claiming to be ours (RFC 8601 5). That reader is
:func:`authserv_id_of`, srsd's own and tolerant on purpose: authres refuses a field
with any syntax error, and a forged field must be recognised whatever follows its
authserv-id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from authres.core import AuthenticationResult, AuthenticationResultProperty, NoneAuthenticationResult, QuotableValue

from srsd.header_text import comment_text, pvalue
from srsd.mailauth.message import HeaderField

__all__ = [
    "FIELD",
    "Result",
    "result",
    "no_result",
    "field_value",
    "spf_result",
    "signature_results",
    "arc_result",
    "authentication_results",
    "summary",
    "authserv_id_of",
    "forged_results",
    "without_forged",
]

FIELD = "Authentication-Results"
MAX_COMMENT = 200  # characters of a reason kept in a result's comment

Result = AuthenticationResult | NoneAuthenticationResult


class _PValue(QuotableValue):
    def quote_if_needed(self) -> str:
        return pvalue(self)


def result(method: str, value: str, *, reason: str = "", properties: Iterable[tuple[str, str]] = ()) -> Result:
    """One resinfo (RFC 8601 2.2): ``method=value (reason) ptype.property=pvalue ...``.

    :param properties: (``ptype.property``, value) pairs in order; empty values are left out.
    """
    props = []
    for name, text in properties:
        if text:
            ptype, _, pname = name.partition(".")
            prop = AuthenticationResultProperty(ptype, pname)
            prop.value = _PValue(text)
            props.append(prop)
    comment = comment_text(reason[:MAX_COMMENT]) if reason else None
    return AuthenticationResult(method, result=value, result_comment=comment, properties=props)


def no_result(reason: str = "") -> Result:
    """``none (reason)``: no method was applied (RFC 8601 2.2)."""
    return NoneAuthenticationResult(comment_text(reason) if reason else None)


def field_value(authserv_id: str, results: Sequence[Result], *, folded: bool) -> str:
    """The field's value: *folded* gives the milter's form (a leading space, one
    result per CRLF TAB line), else ``authserv-id; r1; r2`` on one line."""
    if folded:
        return " " + authserv_id + ";\r\n\t" + ";\r\n\t".join(str(r) for r in results)
    return authserv_id + "; " + "; ".join(str(r) for r in results)


def spf_result(value: str, prop: str, subject: str) -> Result:
    """``spf=value smtp.mailfrom=domain`` (*prop* ``smtp.mailfrom``) or
    ``smtp.helo=name`` (RFC 8601 2.7.2); no property when *subject* is empty."""
    return result("spf", value, properties=[(prop, subject)])


def _b_prefixes(signatures: Sequence) -> list[str]:
    """header.b values: 8 characters of b= (RFC 6008), longer where two would clash."""
    out = []
    for r in signatures:
        length = 8
        while length < len(r.b) and any(o is not r and o.b[:length] == r.b[:length] and o.b != r.b for o in signatures):
            length += 4
        out.append(r.b[:length])
    return out


def signature_results(signatures: Sequence) -> list[Result]:
    """One ``dkim=`` result per :class:`~srsd.mailauth.verify.SignatureResult`
    (RFC 8601 2.7.1, RFC 6008 header.b); ``dkim=none`` when there is none."""
    if not signatures:
        return [result("dkim", "none")]
    return [
        result(
            "dkim",
            r.result,
            reason=r.reason,
            properties=[("header.d", r.domain), ("header.i", r.identity), ("header.s", r.selector),
                        ("header.a", r.algorithm), ("header.b", b)],
        )  # fmt: skip
        for r, b in zip(signatures, _b_prefixes(signatures), strict=True)
    ]


def arc_result(arc) -> Result:
    """``arc=cv (reason)`` for an :class:`~srsd.mailauth.verify.ARCResult` (RFC 8617 4.1.3)."""
    return result("arc", arc.cv, reason=arc.reason)


def authentication_results(
    authserv_id: str,
    *,
    spf: tuple[str, str, str] | None,
    dkim_results: Sequence,
    arc=None,
    extra: Sequence[Result] = (),
) -> HeaderField:
    """The milter's ``Authentication-Results`` field as (name, folded value).

    :param spf: (result, property, subject): ``("pass", "smtp.mailfrom", "example.org")``
        or ``smtp.helo``; None when SPF was not checked.
    :param dkim_results: one SignatureResult per signature; none at all gives ``dkim=none``.
    :param arc: the ARCResult, or None to leave ``arc=`` out.
    :param extra: further results after those (DMARC).
    """
    results: list[Result] = []
    if spf is not None:
        results.append(spf_result(*spf))
    results += signature_results(dkim_results)
    if arc is not None:
        results.append(arc_result(arc))
    results += extra
    return FIELD, field_value(authserv_id, results, folded=True)


def summary(value: str) -> str:
    """``spf=pass dkim=pass arc=none`` from a folded value (for the log): the first
    word of each result line."""
    return " ".join(re.findall(r"^\t([a-z]+=[a-z]+)", value, re.MULTILINE))


# -- reading -------------------------------------------------------------------------------------


def _skip_cfws(text: str, i: int) -> int:
    """Index after any whitespace and (nested) comments from *i*."""
    depth = 0
    while i < len(text):
        ch = text[i]
        if depth:
            if ch == "\\":
                i += 1
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        elif ch == "(":
            depth = 1
        elif not ch.isspace():
            break
        i += 1
    return i


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2), lower case;
    "" when there is none."""
    i = _skip_cfws(value, 0)
    if i < len(value) and value[i] == '"':  # a quoted-string authserv-id (rare)
        end = value.find('"', i + 1)
        return value[i + 1 : end].lower() if end > 0 else ""
    j = i
    while j < len(value) and not value[j].isspace() and value[j] not in ";(":
        j += 1
    return value[i:j].lower()


def _ours(name: str, value: str, wanted: str) -> bool:
    return name.lower() == "authentication-results" and authserv_id_of(value) == wanted


def forged_results(headers: Sequence[HeaderField], authserv_id: str) -> list[int]:
    """1-based occurrences (among fields named Authentication-Results, any case) of
    those carrying *authserv_id*, highest first: delete them in that order (Postfix
    applies each deletion at once, renumbering the rest)."""
    wanted = authserv_id.lower()
    occurrences = []
    n = 0
    for name, value in headers:
        if name.lower() == "authentication-results":
            n += 1
            if authserv_id_of(value) == wanted:
                occurrences.append(n)
    return sorted(occurrences, reverse=True)


def without_forged(headers: Sequence[HeaderField], authserv_id: str) -> list[HeaderField]:
    """*headers* minus the Authentication-Results fields carrying *authserv_id*."""
    wanted = authserv_id.lower()
    return [(name, value) for name, value in headers if not _ours(name, value, wanted)]
