"""``srsd dns-records`` and ``srsd check-dns``: what a configuration needs published,
and each seeded mistake in a test zone found (and nothing else).

The zone is served by the loopback DNS server (tests/dnsserver.py); check-dns asks it
through srsd's resolver and judges SPF with srsd's SPF engine. The clean zone is
exactly what ``srsd dns-records`` prints, so the two commands are checked against
each other.
"""

from __future__ import annotations

import pytest

from srsd.cli import main
from srsd.config import load_config
from srsd.dns import Resolver
from srsd.dns_check import check_dns
from srsd.dns_records import zone_file
from srsd.mailauth.keys import generate_key
from tests.dnsserver import zone_records

SRS_DOMAIN = "fwd.example"
HELO = "mx.fwd.example"
EGRESS = ["192.0.2.25", "2001:db8::25"]
SPF_TEXT = "v=spf1 ip4:192.0.2.25 ip6:2001:db8::25 -all"
KEYS = [  # (domain, selector, algorithm, state)
    (SRS_DOMAIN, "f1", "rsa-sha256", "active"),
    ("example.org", "r0", "rsa-sha256", "retired"),
    ("example.org", "r1", "rsa-sha256", "active"),
    ("example.org", "e1", "ed25519-sha256", "active"),
    ("example.org", "r2", "rsa-sha256", "next"),
    ("news.example.org", "n1", "rsa-sha256", "active"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("check-dns")
    (root / "secrets").write_text("x\n")
    keys = []
    for domain, selector, algorithm, state in KEYS:
        (root / domain).mkdir(exist_ok=True)
        generate_key(str(root / domain / f"{selector}.private"), algorithm, 1024)
        keys.append(f'{{ domain = "{domain}", selector = "{selector}", state = "{state}" }}')
    path = root / "srsd.toml"
    path.write_text(
        f'[srs]\ndomain = "{SRS_DOMAIN}"\nsecrets_file = "{root / "secrets"}"\n'
        f'[spf]\negress_ips = {EGRESS!r}\nhelo_name = "{HELO}"\n'
        'no_mail_domains = ["www.example.org", "parked.example"]\n'
        f'[dkim]\nkey_directory = "{root}"\nkeys = [{", ".join(keys)}]\n'
    )
    return path


@pytest.fixture(scope="module")
def printed(setup):
    """{name: [strings]} of what dns-records prints."""
    return zone_records("\n".join(zone_file(load_config(str(setup)))))


def test_dns_records_lists_every_domain(printed):
    assert list(printed) == [
        SRS_DOMAIN, "example.org", "news.example.org", HELO,  # SPF: SRS domain, signing domains, HELO name
        "www.example.org", "parked.example",  # no mail
        "f1._domainkey.fwd.example", "r0._domainkey.example.org", "r1._domainkey.example.org",
        "e1._domainkey.example.org", "r2._domainkey.example.org", "n1._domainkey.news.example.org",
        "_dmarc.fwd.example", "_dmarc.example.org", "_dmarc.news.example.org",
    ]  # fmt: skip
    for name in (SRS_DOMAIN, "example.org", HELO):
        assert printed[name] == [SPF_TEXT]
    assert printed["www.example.org"] == ["v=spf1 -all"]
    assert printed["_dmarc.example.org"] == ["v=DMARC1; p=none"]
    assert "".join(printed["e1._domainkey.example.org"]).startswith("v=DKIM1; k=ed25519; p=")


def test_dns_records_comments_say_what_each_record_is_for(setup, capsys):
    assert main(["dns-records", "-c", str(setup)]) == 0
    out = capsys.readouterr().out
    assert "; SPF fwd.example: the SRS domain: forwarded mail leaves with MAIL FROM ...@fwd.example" in out
    assert "; SPF mx.fwd.example: the HELO name mail leaves with (RFC 7208 2.3)" in out
    assert "r2._domainkey.example.org: d=example.org s=r2 (rsa-sha256, 1024 bits" in out
    assert "next: srsd starts signing with it once this record is visible" in out
    assert "retired: signs nothing" in out
    assert "p=quarantine, then p=reject" in out


def publish(dns_server, records):
    dns_server.set_zone({name: [{"TXT": strings}] for name, strings in records.items()})


def failures(setup, dns_server):
    findings = check_dns(load_config(str(setup)), Resolver([dns_server.address], timeout=5, cache_size=0))
    assert findings, "nothing checked"
    return [str(f) for f in findings if not f.ok], findings


def test_the_published_zone_passes(setup, printed, dns_server, capsys):
    publish(dns_server, printed)
    failed, findings = failures(setup, dns_server)
    assert failed == []
    # every record checked; SPF once per egress IP and identity
    assert len(findings) == 2 * 4 + 2 + 6 + 3, [str(f) for f in findings]
    with_config = ["check-dns", "-c", str(setup)]
    text = setup.read_text()
    setup.write_text(text + f'[dns]\nnameservers = ["{dns_server.address}"]\ntimeout = 5\n')
    try:
        assert main(with_config) == 0
        out = capsys.readouterr().out
        assert "ok    SPF fwd.example: MAIL FROM from 192.0.2.25: pass" in out
        assert "ok    DKIM r2._domainkey.example.org (next): matches" in out
        assert out.rstrip().endswith("check-dns: 0 problem(s) in 19 check(s)")
        dns_server.set_zone({})
        assert main(with_config) == 1
        assert "check-dns: 19 problem(s) in 19 check(s)" in capsys.readouterr().out
    finally:
        setup.write_text(text)


# (what is wrong, how the zone is changed, the findings that must fail: (subject, words in the text))
MISTAKES = [
    (
        "SRS domain's SPF misses an egress IP",
        {SRS_DOMAIN: ["v=spf1 ip4:192.0.2.25 -all"]},
        [("SPF fwd.example", "MAIL FROM from 2001:db8::25: fail (must be pass")],
    ),
    (
        "SRS domain's SPF is only softfail",
        {SRS_DOMAIN: ["v=spf1 ~all"]},
        [("SPF fwd.example", "from 192.0.2.25: softfail"), ("SPF fwd.example", "from 2001:db8::25: softfail")],
    ),
    (
        "a signing domain has no SPF",
        {"example.org": None},
        [("SPF example.org", "192.0.2.25: none"), ("SPF example.org", "2001:db8::25: none")],
    ),
    (
        "the HELO name has no SPF of its own",
        {HELO: None},
        [("SPF mx.fwd.example", "HELO from 192.0.2.25: none"), ("SPF mx.fwd.example", "HELO from 2001:db8::25: none")],
    ),
    (
        "a no-mail name authorizes hosts",
        {"www.example.org": ["v=spf1 a -all"]},
        [("SPF (no mail) www.example.org", "publishes 'v=spf1 a -all'")],
    ),
    ("a no-mail name without SPF", {"parked.example": None}, [("SPF (no mail) parked.example", "no SPF record")]),
    (
        "an active key's record is another key",
        {"r1._domainkey.example.org": "r0"},
        [("DKIM r1._domainkey.example.org (active)", "p= is another key than the private key")],
    ),
    (
        "an active key's record is missing",
        {"n1._domainkey.news.example.org": None},
        [("DKIM n1._domainkey.news.example.org (active)", "no TXT record")],
    ),
    (
        "an active key is revoked",
        {"f1._domainkey.fwd.example": ["v=DKIM1; k=rsa; p="]},
        [("DKIM f1._domainkey.fwd.example (active)", "the key is revoked")],
    ),
    (
        "the ed25519 record says rsa",
        {"e1._domainkey.example.org": "e1-as-rsa"},
        [("DKIM e1._domainkey.example.org (active)", "k=rsa, but the private key is ed25519")],
    ),
    (
        "the next key is not visible yet",
        {"r2._domainkey.example.org": None},
        [("DKIM r2._domainkey.example.org (next)", "not visible yet (no TXT record): srsd keeps signing with r1")],
    ),
    (
        "the retired key was unpublished too early",
        {"r0._domainkey.example.org": None},
        [("DKIM r0._domainkey.example.org (retired)", "no TXT record; mail it signed recently no longer verifies")],
    ),
    (
        "two TXT records at a key name",
        {"r1._domainkey.example.org": "twice"},
        [("DKIM r1._domainkey.example.org (active)", "2 TXT records")],
    ),
    ("a missing DMARC record", {"_dmarc.fwd.example": None}, [("DMARC _dmarc.fwd.example", "no DMARC record")]),
    (
        "no DMARC record for a domain nor its parent",
        {"_dmarc.example.org": None, "_dmarc.news.example.org": None},
        [("DMARC _dmarc.example.org", "no DMARC record"), ("DMARC _dmarc.news.example.org", "no DMARC record")],
    ),
    (
        "two DMARC records",
        {"_dmarc.example.org": "twice"},
        [("DMARC _dmarc.example.org", "2 DMARC records at _dmarc.example.org")],
    ),
    (
        "a DMARC record without a valid p=",
        {"_dmarc.example.org": ["v=DMARC1; p=block"]},
        [("DMARC _dmarc.example.org", "no valid p=")],
    ),
    (
        "a DMARC lookup that times out",
        {"_dmarc.fwd.example": "TIMEOUT"},
        [("DMARC _dmarc.fwd.example", "could not check: DNS TXT _dmarc.fwd.example: timed out")],
    ),
    (
        "a key record that cannot be looked up",
        {"r1._domainkey.example.org": "TIMEOUT"},
        [("DKIM r1._domainkey.example.org", "could not check: DNS TXT r1._domainkey.example.org: timed out")],
    ),
]


def seeded(printed, setup, change):
    """*printed* with *change* applied: None deletes a name; "twice" adds a second record;
    a selector publishes that key's record instead; "e1-as-rsa" flips k=."""
    zone = {name: [{"TXT": strings}] for name, strings in printed.items()}
    for name, value in change.items():
        if value is None:
            del zone[name]
        elif value == "TIMEOUT":
            zone[name] = ["TIMEOUT"]
        elif value == "twice":  # a second, different record (DNS drops an identical one)
            other = "v=DMARC1; p=reject" if name.startswith("_dmarc") else printed["r0._domainkey.example.org"]
            zone[name] = [*zone[name], {"TXT": other}]
        elif value == "e1-as-rsa":
            zone[name] = [{"TXT": "".join(printed[name]).replace("k=ed25519", "k=rsa")}]
        elif isinstance(value, str):
            zone[name] = [{"TXT": printed[name.replace(name.split(".")[0], value, 1)]}]
        else:
            zone[name] = [{"TXT": value}]
    return zone


@pytest.mark.parametrize(("mistake", "change", "expected"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_seeded_mistake_is_found(setup, printed, dns_server, mistake, change, expected):
    dns_server.set_zone(seeded(printed, setup, change))
    failed, _ = failures(setup, dns_server)
    assert len(failed) == len(expected), failed
    for (subject, words), line in zip(expected, failed, strict=True):
        assert line.startswith(f"FAIL  {subject}") and words in line, (line, subject, words)


def test_spf_is_judged_by_evaluation_not_by_text(setup, printed, dns_server):
    """An include: that authorizes the egress IPs passes (receivers evaluate, so does check-dns)."""
    zone = seeded(printed, setup, {SRS_DOMAIN: ["v=spf1 include:_spf.fwd.example -all"]})
    zone["_spf.fwd.example"] = [{"TXT": SPF_TEXT}]
    dns_server.set_zone(zone)
    assert failures(setup, dns_server)[0] == []


def test_a_parent_dmarc_record_covers_a_subdomain(setup, printed, dns_server):
    dns_server.set_zone(seeded(printed, setup, {"_dmarc.news.example.org": None}))
    failed, findings = failures(setup, dns_server)
    assert failed == []
    covered = next(str(f) for f in findings if f.subject == "DMARC _dmarc.news.example.org")
    assert "(at _dmarc.example.org, the policy for its subdomains)" in covered


def test_the_single_key_form_and_an_empty_config(tmp_path, dns_server, capsys):
    """An old-style config ([dkim] selector/key_file) gets its records; one without egress
    IPs or keys gets a template and a note, and check-dns says what it cannot check."""
    (tmp_path / "s").write_text("x\n")
    key = generate_key(str(tmp_path / "sel.private"))
    config = tmp_path / "srsd.toml"
    head = (
        f'[srs]\ndomain = "{SRS_DOMAIN}"\nsecrets_file = "{tmp_path / "s"}"\n'
        f'[dns]\nnameservers = ["{dns_server.address}"]\ntimeout = 5\n'
    )
    config.write_text(head + f'[spf]\negress_ips = {EGRESS!r}\n[dkim]\nselector = "sel"\nkey_file = "{key.path}"\n')
    assert main(["dns-records", "-c", str(config)]) == 0
    records = zone_records(capsys.readouterr().out)
    assert records == {
        SRS_DOMAIN: [SPF_TEXT],
        "sel._domainkey.fwd.example": records["sel._domainkey.fwd.example"],
        "_dmarc.fwd.example": ["v=DMARC1; p=none"],
    }
    assert "".join(records["sel._domainkey.fwd.example"]) == key.txt_record()

    config.write_text(head)
    assert main(["dns-records", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "spf.egress_ips is empty" in out and "no key configured" in out
    dns_server.set_zone({f"_dmarc.{SRS_DOMAIN}": [{"TXT": "v=DMARC1; p=none"}]})
    assert main(["check-dns", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  SPF fwd.example: spf.egress_ips is empty" in out
    assert "ok    DMARC _dmarc.fwd.example: 'v=DMARC1; p=none'" in out
