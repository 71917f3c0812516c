"""What a configuration needs published in DNS: ``srsd dns-records`` prints it and
``srsd check-dns`` (:mod:`srsd.dns_check`) checks it against what is published.

For every configured domain (docs/dkim.md "DNS records"):

* **SPF** (RFC 7208): the SRS domain (forwarded mail leaves with ``MAIL FROM`` there)
  and every signing domain (local mail leaves with its own envelope sender) authorize
  ``spf.egress_ips``; the HELO name (``spf.helo_name``) has its own record for the HELO
  identity (RFC 7208 2.3); every name in ``spf.no_mail_domains`` gets ``v=spf1 -all``.
* **DKIM** (RFC 6376 3.6.1): the key record of every configured key, active, next
  and retired alike (a retired selector stays published until it is removed).
* **DMARC**: a ``_dmarc`` record for the SRS domain and every signing domain, a
  suggestion to start from (``p=none``).

Pure: builds text from a loaded :class:`~srsd.config.Config`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from srsd.mailauth.keys import zone_file_txt
from srsd.mailauth.signing_table import NEXT, RETIRED

__all__ = ["SPF", "NO_MAIL", "DKIM", "DMARC", "Expected", "helo_name", "expected_records", "zone_file"]

SPF = "SPF"
NO_MAIL = "SPF (no mail)"
DKIM = "DKIM"
DMARC = "DMARC"

NO_MAIL_SPF = "v=spf1 -all"
DMARC_SUGGESTION = "v=DMARC1; p=none"


@dataclass(frozen=True)
class Expected:
    """One TXT record to publish.

    ``text`` is its data ("" when srsd cannot know it: no ``spf.egress_ips``);
    ``comment`` what it is for. SPF records say which identities must pass for the
    egress IPs: ``mail_from`` (``postmaster@name`` as MAIL FROM) and ``helo`` (name
    as HELO). DKIM records carry their ``key`` (a TableKey).
    """

    kind: str
    name: str
    text: str
    comment: str
    mail_from: bool = False
    helo: bool = False
    key: Any = None


def helo_name(config: Any) -> str:
    """The HELO name mail leaves with: ``spf.helo_name``, else ``spf.receiver``, else ``srs.domain``."""
    return (config.spf.helo_name or config.spf.receiver or config.srs.domain).rstrip(".").lower()


def _spf_text(egress_ips: tuple[str, ...]) -> str:
    if not egress_ips:
        return ""
    terms = [f"ip{ipaddress.ip_address(ip).version}:{ip}" for ip in egress_ips]
    return f"v=spf1 {' '.join(terms)} -all"


def _signing_domains(config: Any) -> list[str]:
    """Domains with keys that sign or will sign, in config order."""
    return list(dict.fromkeys(k.domain for k in config.dkim_keys if k.state != RETIRED))


def expected_records(config: Any) -> list[Expected]:
    """Every record *config* needs published, in printing order: SPF, DKIM, DMARC."""
    srs_domain = config.srs.domain.lower()
    spf_text = _spf_text(config.spf.egress_ips)
    # name -> (mail_from, helo, roles); a name that is several of these gets one record
    spf: dict[str, tuple[bool, bool, list[str]]] = {}

    def need(name: str, mail_from: bool, helo: bool, role: str) -> None:
        old_mail_from, old_helo, roles = spf.get(name, (False, False, []))
        spf[name] = (old_mail_from or mail_from, old_helo or helo, [*roles, role])

    need(srs_domain, True, False, f"the SRS domain: forwarded mail leaves with MAIL FROM ...@{srs_domain}")
    for domain in _signing_domains(config):
        need(domain, True, False, f"local mail from {domain} leaves with its own envelope sender")
    need(helo_name(config), False, True, "the HELO name mail leaves with (RFC 7208 2.3)")
    out = [Expected(SPF, name, spf_text, "; ".join(roles), mail_from, helo) for name, (mail_from, helo, roles) in
           spf.items()]  # fmt: skip
    for name in config.spf.no_mail_domains:
        out.append(Expected(NO_MAIL, name.rstrip(".").lower(), NO_MAIL_SPF, "sends no mail: every SPF check fails"))
    for k in config.dkim_keys:
        size = f", {k.key.bits} bits" if k.key_type == "rsa" else ""
        comment = f"d={k.domain} s={k.selector} ({k.key.algorithm}{size}, {k.key.path}), {k.state}"
        if k.state == NEXT:
            comment += ": srsd starts signing with it once this record is visible"
        elif k.state == RETIRED:
            comment += ": signs nothing; remove it once the mail it signed is delivered (a week)"
        out.append(Expected(DKIM, k.record_name, k.key.txt_record(), comment, key=k))
    for domain in dict.fromkeys([srs_domain, *_signing_domains(config)]):
        out.append(
            Expected(
                DMARC,
                f"_dmarc.{domain}",
                DMARC_SUGGESTION,
                f"mail From: ...@{domain}: p=none to start (add rua=mailto:... for aggregate reports, RFC 9990), "
                "then p=quarantine, then p=reject once the reports show all its mail passes",
            )
        )
    return out


def zone_file(config: Any) -> list[str]:
    """Zone-file lines (``;`` comments) for every record of :func:`expected_records`."""
    lines = [f"; DNS records for srsd ({config.source})"]
    kind = ""
    for record in expected_records(config):
        if record.kind != kind:
            kind = record.kind
            lines.append("")
        lines.append(f"; {record.kind} {record.name}: {record.comment}")
        if record.text:
            lines.append(f"{record.name}. IN TXT {zone_file_txt(record.text)}")
        else:
            lines.append("; spf.egress_ips is empty: list every address mail leaves from, then publish e.g.")
            lines.append(f'; {record.name}. IN TXT "v=spf1 ip4:192.0.2.25 ip6:2001:db8::25 -all"')
    if not config.dkim_keys:
        lines += ["", "; DKIM/ARC: no key configured ([dkim] selector or [[dkim.keys]]): nothing signed"]
    return lines
