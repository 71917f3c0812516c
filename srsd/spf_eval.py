"""check_host() (RFC 7208 4-7) as a generator of DNS questions.

:meth:`Evaluation.run` yields each question as ``(name, qtype)`` and is sent back the
answer's records in :func:`srsd.dns.spf_records`' shape (``[((owner, rtype), value), ...]``,
CNAMEs included; ``[]`` for no such name or no data), or has
:class:`~srsd.spf_record.SPFTempError` thrown in when the lookup failed; it returns an
:class:`Outcome`. The evaluation does no I/O itself, so one evaluator serves both ways
srsd checks: blocking on :class:`srsd.dns.Resolver` (the command line) and on the reactor,
each answer kept in the cache fed back at once (:class:`srsd.spf.SPFChecker`).

Limits (RFC 7208 4.6.4): 10 terms that look DNS up (include, a, mx, ptr, exists,
redirect=), 2 void lookups (no such name or no data; counted per lookup, as pyspf and
libspf2 do), 10 MX names per mx (more is permerror), 10 PTR names per ptr or %{p} (the
rest ignored). An exp= is looked up only for a fail (6.2), outside the limits.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

from srsd.domains import read_address
from srsd.spf_macro import expand, uses_letter
from srsd.spf_record import Record, SPFPermError, SPFTempError, is_spf_record, parse_record

__all__ = ["DEFAULT_EXPLANATIONS", "Evaluation", "Outcome", "Question", "valid_domain"]

MAX_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
MAX_MX = 10
MAX_PTR = 10

#: the explanation of a result that has no exp= text (pyspf's wording, which srsd kept)
DEFAULT_EXPLANATIONS = {
    "pass": "sender SPF authorized",
    "fail": "SPF fail - not authorized",
    "softfail": "domain owner discourages use of this host",
    "neutral": "access neither permitted nor denied",
    "none": "",
    "permerror": "permanent error in processing",
    "temperror": "temporary DNS error in processing",
}

Question = tuple[str, str]  # (name, qtype) the evaluation asks of its driver
Steps = Generator[Question, list, "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What check_host() found: ``result`` (RFC 7208 2.6), ``explanation`` (6.2, or the
    default), the ``mechanism`` that matched (its text; None for the default result),
    and for a permerror or temperror the ``problem`` (the term at fault, if one) and
    ``reason`` (what went wrong)."""

    result: str
    explanation: str
    mechanism: str | None = None
    problem: str = ""
    reason: str = ""


def valid_domain(domain: str) -> bool:
    """A name check_host() can check (RFC 7208 4.3): labels of 1..63 bytes, at least two
    of them (a trailing dot aside), at most 253 bytes."""
    body = domain[:-1] if domain.endswith(".") else domain
    return "." in body and len(body) <= 253 and _askable(body)


def _askable(name: str) -> bool:
    """A name worth a DNS question: labels of 1..63 bytes (a trailing dot aside); any other
    is a lookup with no records (pyspf's rule)."""
    body = name[:-1] if name.endswith(".") else name
    if not body or body[0] == "." or body[-1] == "." or ".." in body:
        return False
    return len(body) < 64 or all(len(label) < 64 for label in body.split("."))


