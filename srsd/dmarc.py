"""DMARC (RFC 9989) for incoming mail: policy discovery, alignment, result, local action.

Pure: no reactor, no sockets. DNS goes through an injected :class:`DMARCDNS` (two
blocking calls, ``txt`` and ``exists``); :class:`ResolverDNS` puts srsd's resolver
behind it with a per-message deadline, so the caller runs :func:`check` on a worker
thread. Section numbers are RFC 9989's (taken from draft-ietf-dmarc-dmarcbis-41, the
text the RFC was published from). See ``docs/dmarc.md``.

One message, four steps, one function each:

1. :func:`author_domains` -- the RFC5322.From domain(s) (5.3.1), or why there is none.
2. :func:`evaluate` -- the DMARC verdict for one Author Domain: policy discovery by the
   DNS tree walk (4.10, 4.10.1; no public suffix list), Identifier Alignment with the
   SPF-authenticated MAIL FROM domain and each passing DKIM ``d=`` (4.4, 4.10.2), and
   the policy to apply (``p``/``sp``/``np``, ``t=y`` one level lower; no ``pct``).
3. :func:`decide` -- what srsd does about it (``dmarc.action``; default: nothing but the
   header), including the ARC override for trusted sealers (local policy, 5.4).
4. :func:`authentication_result` -- the ``dmarc=`` result for Authentication-Results
   (RFC 8601; ``header.from``, ``policy.dmarc``: RFC 9989 9.1) as an ``authres`` object.

:func:`check` runs all four for a message (several Author Domains: the most severe, 11.5).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from email.headerregistry import HeaderRegistry
from typing import Any, Protocol

from authres.dmarc import DMARCAuthenticationResult

from srsd.config import DMARCSettings
from srsd.dns import DNSTemporaryError, Resolver
from srsd.header_text import comment_text, one_line

__all__ = [
    "PASS",
    "FAIL",
    "NONE",
    "TEMPERROR",
    "PERMERROR",
    "MAX_WALK_QUERIES",
    "MAX_AUTHOR_DOMAINS",
    "DMARCSettings",
    "DMARCTempError",
    "DMARCDNS",
    "ResolverDNS",
    "DMARCRecord",
    "parse_record",
    "walk_targets",
    "tree_walk",
    "policy_record",
    "organizational_domain",
    "AuthorDomains",
    "author_domains",
    "DKIMOutcome",
    "Alignment",
    "DMARCResult",
    "evaluate",
    "ARCChain",
    "arc_sealers",
    "DMARCDecision",
    "decide",
    "authentication_result",
    "DMARCVerdict",
    "check",
]

PASS, FAIL, NONE, TEMPERROR, PERMERROR = "pass", "fail", "none", "temperror", "permerror"

#: 4.10: a walk never asks more than eight names
MAX_WALK_QUERIES = 8
#: 11.5: Author Domains of one message evaluated at most; more is permerror
MAX_AUTHOR_DOMAINS = 4
#: characters of a reason kept in the A-R comment (as srsd.mailauth.results)
MAX_COMMENT = 200
#: ``[dmarc]`` as srsd.config has it when the section is absent
DEFAULT_SETTINGS = DMARCSettings()

_POLICIES = ("none", "quarantine", "reject")
_SEVERITY = {None: 0, "none": 0, "quarantine": 1, "reject": 2}
#: 4.7 t=y: "the policy applied to any failing messages will be one level below"
_ONE_LEVEL_BELOW = {"reject": "quarantine", "quarantine": "none", "none": "none"}


_DOMAIN = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")


# -- DNS --------------------------------------------------------------------------------------


class DMARCTempError(Exception):
    """A DNS query that failed for now (timeout, SERVFAIL, budget spent): temperror."""


class DMARCDNS(Protocol):
    """The two lookups DMARC needs. Both block; both raise :class:`DMARCTempError`
    for a temporary failure, never for a name that does not exist."""

    def txt(self, name: str) -> tuple[str, ...]:
        """Every TXT record at *name*, each one's character-strings joined (4.5);
        () for NXDOMAIN, NODATA or an impossible name."""
        ...

    def exists(self, name: str) -> bool:
        """False only when *name* is NXDOMAIN (RFC 9989 3.2.13, A.4; RFC 8020)."""
        ...


class ResolverDNS:
    """:class:`DMARCDNS` over srsd's :class:`~srsd.dns.Resolver` (its servers, cache,
    timeouts), each query capped by what is left until *deadline* (``time.monotonic()``
    seconds; None = only the resolver's own timeout). ``queries`` counts the lookups."""

    def __init__(self, resolver: Resolver, deadline: float | None = None) -> None:
        self.resolver = resolver
        self.deadline = deadline
        self.queries = 0

    def _timeout(self, what: str) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DMARCTempError(f"DNS {what}: DMARC lookup budget spent")
        return left

    def txt(self, name: str) -> tuple[str, ...]:
        self.queries += 1
        try:
            answer = self.resolver.resolve(name, "TXT", self._timeout(f"TXT {name}"))
        except DNSTemporaryError as exc:
            raise DMARCTempError(str(exc)) from None
        except ValueError:
            return ()  # a name DNS cannot hold has no record
        if answer is None:
            return ()
        return tuple(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer)

    def exists(self, name: str) -> bool:
        self.queries += 1
        try:
            return self.resolver.exists(name, self._timeout(f"A {name}"))
        except DNSTemporaryError as exc:
            raise DMARCTempError(str(exc)) from None
        except ValueError:
            return False


class _Memo:
    """One message's lookups: a name asked twice (the walks of the Author Domain and of
    an identifier share their upper names) costs one query. Failures are remembered too."""

    def __init__(self, dns: DMARCDNS) -> None:
        self.dns = dns
        self._answers: dict[tuple[str, str], Any] = {}  # (kind, name) -> answer or DMARCTempError
        self.asked: list[str] = []  # names queried for TXT, in order (for logs and tests)

    def _ask(self, kind: str, name: str) -> Any:
        key = (kind, name)
        if key not in self._answers:
            if kind == "txt":
                self.asked.append(name)
            try:
                self._answers[key] = getattr(self.dns, kind)(name)
            except DMARCTempError as exc:
                self._answers[key] = exc
        found = self._answers[key]
        if isinstance(found, DMARCTempError):
            raise found
        return found

    def txt(self, name: str) -> tuple[str, ...]:
        return self._ask("txt", name)

    def exists(self, name: str) -> bool:
        return self._ask("exists", name)


# -- records (4.7, 4.8) ---------------------------------------------------------------------------

_WSP = " \t"
_TAG_NAME = re.compile(r"^[A-Za-z]+$")
_VALUE = re.compile(r"^[\x20-\x3a\x3c-\x7e]+$")  # 4.8 dmarc-value: printing characters but ";"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+$")  # RFC 3986 scheme ":" something


def _tag_list(text: str) -> list[tuple[str, str]]:
    """``tag=value; ...`` (RFC 6376 3.2 / RFC 9989 4.8: WSP around ``=`` and ``;``)
    -> [(tag, value)], in order; a part without ``=`` comes back as (part, "")."""
    out = []
    for part in text.split(";"):
        part = part.strip(_WSP + "\r\n")
        if not part:
            continue
        tag, eq, value = part.partition("=")
        out.append((tag.strip(_WSP + "\r\n"), value.strip(_WSP + "\r\n") if eq else ""))
    return out


def _is_dmarc1(text: str) -> bool:
    """4.7 v: the first tag, ``v``, with the case-sensitive value ``DMARC1``."""
    tags = _tag_list(text)
    return bool(tags) and tags[0][0].lower() == "v" and tags[0][1] == "DMARC1"


@dataclass(frozen=True)
class DMARCRecord:
    """A DMARC Policy Record (4.7) as parsed. Tag values that break the grammar (4.8) are
    dropped in favour of the defaults and named in ``invalid``; unknown tags (``pct``,
    ``rf``, ``ri`` among them: removed by RFC 9989, C.5.2) are ignored and named in
    ``ignored``. Tag names are read case-insensitively; the first occurrence counts."""

    text: str
    p: str | None = None  # None: absent or invalid
    sp: str | None = None
    np: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    t: bool = False  # t=y: the Domain Owner is testing (4.7)
    psd: str = "u"  # y / n / u (4.7)
    rua: tuple[str, ...] = ()  # valid URIs, kept for aggregate reports (RFC 9990)
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    invalid: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        """4.10.1: a valid ``p`` and no invalid ``sp``/``np``; else only with a valid rua
        (then read as p=none), else no DMARC processing at all."""
        return self.p is not None and not {"p", "sp", "np"} & set(self.invalid)


def _uri_list(value: str) -> tuple[str, ...]:
    uris = []
    for item in value.split(","):
        item = item.strip(_WSP)
        item = re.sub(r"![0-9]+[kmgt]?$", "", item, flags=re.IGNORECASE)  # obs-dmarc-report-size (4.8)
        if _URI.match(item):
            uris.append(item)
    return tuple(uris)


def _fo_valid(value: str) -> bool:
    parts = value.split(":")
    return (
        all(p in ("0", "1", "d", "s") for p in parts) and len(parts) == len(set(parts)) and not {"0", "1"} <= set(parts)
    )


def _choice(*allowed: str) -> Any:
    return lambda value: value.lower() if value.lower() in allowed else None


#: 4.8 Table 2: tag -> parser of its value (None = a syntax error: the default applies)
_TAG_RULES: dict[str, Any] = {
    "p": _choice(*_POLICIES),
    "sp": _choice(*_POLICIES),
    "np": _choice(*_POLICIES),
    "adkim": _choice("r", "s"),
    "aspf": _choice("r", "s"),
    "t": lambda value: {"y": True, "n": False}.get(value.lower()),
    "psd": _choice("y", "n", "u"),
    "rua": lambda value: _uri_list(value) or None,
    "ruf": lambda value: _uri_list(value) or None,
    "fo": lambda value: value.lower() if _fo_valid(value.lower()) else None,
}


@functools.lru_cache(maxsize=4096)  # records repeat across messages; DMARCRecord is immutable
def parse_record(text: str) -> DMARCRecord | None:
    """Parse one TXT record's text; None when it is not a DMARC record (no leading
    ``v=DMARC1``: 4.7, "the entire record MUST be ignored")."""
    if not _is_dmarc1(text):
        return None
    values: dict[str, Any] = {}
    invalid: list[str] = []
    ignored: list[str] = []
    for tag, value in _tag_list(text)[1:]:
        name = tag.lower()
        if name in values or name in invalid:
            continue  # a repeated tag: the first one counts
        if not _TAG_NAME.match(tag):
            invalid.append(tag)
            continue
        if name not in _TAG_RULES:
            ignored.append(name)
            continue
        parsed = _TAG_RULES[name](value) if value and _VALUE.match(value) else None
        if parsed is None:
            invalid.append(name)
        else:
            values[name] = parsed
    return DMARCRecord(text=text, invalid=tuple(invalid), ignored=tuple(ignored), **values)


def _dmarc_record_at(memo: _Memo, domain: str) -> DMARCRecord | None:
    """The one DMARC record at ``_dmarc.<domain>``; None when there is none or more than
    one (4.10 step 2: "they are all discarded")."""
    records = [r for r in (parse_record(t) for t in memo.txt(f"_dmarc.{domain}")) if r is not None]
    return records[0] if len(records) == 1 else None


# -- the DNS tree walk (4.10) -----------------------------------------------------------------


def walk_targets(domain: str) -> list[str]:
    """The names a full tree walk from *domain* asks for, in order (4.10 steps 3, 4, 7):
    the domain itself, then -- for eight labels or more -- its last seven labels, then one
    label less each time down to the top-level label. Never more than eight."""
    labels = domain.split(".")
    targets = [domain]
    count = len(labels)
    count = count - 1 if count < MAX_WALK_QUERIES else MAX_WALK_QUERIES - 1
    while count >= 1:
        targets.append(".".join(labels[-count:]))
        count -= 1
    return targets


@dataclass(frozen=True)
class _Walk:
    start: str
    found: tuple[tuple[str, DMARCRecord], ...]  # longest name first

    def record_at(self, domain: str) -> DMARCRecord | None:
        return next((record for name, record in self.found if name == domain), None)


def tree_walk(domain: str, dns: DMARCDNS | _Memo, first: int = 0) -> _Walk:
    """Walk from ``walk_targets(domain)[first]`` up, collecting each name with exactly one
    DMARC record; stop after a record with ``psd=y`` or ``psd=n`` (4.10 steps 2, 6).

    :raises DMARCTempError: a query failed for now; the walk's answer is unknown.
    """
    memo = dns if isinstance(dns, _Memo) else _Memo(dns)
    found = []
    for target in walk_targets(domain)[first:]:
        record = _dmarc_record_at(memo, target)
        if record is not None:
            found.append((target, record))
            if record.psd in ("y", "n"):
                break
    return _Walk(domain, tuple(found))


def _one_label_below(domain: str, ancestor: str) -> str:
    labels = domain.split(".")
    return ".".join(labels[-(ancestor.count(".") + 2) :])


def organizational_domain(walk: _Walk) -> str:
    """4.10.2: over the records a walk found, longest name first: ``psd=n`` -> that name;
    ``psd=y`` (not at the start) -> the name one label below it; else the name with the
    fewest labels; no record at all -> the starting domain itself."""
    for name, record in walk.found:
        if record.psd == "n":
            return name
        if record.psd == "y" and name != walk.start:
            return _one_label_below(walk.start, name)
    return walk.found[-1][0] if walk.found else walk.start


# -- the Author Domain (5.3.1) -----------------------------------------------------------------


@dataclass(frozen=True)
class AuthorDomains:
    """The RFC5322.From domains of a message (A-labels, lower case, trailing dot cut), or
    ``error`` saying why there is none to evaluate (then ``domains`` is empty)."""

    domains: tuple[str, ...]
    error: str = ""


_HEADERS = HeaderRegistry()


def _a_label(domain: str) -> str | None:
    domain = domain.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return None
    if len(domain) > 253 or not _DOMAIN.match(domain):
        return None
    return domain


@functools.lru_cache(maxsize=4096)  # the stdlib parser costs ~0.2 ms a field; lists repeat From: values
def _from_field_domains(value: str) -> tuple[str, ...] | str:
    """The domains of one From: field's mailboxes, in order, or why there are none."""
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", value).strip()
    try:
        header = _HEADERS("From", unfolded)
        addresses = header.addresses
        defects = [d for d in header.defects if type(d).__name__ != "ObsoleteHeaderDefect"]
    except Exception:  # the stdlib parser raises on some garbage (e.g. "a@")
        return "unparseable From: field"
    if defects:
        return f"malformed From: field ({defects[0]})"
    if not addresses:
        return "From: field without an address"
    domains: list[str] = []
    for address in addresses:
        domain = _a_label(address.domain) if address.domain and address.username else None
        if domain is None:
            return f"From: address {address.addr_spec!r} has no usable domain"
        domains.append(domain)
    return tuple(domains)


def author_domains(from_values: Sequence[str]) -> AuthorDomains:
    """The Author Domain(s) from the values of every ``From:`` field of a message.

    No From: field, a field the RFC 5322 parser reports defects in (the gaps between
    parsers that "From: a@x (c) <b@y>" style forgeries use), a mailbox without a domain,
    a domain literal or an impossible name: ``error``, and the caller's result is
    permerror (4.4: "Identifier Alignment cannot occur with a message that is not valid
    per RFC 5322"). Several fields or mailboxes: every distinct domain (11.5).
    """
    if not from_values:
        return AuthorDomains((), "no From: field")
    domains: list[str] = []
    for value in from_values:
        found = _from_field_domains(value)
        if isinstance(found, str):
            return AuthorDomains((), found)
        for domain in found:
            if domain not in domains:
                domains.append(domain)
    return AuthorDomains(tuple(domains))


# -- evaluation ------------------------------------------------------------------------------------


class DKIMLike(Protocol):
    """A verified signature: ``result`` (RFC 8601 2.7.1), ``domain`` (d=), ``selector`` (s=).
    :class:`DKIMOutcome` and :class:`srsd.mailauth.verify.SignatureResult` both are."""

    result: str
    domain: str
    selector: str


@dataclass(frozen=True)
class DKIMOutcome:
    result: str
    domain: str
    selector: str = ""


@dataclass(frozen=True)
class Alignment:
    """One Authenticated Identifier checked against the Author Domain."""

    method: str  # "spf" or "dkim"
    domain: str  # the SPF-authenticated MAIL FROM domain, or d=
    aligned: bool | None  # None: not decided (DNS failed, or not needed after a pass)
    how: str  # "strict", "relaxed", "different Organizational Domain", ...
    selector: str = ""


@dataclass(frozen=True)
class DMARCResult:
    """The DMARC verdict for one Author Domain (5.3).

    ``policy`` is ``policy.dmarc`` of 9.1: the Domain Owner Assessment Policy for failing
    mail after ``sp``/``np`` and ``t=y`` (None when unknown or no record applies);
    ``published`` the same before ``t=y``; ``policy_tag`` which tag it came from.
    """

    result: str
    author_domain: str | None
    reason: str = ""
    record: DMARCRecord | None = None
    policy_domain: str | None = None  # where the record applied was found (3.2.5)
    organizational_domain: str | None = None  # of the Author Domain, when it was needed
    published: str | None = None
    policy: str | None = None
    policy_tag: str = ""
    testing: bool = False
    alignments: tuple[Alignment, ...] = ()
    queried: tuple[str, ...] = ()  # TXT names asked, in order


def _identifiers(spf_result: str, spf_domain: str, dkim: Sequence[DKIMLike], wanted: str) -> list[tuple[str, str, str]]:
    """(method, domain, selector) of the SPF identity and every DKIM ``d=`` whose result
    is *wanted* (``pass``: the Authenticated Identifiers, 4.4; ``temperror``: those a
    retry could still authenticate)."""
    out = []
    if spf_result.lower() == wanted and spf_domain:
        out.append(("spf", spf_domain.strip().rstrip(".").lower(), ""))
    out += [
        ("dkim", (s.domain or "").strip().rstrip(".").lower(), s.selector or "")
        for s in dkim
        if (s.result or "").lower() == wanted and s.domain
    ]
    return out


def evaluate(
    author_domain: str,
    dns: DMARCDNS,
    *,
    spf_result: str = NONE,
    spf_domain: str = "",
    dkim: Sequence[DKIMLike] = (),
) -> DMARCResult:
    """The DMARC verdict for *author_domain* (5.3.2 - 5.3.5, 4.10).

    :param spf_result: the SPF result for the MAIL FROM identity (RFC 7208; not HELO:
        4.4.2); only ``pass`` authenticates. ``temperror`` (here and for a signature)
        makes a failure ``temperror`` when that identifier would align: a retry may pass.
    :param spf_domain: the domain SPF checked for MAIL FROM: the MAIL FROM domain, or
        for a null sender the HELO name (RFC 7208 2.4, RFC 9989 3.2.4).
    :param dkim: every DKIM signature's outcome; those with ``pass`` authenticate d=.
    :returns: ``none`` (no record applies, or one without a usable ``p`` and rua),
        ``pass``, ``fail``, or ``temperror`` when a lookup the verdict depends on failed
        (5.3.6: "cannot be considered to pass or fail"). Never raises for DNS.
    """
    memo = _Memo(dns)
    author = author_domain.strip().rstrip(".").lower()
    base = DMARCResult(result=TEMPERROR, author_domain=author)
    try:
        discovered = _discover(author, memo)
    except DMARCTempError as exc:
        return replace(base, reason=str(exc), queried=tuple(memo.asked))
    if discovered is None:
        return replace(base, result=NONE, reason="no DMARC policy record", queried=tuple(memo.asked))
    record, policy_domain, walk = discovered
    base = replace(base, record=record, policy_domain=policy_domain)
    if not record.usable:
        if not record.rua:
            why = f"record at {policy_domain} has no valid p= ({', '.join(record.invalid) or 'p'}) and no rua="
            return replace(base, result=NONE, reason=why, queried=tuple(memo.asked))
        record = replace(record, p="none", sp=None, np=None)  # 4.10.1: act as p=none

    identifiers = _identifiers(spf_result, spf_domain, dkim, PASS)
    alignments, org, errors = _align(author, record, identifiers, memo, walk)
    passed = any(a.aligned for a in alignments)
    policy_error = ""
    try:
        published, tag = _published_policy(author, record, policy_domain, memo)
    except DMARCTempError as exc:
        published, tag, policy_error = None, "", str(exc)
    applied = _ONE_LEVEL_BELOW[published] if (published and record.t) else published
    base = replace(
        base, organizational_domain=org, published=published, policy=applied, policy_tag=tag,
        testing=record.t, alignments=tuple(alignments), queried=tuple(memo.asked),
    )  # fmt: skip
    if passed:
        aligned = next(a for a in alignments if a.aligned)
        return replace(base, result=PASS, reason=f"{aligned.method} {aligned.domain} aligned ({aligned.how})")
    if errors:
        return replace(base, result=TEMPERROR, reason=errors[0])
    if policy_error:
        return replace(base, result=TEMPERROR, reason=policy_error)
    # An SPF or DKIM check that failed for now, for an identifier that would align: a
    # retry may pass, so this is no verdict (5.3.6) -- never a refusal for a DNS hiccup.
    retry = _identifiers(spf_result, spf_domain, dkim, TEMPERROR)
    if retry:
        maybe, _, maybe_errors = _align(author, record, retry, memo, walk)
        undecided = next((a for a in maybe if a.aligned), None)
        if undecided is not None or maybe_errors:
            why = (f"{undecided.method} {undecided.domain} would align, its check failed for now"
                   if undecided else maybe_errors[0])  # fmt: skip
            return replace(base, result=TEMPERROR, reason=why, queried=tuple(memo.asked))
    why = "no aligned authenticated identifier" if alignments else "no authenticated identifier"
    return replace(base, result=FAIL, reason=why)


def _discover(author: str, memo: _Memo) -> tuple[DMARCRecord, str, _Walk | None] | None:
    """4.10.1: (record, where it was found, the walk when one was made), None for none."""
    own = _dmarc_record_at(memo, author)
    if own is not None:
        return own, author, None
    walk = tree_walk(author, memo, first=1)  # its start is still the Author Domain (4.10.2)
    if not walk.found:
        return None
    org = organizational_domain(walk)
    if walk.record_at(org) is not None:
        return walk.record_at(org), org, walk
    psd = next(name for name, record in walk.found if record.psd == "y")  # org has no record: the PSD's
    return walk.record_at(psd), psd, walk  # type: ignore[return-value]


def policy_record(domain: str, dns: DMARCDNS) -> tuple[DMARCRecord, str] | None:
    """The DMARC Policy Record a receiver applies to mail from *domain*, and the domain it
    was found at (4.10.1: the domain's own, else its Organizational Domain's, else a
    PSD's); None when there is none. What ``srsd check-dns`` reports.

    :raises DMARCTempError: a query failed for now.
    """
    found = _discover(domain.strip().rstrip(".").lower(), _Memo(dns))
    return (found[0], found[1]) if found is not None else None


def _published_policy(author: str, record: DMARCRecord, policy_domain: str, memo: _Memo) -> tuple[str, str]:
    """4.10.1: p at the Author Domain; for a subdomain of the policy domain sp when the
    Author Domain exists, np when it does not (NXDOMAIN), each falling back to p (4.7)."""
    assert record.p is not None
    if author == policy_domain:
        return record.p, "p"
    sp = (record.sp, "sp") if record.sp else (record.p, "p")
    np = (record.np, "np") if record.np else sp
    if np[0] == sp[0]:
        return sp  # the same either way: no existence query
    return sp if memo.exists(author) else np


def _align(
    author: str,
    record: DMARCRecord,
    identifiers: list[tuple[str, str, str]],
    memo: _Memo,
    walk: _Walk | None,
) -> tuple[list[Alignment], str | None, list[str]]:
    """Identifier Alignment (4.4, 4.10.2) of each identifier, stopping at the first pass.
    Returns (alignments, the Author Domain's Organizational Domain if it was needed,
    DNS errors that left an identifier undecided)."""
    out: list[Alignment] = []
    errors: list[str] = []
    org_author: str | None = None
    org_error: str | None = None
    # exact matches first: they need no lookup (4.10.2 note)
    ordered = sorted(identifiers, key=lambda ident: ident[1] != author)
    for n, (method, domain, selector) in enumerate(ordered):
        mode = record.aspf if method == "spf" else record.adkim
        if domain == author:
            out.append(Alignment(method, domain, True, "strict" if mode == "s" else "relaxed (identical)", selector))
            out += [Alignment(m, d, None, "not checked (already passed)", s) for m, d, s in ordered[n + 1 :]]
            break
        if mode == "s":
            out.append(Alignment(method, domain, False, "strict: not identical", selector))
            continue
        if org_author is None and org_error is None:
            try:
                org_author = _author_org(author, memo, walk)
            except DMARCTempError as exc:
                org_error = str(exc)
        if org_author is None:
            out.append(Alignment(method, domain, None, f"relaxed: undecided ({org_error})", selector))
            errors.append(org_error or "")
            continue
        # org(domain) is domain or one of its ancestors: it can only equal org_author
        # when domain is org_author or below it -- no walk for unrelated identifiers
        if domain != org_author and not domain.endswith("." + org_author):
            out.append(Alignment(method, domain, False, f"relaxed: not under {org_author}", selector))
            continue
        try:
            org = organizational_domain(tree_walk(domain, memo))
        except DMARCTempError as exc:
            out.append(Alignment(method, domain, None, f"relaxed: undecided ({exc})", selector))
            errors.append(str(exc))
            continue
        if org == org_author:
            out.append(Alignment(method, domain, True, f"relaxed ({org})", selector))
            out += [Alignment(m, d, None, "not checked (already passed)", s) for m, d, s in ordered[n + 1 :]]
            break
        how = f"relaxed: Organizational Domain {org}, not {org_author}"
        out.append(Alignment(method, domain, False, how, selector))
    return out, org_author, errors


def _author_org(author: str, memo: _Memo, walk: _Walk | None) -> str:
    """The Author Domain's Organizational Domain, reusing the discovery walk."""
    if walk is None:  # the Author Domain had its own record: walk on from there
        walk = tree_walk(author, memo)
    return organizational_domain(walk)


# -- ARC and the local decision ----------------------------------------------------------------------


@dataclass(frozen=True)
class ARCChain:
    """An ARC chain as validated (RFC 8617): ``cv`` (pass / fail / none) and the sealer
    of each set as (instance, ARC-Seal d=), any order (see :func:`arc_sealers`)."""

    cv: str = "none"
    sealers: tuple[tuple[int, str], ...] = ()

    @property
    def newest_sealer(self) -> str:
        return max(self.sealers)[1] if self.sealers else ""


def arc_sealers(headers: Sequence[tuple[str, str]]) -> tuple[tuple[int, str], ...]:
    """(i=, d=) of every ``ARC-Seal`` field (RFC 8617 4.1.3) of a message, by instance;
    fields without a numeric ``i=`` or a ``d=`` are skipped (such a chain fails anyway)."""
    out = []
    for name, value in headers:
        if name.lower() != "arc-seal":
            continue
        tags = {tag.lower(): v for tag, v in _tag_list(re.sub(r"\s+", " ", value))}
        instance, domain = tags.get("i", ""), tags.get("d", "").strip().rstrip(".").lower()
        if instance.isdigit() and domain:
            out.append((int(instance), domain))
    return tuple(sorted(out))


@dataclass(frozen=True)
class DMARCDecision:
    """What srsd does with the message: ``disposition`` is ``"accept"``, ``"quarantine"``
    (Postfix hold queue), ``"reject"`` (5xx) or ``"defer"`` (4xx); ``reply`` the SMTP text
    for reject/defer (RFC 9989 7.2: the word DMARC in it); ``override`` the local-policy
    reason when a trusted ARC chain exempted a failure."""

    disposition: str
    reply: str = ""
    code: str = ""
    enhanced: str = ""
    override: str = ""


def decide(result: DMARCResult, settings: DMARCSettings, arc: ARCChain | None = None) -> DMARCDecision:
    """Apply ``dmarc.action`` to a verdict (5.3.6, 5.4: "always a matter of local policy").

    Only ``fail`` can be refused, by the applied policy (after ``t=y``): ``reject`` only
    with ``action = "enforce"``, quarantine with either enforcing action (p=none changes
    nothing: 5.4 MUST NOT). A failure whose ARC chain validates (cv=pass) and whose newest
    ARC-Seal is by a ``trusted_arc_sealers`` domain is accepted instead, recorded as a
    local-policy override (the result stays ``fail``). ``temperror`` defers when an action
    is set and ``temperror = "defer"``. none, pass, permerror: accept.
    """
    domain = result.author_domain or "-"
    if result.result == TEMPERROR and settings.action != "header" and settings.temperror == "defer":
        # RFC 7208 8.6's reply for the same condition in SPF (a DNS lookup failed for now)
        return DMARCDecision("defer", f"temporary DNS failure evaluating DMARC for {domain}, try again later",
                             "451", "4.4.3")  # fmt: skip
    if result.result != FAIL:
        return DMARCDecision("accept")
    if result.policy not in ("quarantine", "reject"):
        return DMARCDecision("accept")  # p=none (or t=y on quarantine): nothing to apply
    if arc is not None and arc.cv == PASS and arc.newest_sealer in settings.trusted_arc_sealers:
        return DMARCDecision("accept", override=f"local policy: ARC chain sealed by trusted {arc.newest_sealer}")
    if settings.action == "enforce" and result.policy == "reject":
        return DMARCDecision("reject", f"Email rejected per DMARC policy for {domain}", "550", "5.7.1")
    if settings.action in ("enforce", "quarantine"):
        return DMARCDecision("quarantine", f"held per DMARC policy for {domain}")
    return DMARCDecision("accept")


_DIS = {"accept": "none", "quarantine": "quarantine", "reject": "reject", "defer": "none"}


def authentication_result(result: DMARCResult, decision: DMARCDecision | None = None) -> DMARCAuthenticationResult:
    """The ``dmarc=`` result for Authentication-Results (RFC 8601 2.7; RFC 9989 9.1, 9.2):
    ``dmarc=fail (p=reject dis=none) reason="local policy: ..." header.from=example.com
    policy.dmarc=reject``. The comment gives the tag the policy came from, ``t=y`` and
    srsd's disposition (as OpenDMARC writes ``dis=``); ``reason`` a local-policy override
    or why there is no verdict. ``policy.dmarc`` is the applied policy, after ``t=y``."""
    comment = None
    reason = None
    if result.result in (PASS, FAIL) and result.published:
        comment = f"{result.policy_tag}={result.published}"
        if result.testing:
            comment += " t=y"
        if decision is not None:
            comment += f" dis={_DIS[decision.disposition]}"
    elif result.result in (TEMPERROR, PERMERROR) or (result.result == NONE and result.record is not None):
        # reasons quote DNS names, the record's tags, From: fields and the stdlib parser's
        # defect texts (unbalanced ")"): one line, parentheses escaped (RFC 5322 3.2.2)
        comment = comment_text(one_line(result.reason, MAX_COMMENT, ascii_only=True)) if result.reason else None
    if decision is not None and decision.override:
        reason = decision.override
    return DMARCAuthenticationResult(
        result=result.result,
        result_comment=comment,
        reason=reason,
        header_from=result.author_domain or None,
        policy=result.policy if result.result in (PASS, FAIL) else None,
    )


# -- one message --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DMARCVerdict:
    """:func:`check`'s answer: the verdict that decides (the most severe of the Author
    Domains), what to do, the A-R result, and every Author Domain's verdict."""

    result: DMARCResult
    decision: DMARCDecision
    authres: DMARCAuthenticationResult
    results: tuple[DMARCResult, ...] = field(default=())


def _severity(result: DMARCResult) -> tuple[int, int]:
    order = {FAIL: 4, TEMPERROR: 3, PERMERROR: 2, PASS: 1, NONE: 0}[result.result]
    return order, _SEVERITY[result.policy] if result.result == FAIL else 0


def check(
    from_values: Sequence[str],
    dns: DMARCDNS,
    settings: DMARCSettings = DEFAULT_SETTINGS,
    *,
    spf_result: str = NONE,
    spf_domain: str = "",
    dkim: Sequence[DKIMLike] = (),
    arc: ARCChain | None = None,
) -> DMARCVerdict:
    """DMARC for one message: :func:`author_domains`, :func:`evaluate` each (at most
    :data:`MAX_AUTHOR_DOMAINS`; the failing one with the strictest policy wins, 11.5),
    :func:`decide`, :func:`authentication_result`. Blocking (DNS): run it off the reactor.

    :param from_values: the value of every ``From:`` field, as on the wire.
    """
    authors = author_domains(from_values)
    if authors.error:
        results: tuple[DMARCResult, ...] = (DMARCResult(PERMERROR, None, authors.error),)
    elif len(authors.domains) > MAX_AUTHOR_DOMAINS:
        reason = f"{len(authors.domains)} author domains (at most {MAX_AUTHOR_DOMAINS} are evaluated)"
        results = (DMARCResult(PERMERROR, None, reason),)
    else:
        results = tuple(
            evaluate(domain, dns, spf_result=spf_result, spf_domain=spf_domain, dkim=dkim) for domain in authors.domains
        )
    worst = max(results, key=_severity)
    decision = decide(worst, settings, arc)
    return DMARCVerdict(worst, decision, authentication_result(worst, decision), results)
