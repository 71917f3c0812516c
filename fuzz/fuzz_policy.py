"""Fuzz target: Postfix policy delegation requests (:mod:`srsd.protocols.policy`) answered
by the SPF policy service (:mod:`srsd.policy_service`, :mod:`srsd.spf_policy`).

Input: a request stream, e.g. ``request=smtpd_access_policy\\nclient_address=192.0.2.1\\n\\n``.
SPF is a stand-in checker whose result (and explanation, and Received-SPF text, both
carrying the request's own sender and HELO, as a hostile exp= would) follows from the
request, so every kind of verdict is reachable. Two configurations, picked by the input's
length: header-only Received-SPF (even), enforcing everything with Authentication-Results
and whitelists (odd).

Invariants:

* however the stream is cut into reads, the replies are exactly those of a reference model
  of SMTPD_POLICY_README written from the module docstrings: one per request (its empty
  line), the error action for a line without ``=``, too many attributes, a line or request
  over its limit; otherwise the service's answer to the attributes (the last of a repeated
  name wins), asked of a second service in the same order;
* every reply is ``action=<one line>\\n\\n``; nothing is logged as a failure;
* every action is DUNNO, ``PREPEND`` of one header line (Received-SPF, X-Comment or
  Authentication-Results, which authres parses back) under RFC 5322's 998 octets, or --
  only when the configuration enforces -- ``550 5.7.23/24`` or ``DEFER_IF_PERMIT``.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict

from twisted.internet import defer

from fuzz.harness import check_authres, chunkings, expect, feed, instrumented, main, no_failure_logged

with instrumented(__name__):
    from srsd.config import PolicySettings
    from srsd.policy_service import PolicyService
    from srsd.protocols.policy import PolicyFactory, encode_action
    from srsd.spf import SPFResult

__all__ = ["SETTINGS", "test_one_input"]

MAX_REQUEST, MAX_LINE, MAX_ATTRIBUTES = 2048, 128, 32  # small, so every limit is reachable
SETTINGS = (
    PolicySettings(),
    PolicySettings(
        helo_reject="fail", mail_from_reject="softfail", permerror_reject=True, temperror_defer=True,
        whitelist_networks=("192.0.2.128/25", "2001:db8:1::/48"), whitelist_helo=("relay.example",),
        whitelist_domains=("trusted.example", ".parent.example"), header="authentication-results",
        authserv_id="mx.fwd.example.net",
    ),
)  # fmt: skip
_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
_HEADER_RESULT = ("Pass", "Fail", "SoftFail", "Neutral", "None", "PermError", "TempError")
_REPLY = re.compile(rb"action=[^\r\n\0]*\n\n")
_REFUSAL = re.compile(r"(550 5\.7\.2[34]|DEFER_IF_PERMIT 4\.(7\.24|3\.0)) [^\x00-\x1f\x7f]*")
_HEADER = re.compile(r"(Received-SPF|X-Comment|Authentication-Results): [^\x00-\x1f\x7f]*")


class _Checker:
    """SPF results that follow from the request: any keyword, hostile texts."""

    def check(self, ip: str, sender: str, helo: str) -> defer.Deferred:
        n = (len(ip) + len(sender) + 3 * len(helo)) % len(_RESULTS)
        identity = "mailfrom" if sender else "helo"
        header = ""
        if n % 2:  # pyspf's Received-SPF text, with what the client sent in it
            header = f"{_HEADER_RESULT[n]} (mx: {sender}) client-ip={ip}; helo={helo}; envelope-from={sender}"
        return defer.succeed(SPFResult(_RESULTS[n], f"exp= of {sender or helo}", identity, header))


_TEMPLATES = [PolicyService(settings, _Checker(), "mx.fwd.example.net", max_messages=4) for settings in SETTINGS]


def _service(which: int) -> PolicyService:
    """A new service for ``SETTINGS[which]``: a template's copy with an empty message
    memory (building its Rules, ip_network parsing, was a third of each run)."""
    service = copy.copy(_TEMPLATES[which])
    service._messages = OrderedDict()
    return service


def _factory(which: int) -> PolicyFactory:
    return PolicyFactory(_service(which), "fuzz_policy", max_request_bytes=MAX_REQUEST, max_line_bytes=MAX_LINE,
                         max_attributes=MAX_ATTRIBUTES)  # fmt: skip


def _requests(stream: bytes) -> list[dict[str, str] | None]:
    """The complete requests of *stream* (None: malformed), per SMTPD_POLICY_README and the
    limits of :class:`srsd.protocols.policy.PolicyFactory`."""
    out: list[dict[str, str] | None] = []
    attrs: dict[str, str] = {}
    size, broken = 0, False
    *lines, _unfinished = stream.split(b"\n")
    for line in lines:
        line = line.removesuffix(b"\r")
        if not line:
            out.append(None if broken else attrs)
            attrs, size, broken = {}, 0, False
            continue
        size += len(line) + 1
        name, sep, value = line.partition(b"=")
        key = name.decode("utf-8", "replace")
        if broken or size > MAX_REQUEST or len(line) > MAX_LINE or not sep or not name:
            broken = True
        elif len(attrs) >= MAX_ATTRIBUTES and key not in attrs:
            broken = True
        else:
            attrs[key] = value.decode("utf-8", "replace")
    return out


def _answer(service: PolicyService, attrs: dict[str, str] | None) -> str:
    if attrs is None:
        return service.error_action()
    answers: list[str] = []
    service.handle(attrs).addCallback(answers.append)
    expect(len(answers) == 1, "the service did not answer at once", attrs)
    return answers[0]


def _check_action(action: str, settings: PolicySettings) -> None:
    if action == "DUNNO":
        return
    if action.startswith("PREPEND "):
        header = action[len("PREPEND ") :]
        expect(_HEADER.fullmatch(header), "PREPEND is not one header line", action)
        expect(len(header.encode("utf-8")) <= 998, "header line over 998 octets", action)
        name, _, value = header.partition(": ")
        if name == "Authentication-Results":
            check_authres(value)
        elif name == "Received-SPF":
            expect(value.split(" ", 1)[0] in _HEADER_RESULT, "Received-SPF without a result", action)
        return
    enforcing = settings.helo_reject != "none" or settings.mail_from_reject != "none"
    expect(enforcing or settings.permerror_reject or settings.temperror_defer, "refused header-only", action)
    expect(_REFUSAL.fullmatch(action) and len(action) < 300, "malformed refusal", action)


def test_one_input(data: bytes) -> None:
    """*data* as a policy request stream, in every chunking, under the configuration its
    length picks (odd: the enforcing one).

    :raises AssertionError: an invariant of the module docstring broke.
    """
    which = len(data) % len(SETTINGS)
    model = _service(which)
    with no_failure_logged():
        actions = [_answer(model, attrs) for attrs in _requests(data)]
    for action in actions:
        _check_action(action, SETTINGS[which])
    want = b"".join(encode_action(a) for a in actions)
    expect(all(_REPLY.fullmatch(r) for r in re.findall(rb"[^\n]*\n\n", want)), "malformed reply", want)
    for chunks in chunkings(data):
        out, closed = feed(_factory(which), chunks)
        expect(out == want, "replies differ from the policy model", chunks, out, want)
        expect(not closed, "the service closed the connection", chunks)


if __name__ == "__main__":
    main(test_one_input)