class Evaluation:
    """One check_host(*ip*, domain, *sender*) (RFC 7208 4).

    :param ip: the SMTP client's address (an IPv4-mapped IPv6 address is checked as IPv4).
    :param sender: the MAIL FROM address; empty checks the HELO identity
        (``postmaster@helo``, RFC 7208 2.3); no local part is ``postmaster`` (4.3).
    :param helo: the HELO/EHLO name (``%{h}``).
    :param receiver: this host's name (``%{r}``; ``unknown`` when empty).
    :raises ValueError: *ip* is not an IP address.
    """

    def __init__(self, ip: str, sender: str, helo: str, receiver: str = "") -> None:
        self.address, self.packed = read_address(ip)  # the text (%{c}, client-ip=) and the bytes
        self.ip_int = int.from_bytes(self.packed, "big")
        self.v4 = len(self.packed) == 4
        self.identity = "mailfrom" if sender else "helo"
        self.envelope_sender = sender or f"postmaster@{helo}"
        local, at, domain = self.envelope_sender.rpartition("@")
        if not at:
            local, domain = "postmaster", self.envelope_sender
        self.local = local or "postmaster"
        self.domain = domain
        self.sender = f"{self.local}@{domain}"
        self.helo = helo
        self.receiver = receiver or "unknown"
        self.lookups = 0
        self.voids = 0
        self.sender_specific = False  # a record or explanation read the local part
        self._validated: list[str] | None = None

    # -- the check ------------------------------------------------------------------

    def run(self) -> Steps:
        """The evaluation: yields questions, returns the :class:`Outcome` (never raises)."""
        try:
            if not valid_domain(self.domain):
                return Outcome("none", DEFAULT_EXPLANATIONS["none"])
            result, mechanism, record, domain = yield from self._check(self.domain)
            explanation = DEFAULT_EXPLANATIONS[result]
            if result == "fail" and record is not None and record.exp is not None:
                explanation = (yield from self._explain(record.exp, domain)) or explanation
            return Outcome(result, explanation, mechanism)
        except SPFPermError as exc:
            return Outcome("permerror", f"SPF Permanent Error: {exc}", None, exc.term, exc.message)
        except SPFTempError as exc:
            return Outcome("temperror", f"SPF Temporary Error: {exc}", None, "", str(exc))

    def _check(self, domain: str) -> Generator[Question, list, tuple[str, str | None, Record | None, str]]:
        """check_host() of *domain*: (result, the matching term, the record, the domain
        whose record decided) -- for a redirect, the target's (6.1)."""
        record = yield from self._record(domain)
        if record is None:
            return "none", None, None, domain
        for mechanism in record.mechanisms:
            if (yield from self._matches(mechanism, domain)):
                return mechanism.result, mechanism.text, record, domain
        if record.redirect is None:
            return "neutral", None, record, domain  # no match, no redirect: neutral (4.7)
        self._count(f"redirect={record.redirect}")
        target = yield from self._target(record.redirect, domain)
        found = yield from self._check(target)
        if found[0] == "none":
            raise SPFPermError("redirect domain has no SPF record", target)
        return found

    def _record(self, domain: str) -> Generator[Question, list, Record | None]:
        """The SPF record of *domain* (4.4, 4.5): None when it has none.

        :raises SPFPermError: two or more records, a non-ASCII one, a syntax error.
        """
        if not _askable(domain):
            return None
        texts = [b"".join(strings) for strings in (yield from self._lookup(domain, "TXT"))]
        records = [text for text in texts if is_spf_record(text.decode("latin-1"))]
        if not records:
            return None
        if len(records) > 1:
            raise SPFPermError("Two or more type TXT spf records found.")
        try:
            text = records[0].decode("ascii")
        except UnicodeDecodeError:
            raise SPFPermError(f"Non-ascii characters found in SPF record for {domain}") from None
        return parse_record(text)

    def _matches(self, mechanism, domain: str) -> Generator[Question, list, bool]:
        """Whether *mechanism* matches the client (RFC 7208 5)."""
        name = mechanism.name
        if name == "all":
            return True
        if name == "ip4":
            return self.v4 and self._in(mechanism.network, mechanism.cidr4)
        if name == "ip6":
            return not self.v4 and self._in(mechanism.network, mechanism.cidr6)
        self._count(mechanism.text)
        target = domain if mechanism.domain_spec is None else (yield from self._target(mechanism.domain_spec, domain))
        if name == "include":
            result = (yield from self._check(target))[0]
            if result == "none":
                raise SPFPermError(f"No valid SPF record for included domain: {target}", mechanism.text)
            return result == "pass"  # fail, softfail, neutral: no match (5.2)
        if name == "a":
            return (yield from self._has_address(target, mechanism))
        if name == "mx":
            exchanges = yield from self._lookup(target, "MX")
            if len(exchanges) > MAX_MX:
                raise SPFPermError(f"More than {MAX_MX} MX records returned", mechanism.text)
            for _preference, host in sorted(exchanges):
                if (yield from self._has_address(host, mechanism)):
                    return True
            return False
        if name == "ptr":
            target = target.rstrip(".").lower()
            return any(n == target or n.endswith("." + target) for n in (yield from self._validated_names()))
        # exists: an A record, whatever the client's address family (5.7)
        return bool((yield from self._lookup(target, "A")))

    def _has_address(self, host: str, mechanism) -> Generator[Question, list, bool]:
        family, qtype, bits = (
            (socket.AF_INET, "A", mechanism.cidr4) if self.v4 else (socket.AF_INET6, "AAAA", mechanism.cidr6)
        )
        for address in (yield from self._lookup(host, qtype)):
            if self._in(socket.inet_pton(family, address), bits):
                return True
        return False

    def _in(self, network: bytes, bits: int) -> bool:
        shift = 8 * len(network) - bits
        return self.ip_int >> shift == int.from_bytes(network, "big") >> shift

    def _validated_names(self) -> Generator[Question, list, list[str]]:
        """The client's validated domain names (5.5): PTR names (the first 10) whose
        addresses include it; lower case, no trailing dot."""
        if self._validated is None:
            if self.v4:
                reverse = ".".join(reversed(self.address.split("."))) + ".in-addr.arpa"
            else:
                reverse = ".".join(reversed(self.packed.hex())) + ".ip6.arpa"
            family, qtype = (socket.AF_INET, "A") if self.v4 else (socket.AF_INET6, "AAAA")
            validated = []
            for host in (yield from self._lookup(reverse, "PTR"))[:MAX_PTR]:
                addresses = yield from self._lookup(host, qtype)
                if any(socket.inet_pton(family, a) == self.packed for a in addresses):
                    validated.append(host.rstrip(".").lower())
            self._validated = validated
        return self._validated

    # -- DNS and limits -----------------------------------------------------------------

    def _lookup(self, name: str, qtype: str) -> Generator[Question, list, list]:
        """The values of *name*'s *qtype* records (CNAMEs followed by the resolver); a
        lookup that finds none is a void lookup."""
        if not _askable(name):
            return []
        records = yield (name, qtype)
        values = [value for (_owner, rtype), value in records if rtype == qtype]
        if not values:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise SPFPermError(f"Void lookup limit of {MAX_VOID_LOOKUPS} exceeded")
        return values

    def _count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise SPFPermError("Too many DNS lookups", term)

    # -- macros and explanations -------------------------------------------------------------

    def _target(self, spec: str, domain: str) -> Generator[Question, list, str]:
        """A domain-spec expanded (7) with *domain* as ``%{d}``."""
        value = yield from self._values(spec, domain)
        return expand(spec, value)

    def _values(self, text: str, domain: str) -> Generator[Question, list, Callable[[str], str]]:
        """The macro letters' values for *text* (``%{p}`` looked up only when it is used)."""
        validated = (yield from self._validated_names()) if uses_letter(text, "p") else []
        ptr = _chosen_name(validated, domain)
        if uses_letter(text, "s") or uses_letter(text, "l"):
            self.sender_specific = True
        values = {
            "s": self.sender,
            "l": self.local,
            "o": self.domain,
            "d": domain,
            "i": self.address if self.v4 else ".".join(self.packed.hex().upper()),  # as RFC 7208 7.4's
            "p": ptr,
            "v": "in-addr" if self.v4 else "ip6",
            "h": self.helo,
            "c": self.address,
            "r": self.receiver,
        }
        return lambda letter: values[letter] if letter != "t" else str(int(time.time()))

    def _explain(self, spec: str, domain: str) -> Generator[Question, list, str | None]:
        """The exp= text for a fail (6.2), or None: any error, no TXT record or more
        than one, means the default explanation."""
        try:
            target = yield from self._target(spec, domain)
            if not _askable(target):
                return None
            records = yield (target, "TXT")  # outside the lookup limits
            texts = [b"".join(value) for (_owner, rtype), value in records if rtype == "TXT"]
            if len(texts) != 1:
                return None
            text = texts[0].decode("ascii")
            value = yield from self._values(text, domain)
            return expand(text, value, explanation=True)
        except (SPFPermError, SPFTempError, UnicodeDecodeError):
            return None


def _chosen_name(validated: list[str], domain: str) -> str:
    """``%{p}`` (7.3): the domain itself if validated, else a validated subdomain of it,
    else any validated name, else ``unknown``."""
    domain = domain.rstrip(".").lower()
    for name in validated:
        if name == domain:
            return name
    for name in validated:
        if name.endswith("." + domain):
            return name
    return validated[0] if validated else "unknown"
