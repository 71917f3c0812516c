"""SPF policy for incoming mail: what to answer a Postfix policy request (policyd-spf semantics).

Postfix asks once per recipient (``check_policy_service`` in
``smtpd_recipient_restrictions``), every request of one message carrying the same
``instance``. The answer is one access(5) action:

- ``DUNNO`` -- nothing to say: not an SMTP access request, a state without a sender
  (CONNECT, HELO, ...), a client in ``skip_networks``, an authenticated client;
- ``PREPEND Received-SPF: ...`` (or ``Authentication-Results: ...``) -- the result,
  recorded once per message: later requests of the same instance get ``DUNNO``;
- ``PREPEND X-Comment: SPF skipped for whitelisted ...`` -- a whitelisted relay
  (``Authentication-Results: id; none (...)`` in that header mode);
- ``550 5.7.23 ...`` -- fail (or softfail) under ``helo_reject`` / ``mail_from_reject``;
- ``550 5.7.24 ...`` -- permerror with ``permerror_reject`` (RFC 7372);
- ``DEFER_IF_PERMIT 4.7.24 ...`` -- temperror with ``temperror_defer``;
- on an error of srsd's own (a bug, a malformed request): ``DUNNO`` when the
  configuration only adds headers, ``DEFER_IF_PERMIT 4.3.0 ...`` when it enforces
  anything, so a failure never rejects mail and never lets through what the
  configuration would have refused (:func:`error_action`).

Pure: no reactor, no DNS, testable with plain values.
:class:`srsd.policy_service.PolicyService` runs the SPF checks these decisions ask
for through an :class:`~srsd.spf.SPFChecker` and remembers each message's verdict.
See ``docs/policy.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from srsd.config import PolicySettings, is_domain
from srsd.domains import DomainSet, Networks, normalize_domain, read_address
from srsd.header_text import DOT_ATOM, comment, one_line, quoted
from srsd.mailauth.results import FIELD, field_value, no_result, spf_result
from srsd.received_spf import HEADER_RESULT
from srsd.spf import SPFResult

__all__ = [
    "DUNNO",
    "Verdict",
    "PolicyRequest",
    "Rules",
    "CheckPlan",
    "parse_request",
    "screen",
    "plan_checks",
    "decide",
    "error_action",
    "for_state",
    "received_spf_header",
    "authentication_results_header",
]

DUNNO = "DUNNO"
#: states where Postfix knows the envelope sender (others: CONNECT, EHLO, HELO, VRFY, ETRN)
CHECKED_STATES = ("MAIL", "RCPT", "DATA", "END-OF-MESSAGE")
#: results each ``*_reject`` setting refuses
REJECTED_RESULTS = {"fail": ("fail",), "softfail": ("fail", "softfail"), "none": ()}
_DEFAULT_EXPLANATION = {
    "fail": "not authorized to send mail for this domain",
    "softfail": "domain owner discourages use of this host",
    "permerror": "the domain's SPF record is invalid",
    "temperror": "the SPF record could not be retrieved",
}
_MAX_HEADER = 900  # a header line stays under RFC 5322's 998


# -- the request -------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyRequest:
    """The attributes of one ``smtpd_access_policy`` request srsd uses."""

    state: str
    ip: str  # client_address, v4-mapped IPv6 written as IPv4
    helo: str
    sender: str  # "" = the null sender
    instance: str = ""
    client_name: str = ""  # Postfix's forward-confirmed client hostname, or "unknown"
    sasl_username: str = ""
    recipient: str = ""
    queue_id: str = ""  # Postfix sends it once the queue file exists (not for a message's first RCPT)

    @property
    def sender_domain(self) -> str:
        """The MAIL FROM domain (for a sender without ``@``, the HELO name, as pyspf did)."""
        return self.sender.rpartition("@")[2] if "@" in self.sender else self.helo

    @property
    def message_key(self) -> tuple[str, ...] | None:
        """What ties the requests of one message together (None: no instance)."""
        if not self.instance:
            return None
        return (self.instance, self.ip, self.sender, self.helo)


@dataclass(frozen=True)
class Verdict:
    """What to answer the first request of a message, and why.

    ``action`` is the access(5) action; requests after the first get :attr:`repeat`
    (the same refusal, but a header is added only once). ``result`` and ``reason``
    are for the log.
    """

    action: str
    result: str = ""
    reason: str = ""

    @property
    def repeat(self) -> str:
        return DUNNO if self.action.startswith("PREPEND ") else self.action

    @property
    def refuses(self) -> bool:
        return not (self.action == DUNNO or self.action.startswith("PREPEND "))


def parse_request(attrs: dict[str, str]) -> PolicyRequest | Verdict:
    """The request in *attrs*, or a ``DUNNO`` verdict saying why there is nothing to check.

    A missing ``protocol_state`` counts as RCPT (for requests typed by hand);
    missing ``request`` or ``client_address`` is answered DUNNO (Postfix always
    sends both).
    """
    kind = attrs.get("request", "")
    if kind != "smtpd_access_policy":
        return Verdict(DUNNO, "n/a", f"not an smtpd_access_policy request (request={kind!r})")
    state = attrs.get("protocol_state", "").upper() or "RCPT"
    if state not in CHECKED_STATES:
        return Verdict(DUNNO, "n/a", f"nothing to check at {state}")
    raw_ip = attrs.get("client_address", "")
    try:
        ip, _packed = read_address(raw_ip)
    except ValueError:
        return Verdict(DUNNO, "n/a", f"no usable client_address ({raw_ip!r})")
    return PolicyRequest(
        state=state,
        ip=ip,
        helo=attrs.get("helo_name", "").strip(),
        sender=attrs.get("sender", "").strip(),
        instance=attrs.get("instance", ""),
        client_name=attrs.get("client_name", ""),
        sasl_username=attrs.get("sasl_username", ""),
        recipient=attrs.get("recipient", ""),
        queue_id=attrs.get("queue_id", ""),
    )


# -- configuration, compiled ----------------------------------------------------------


class Rules:
    """:class:`~srsd.config.PolicySettings` with networks and names parsed once.

    :param receiver: this host's name in headers written by srsd itself.
    """

    def __init__(self, settings: PolicySettings, receiver: str = "") -> None:
        self.settings = settings
        self.receiver = receiver or "localhost"
        self.skip_networks = Networks(settings.skip_networks)
        self.whitelist_networks = Networks(settings.whitelist_networks)
        self.whitelist_helo = DomainSet(settings.whitelist_helo)
        # Checked as "the client passes this domain's SPF": a ".parent" entry cannot be
        # evaluated, so its dot is dropped.
        self.whitelist_domains = tuple(dict.fromkeys(d.lstrip(".") for d in DomainSet(settings.whitelist_domains)))
        self.mail_from_rejects = REJECTED_RESULTS[settings.mail_from_reject]
        self.helo_rejects = REJECTED_RESULTS[settings.helo_reject]

    @property
    def enforcing(self) -> bool:
        """True when some result refuses mail (not only headers)."""
        s = self.settings
        return bool(self.mail_from_rejects or self.helo_rejects or s.permerror_reject or s.temperror_defer)


# -- decisions ---------------------------------------------------------------------------


def error_action(rules: Rules) -> str:
    """The answer when srsd itself cannot decide (a bug, a malformed request, overload).

    Header-only configurations answer DUNNO (the mail goes on, as without srsd);
    enforcing ones defer, so a failure cannot let through what would be refused.
    Never a rejection.
    """
    if rules.enforcing:
        return "DEFER_IF_PERMIT 4.3.0 SPF policy service error, try again later"
    return DUNNO


def _whitelisted(request: PolicyRequest, rules: Rules, what: str) -> Verdict:
    text = f"SPF skipped for whitelisted {what}"
    if rules.settings.header == "authentication-results":
        header = f"{FIELD}: " + field_value(rules.settings.authserv_id, [no_result(one_line(text))], folded=False)
    else:
        header = f"X-Comment: {one_line(text)} - {_details(request, rules.receiver)}"
    return Verdict("PREPEND " + _fit(header), "whitelisted", text)


def screen(request: PolicyRequest, rules: Rules) -> Verdict | None:
    """Decisions made without DNS: skipped and whitelisted clients; None = check SPF.

    - ``skip_networks`` and SASL-authenticated clients: DUNNO, no header (local or
      authenticated submission is not what SPF judges, and the header would leave
      with the outgoing mail);
    - ``whitelist_networks``; ``whitelist_helo`` when the HELO name matches and
      Postfix verified it: the forward-confirmed client hostname (``client_name``)
      is the same name (a bare HELO match is forgeable by anyone): a header saying
      SPF was skipped.
    """
    if request.ip in rules.skip_networks:
        return Verdict(DUNNO, "skipped", "client in policy.skip_networks")
    if request.sasl_username:
        return Verdict(DUNNO, "skipped", "SASL-authenticated client")
    if request.ip in rules.whitelist_networks:
        return _whitelisted(request, rules, "relay")
    if (
        rules.whitelist_helo
        and request.helo in rules.whitelist_helo
        and normalize_domain(request.helo) == normalize_domain(request.client_name)
    ):
        return _whitelisted(request, rules, "HELO name")
    return None


@dataclass(frozen=True)
class CheckPlan:
    """The SPF checks a request needs.

    ``helo``: check the HELO identity (``postmaster@helo``); always for the null
    sender (RFC 7208 2.4: it is then the MAIL FROM identity too), otherwise only when
    ``helo_reject`` can refuse. ``mail_from``: check the MAIL FROM identity.
    ``whitelist_domains``: domains whose SPF, passing for the client, whitelists it.
    ``helo_none``: why the HELO identity is "none" without a check (no HELO, or not
    a domain name, RFC 7208 2.3).
    """

    helo: bool
    mail_from: bool
    whitelist_domains: tuple[str, ...] = ()
    helo_none: str = ""


def plan_checks(request: PolicyRequest, rules: Rules) -> CheckPlan:
    want_helo = not request.sender or bool(rules.helo_rejects)
    helo_none = ""
    if want_helo:
        if not request.helo:
            helo_none = "no HELO name to check"
        elif not is_domain(request.helo.rstrip(".")):
            helo_none = "HELO name is not a domain name"
    return CheckPlan(
        helo=want_helo and not helo_none,
        mail_from=bool(request.sender),
        whitelist_domains=rules.whitelist_domains,
        helo_none=helo_none if want_helo else "",
    )


def _refusal(result: SPFResult, rejects: tuple[str, ...], rules: Rules, subject: str) -> tuple[int, str] | None:
    """(severity, action) when *result* refuses the mail, else None."""
    explanation = result.explanation or _DEFAULT_EXPLANATION.get(result.result, result.result)
    text = one_line(f"SPF {result.result} for {subject}: {explanation}")
    if result.result in rejects:
        return 2, f"550 5.7.23 {text}"
    if result.result == "permerror" and rules.settings.permerror_reject:
        return 2, f"550 5.7.24 {text}"
    if result.result == "temperror" and rules.settings.temperror_defer:
        return 1, f"DEFER_IF_PERMIT 4.7.24 {text}"
    return None


def decide(
    request: PolicyRequest,
    rules: Rules,
    helo: SPFResult | None,
    mail_from: SPFResult | None,
    whitelisted_by: str = "",
) -> Verdict:
    """The verdict from the SPF results (a result is None when it was not checked).

    A rejection beats a deferral; between equals the HELO identity comes first (as in
    policyd-spf). For the null sender the HELO result is also the MAIL FROM result,
    so either ``*_reject`` setting refuses it. The header records the MAIL FROM
    result, or the HELO result for the null sender. *whitelisted_by* names a
    ``whitelist_domains`` entry whose SPF passes for the client.
    """
    if whitelisted_by:
        return _whitelisted(request, rules, f"relay of {whitelisted_by}")
    candidates = []
    if helo is not None:
        rejects = rules.helo_rejects
        if not request.sender:
            rejects = tuple(dict.fromkeys(rejects + rules.mail_from_rejects))
        candidates.append(_refusal(helo, rejects, rules, f"HELO name {request.helo}"))
    if mail_from is not None:
        candidates.append(_refusal(mail_from, rules.mail_from_rejects, rules, f"sender domain {request.sender_domain}"))
    recorded = mail_from if mail_from is not None else helo
    if recorded is None:  # nothing was checked (a plan always checks something)
        return Verdict(DUNNO, "n/a", "no identity to check")
    reason = " ".join(f"{r.identity}={r.result}" for r in (helo, mail_from) if r is not None)
    refusals = [c for c in candidates if c is not None]
    if refusals:
        severity = max(s for s, _ in refusals)
        return Verdict(next(a for s, a in refusals if s == severity), recorded.result, reason)
    if rules.settings.header == "authentication-results":
        header = authentication_results_header(request, recorded, rules.settings.authserv_id)
    else:
        header = received_spf_header(request, recorded, rules.receiver)
    return Verdict("PREPEND " + header, recorded.result, reason)


def for_state(action: str, state: str) -> str:
    """*action* as allowed at *state*: no PREPEND at END-OF-MESSAGE (access(5))."""
    if state == "END-OF-MESSAGE" and action.startswith("PREPEND "):
        return DUNNO
    return action


# -- headers -----------------------------------------------------------------------------


def _details(request: PolicyRequest, receiver: str, identity: str = "") -> str:
    """RFC 7208 9.1 key=value pairs (``client-ip=...; ...; identity=...``)."""
    pairs = [f"client-ip={request.ip}"]
    if identity != "helo":
        pairs.append("envelope-from=" + quoted(one_line(request.sender, 300, ascii_only=False), DOT_ATOM))
    if request.helo:
        pairs.append("helo=" + quoted(one_line(request.helo, 300, ascii_only=False), DOT_ATOM))
    pairs.append("receiver=" + quoted(receiver, DOT_ATOM))
    if identity:
        pairs.append(f"identity={identity}")
    return "; ".join(pairs)


def _fit(header: str) -> str:
    header = one_line(header, 10 * _MAX_HEADER, ascii_only=False)
    return header if len(header) <= _MAX_HEADER else header[: _MAX_HEADER - 3] + "..."


def received_spf_header(request: PolicyRequest, result: SPFResult, receiver: str) -> str:
    """``Received-SPF: ...`` (RFC 7208 9.1): the checker's text (srsd.received_spf) when it
    has one, else srsd's own (results that come from srsd: overload, time-out,
    HELO not checkable); both on one line, control characters removed."""
    value = one_line(result.header, 10 * _MAX_HEADER, ascii_only=False)
    if not value or len(value) > _MAX_HEADER - 14:
        explanation = one_line(result.explanation or _DEFAULT_EXPLANATION.get(result.result, ""), 200)
        value = (
            f"{HEADER_RESULT.get(result.result, 'TempError')} {comment(f'{receiver}: {explanation}')} "
            + _details(request, receiver, result.identity)
        )
    return _fit("Received-SPF: " + value)


def authentication_results_header(request: PolicyRequest, result: SPFResult, authserv_id: str) -> str:
    """``Authentication-Results: <authserv-id>; spf=<result> smtp.mailfrom=<domain>``
    (RFC 8601 2.7.2), or ``smtp.helo=<name>`` when the HELO identity was checked."""
    if result.identity == "helo":
        prop, value = "smtp.helo", request.helo
    else:
        prop, value = "smtp.mailfrom", request.sender_domain
    resinfo = spf_result(result.result, prop, one_line(value, 300, ascii_only=False))
    return _fit(f"{FIELD}: " + field_value(authserv_id, [resinfo], folded=False))
