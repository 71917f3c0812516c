"""``srsd check-dns``: is what :mod:`srsd.dns_records` asks for published?

Every record is looked up with srsd's resolver (``[dns] nameservers``), as the
daemon would, and judged the way receivers judge it:

* SPF: ``check_host`` (srsd's SPF engine, RFC 7208 4) of each ``spf.egress_ips``
  address must give ``pass`` for the SRS domain and every signing domain (as MAIL
  FROM ``postmaster@domain``) and for the HELO name (HELO identity); a name in
  ``spf.no_mail_domains`` must publish exactly ``v=spf1 -all``.
* DKIM: the key record of every configured key must match its private key
  (:func:`srsd.mailauth.key_lookup.published_key_problem`); a ``next`` key that does
  not is reported as not visible yet: srsd keeps signing with the key it replaces.
* DMARC: the policy record a receiver finds for the domain by RFC 9989 discovery
  (:func:`srsd.dmarc.policy_record`: ``_dmarc.<domain>``, else the DNS tree walk's
  Organizational Domain or PSD), the one srsd's own milter would apply; two records at
  ``_dmarc.<domain>`` are reported (receivers discard both).

Blocking (a CLI command). A DNS failure is a finding too: nothing could be confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from srsd.dmarc import DMARCTempError, ResolverDNS, parse_record, policy_record
from srsd.dns import DNSTemporaryError, Resolver
from srsd.dns_records import DKIM, DMARC, NO_MAIL, SPF, Expected, expected_records
from srsd.mailauth.key_lookup import DKIMTemporaryError, published_key_problem
from srsd.mailauth.signing_table import NEXT, RETIRED, SigningTable
from srsd.spf import check_host

__all__ = ["Finding", "check_dns"]


@dataclass(frozen=True)
class Finding:
    """One check: ``ok``, what was checked (``SPF fwd.example``) and what was found."""

    ok: bool
    subject: str
    text: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.subject}: {self.text}"


def _txt(resolver: Resolver, name: str, prefix: str) -> list[str]:
    """The TXT records at *name* that start with *prefix* (case-insensitive), strings joined.

    :raises DNSTemporaryError: as :meth:`Resolver.resolve`.
    """
    try:
        answer = resolver.resolve(name, "TXT")
    except ValueError:
        return []
    if answer is None:
        return []
    texts = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
    return [t for t in texts if t.lower().startswith(prefix.lower())]


def _check_spf(config: Any, resolver: Resolver, record: Expected) -> list[Finding]:
    subject = f"{record.kind} {record.name}"
    if not config.spf.egress_ips:
        return [Finding(False, subject, "spf.egress_ips is empty: srsd cannot tell which addresses must pass")]
    findings = []
    identities = ([("MAIL FROM", f"postmaster@{record.name}")] if record.mail_from else []) + (
        [("HELO", "")] if record.helo else []
    )
    for ip in config.spf.egress_ips:
        for identity, sender in identities:
            result = check_host(resolver, ip, sender, record.name, budget=config.spf.check_budget)
            text = f"{identity} from {ip}: {result.result}"
            if result.result != "pass":
                text += f" (must be pass: mail leaves from {ip}; publish {record.text!r}); {result.explanation}"
            findings.append(Finding(result.result == "pass", subject, text))
    return findings


def _check_no_mail(resolver: Resolver, record: Expected) -> Finding:
    subject = f"{record.kind} {record.name}"
    records = _txt(resolver, record.name, "v=spf1")
    if records == [] or len(records) > 1:
        found = "no SPF record" if not records else f"{len(records)} SPF records (permerror, RFC 7208 4.5)"
        return Finding(False, subject, f"{found}; publish {record.text!r}")
    if records[0].lower().split() != ["v=spf1", "-all"]:
        return Finding(False, subject, f"publishes {records[0]!r}; a name sending no mail says {record.text!r}")
    return Finding(True, subject, f"{records[0]!r}")


def _check_dkim(resolver: Resolver, table: SigningTable, record: Expected, timeout: float) -> Finding:
    key = record.key
    subject = f"{record.kind} {record.name} ({key.state})"
    problem = published_key_problem(resolver, record.name, key.key, timeout)
    if problem is None:
        return Finding(True, subject, f"matches {key.key.path}")
    if key.state == NEXT:
        kept = ", ".join(k.selector for k in table.replaced_by(key)) or "no key of this type"
        return Finding(False, subject, f"not visible yet ({problem}): srsd keeps signing with {kept} until it is")
    if key.state == RETIRED:
        problem += "; mail it signed recently no longer verifies (remove the key from the config once that is fine)"
    return Finding(False, subject, f"{problem}; publish what `srsd dns-records` prints")


def _check_dmarc(resolver: Resolver, record: Expected) -> Finding:
    subject = f"{record.kind} {record.name}"
    domain = record.name.removeprefix("_dmarc.")
    own = [r for r in map(parse_record, _txt(resolver, record.name, "v=DMARC1")) if r is not None]
    if len(own) > 1:  # RFC 9989 4.10 step 2: all discarded, the walk goes on
        return Finding(False, subject, f"{len(own)} DMARC records at {record.name}: receivers use none of them")
    found = policy_record(domain, ResolverDNS(resolver))
    if found is None:
        return Finding(False, subject, f"no DMARC record at {record.name} or a parent; publish e.g. {record.text!r}")
    policy, where = found
    text = repr(policy.text) + ("" if where == domain else f" (at _dmarc.{where}, the policy for its subdomains)")
    if not policy.usable:
        return Finding(False, subject, f"{text}: no valid p= (receivers read it as p=none with a rua=, else ignore it)")
    return Finding(True, subject, text)


def check_dns(config: Any, resolver: Resolver) -> list[Finding]:
    """Check every record :func:`srsd.dns_records.expected_records` lists, in its order."""
    table = SigningTable(config.dkim_keys, config.dkim.domain or config.srs.domain, config.dkim.sign_subdomains)
    findings: list[Finding] = []
    for record in expected_records(config):
        try:
            if record.kind == SPF:
                findings += _check_spf(config, resolver, record)
            elif record.kind == NO_MAIL:
                findings.append(_check_no_mail(resolver, record))
            elif record.kind == DKIM:
                findings.append(_check_dkim(resolver, table, record, config.dns.timeout))
            elif record.kind == DMARC:
                findings.append(_check_dmarc(resolver, record))
        except (DNSTemporaryError, DKIMTemporaryError, DMARCTempError) as exc:
            findings.append(Finding(False, f"{record.kind} {record.name}", f"could not check: {exc}"))
    return findings
