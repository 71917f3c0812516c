"""The Received-SPF field value (RFC 7208 9.1) of a check_host() outcome.

The wording is pyspf's, which srsd's headers have carried since its first release (log
readers and filters may match it): ``Pass (receiver: domain of example.org designates
192.0.2.1 as permitted sender) client-ip=192.0.2.1; envelope-from="a@example.org";
helo=mx.example.org; receiver=receiver; mechanism=mx; identity=mailfrom``.
"""

from __future__ import annotations

import re

__all__ = ["HEADER_RESULT", "quote_value", "received_spf"]

#: RFC 7208 result keyword -> its spelling at the start of Received-SPF
HEADER_RESULT = {
    "pass": "Pass",
    "fail": "Fail",
    "softfail": "SoftFail",
    "neutral": "Neutral",
    "none": "None",
    "permerror": "PermError",
    "temperror": "TempError",
}

_DOT_ATOM = re.compile(r"[0-9a-z!#$%&'*+/=?^_`{}|~-]+(?:\.[0-9a-z!#$%&'*+/=?^_`{}|~-]+)*", re.IGNORECASE)


def quote_value(value: str) -> str:
    """*value* as a key-value-pair value (RFC 7208 9.1): a dot-atom as it is, anything
    else a quoted-string (``\\`` and ``"`` escaped)."""
    if _DOT_ATOM.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\x00") + '"'


def _comment(result: str, domain: str, ip: str, reason: str) -> str:
    if result == "pass":
        return f"domain of {domain} designates {ip} as permitted sender"
    if result == "fail":
        return f"domain of {domain} does not designate {ip} as permitted sender"
    if result == "softfail":
        return f"transitioning domain of {domain} does not designate {ip} as permitted sender"
    if result == "permerror":
        return f"permanent error in processing domain of {domain}: {reason}"
    if result == "temperror":
        return f"temporary error in processing during lookup of {domain}"
    return f"{ip} is neither permitted nor denied by domain of {domain}"  # neutral, none


def received_spf(
    result: str,
    *,
    ip: str,
    sender: str,
    helo: str,
    domain: str,
    identity: str,
    receiver: str,
    mechanism: str | None = None,
    problem: str = "",
    reason: str = "",
) -> str:
    """The field value, without ``Received-SPF:``.

    :param sender: the MAIL FROM address (shown for the mailfrom identity only).
    :param domain: the domain checked (the sender's, or the HELO name).
    :param mechanism: the term that matched, if one did.
    :param problem: for a permerror, the term at fault; *reason* what was wrong.
    """
    parts = [f"{HEADER_RESULT[result]} ({receiver}: {_comment(result, domain, ip, reason)})", f"client-ip={ip};"]
    if identity == "mailfrom":
        parts.append(f"envelope-from={quote_value(sender)};")
    parts += [f"helo={quote_value(helo)};", f"receiver={receiver};"]
    if result == "permerror" and problem:
        parts.append(f"problem={quote_value(problem)};")
    if mechanism:
        parts.append(f"mechanism={quote_value(mechanism)};")
    parts.append(f"identity={identity}")
    return " ".join(parts)
