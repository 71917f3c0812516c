"""The signing table: [dkim] key configuration, which keys sign which author domain,
rotation state, the author domain of a message, and key records matching keys.

Real keys on disk (generated here), real config parsing; no network.
"""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from srsd.config import ConfigError, parse_config
from srsd.mailauth.author import author_domain
from srsd.mailauth.keys import generate_key, record_problem
from srsd.mailauth.signing_table import ACTIVE, NEXT, RETIRED, SigningTable, TableKey

FORWARDER = "fwd.example"


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    """A key directory in the documented layout: <dir>/<domain>/<selector>.private."""
    root = tmp_path_factory.mktemp("dkim")
    for domain, selector, algorithm in [
        (FORWARDER, "f1", "rsa-sha256"),
        (FORWARDER, "fe1", "ed25519-sha256"),
        ("example.org", "r1", "rsa-sha256"),
        ("example.org", "r2", "rsa-sha256"),
        ("example.org", "e1", "ed25519-sha256"),
        ("example.org", "e2", "ed25519-sha256"),
        ("second.example", "s1", "rsa-sha256"),
        ("edonly.example", "e1", "ed25519-sha256"),
    ]:
        (root / domain).mkdir(exist_ok=True)
        generate_key(str(root / domain / f"{selector}.private"), algorithm, 1024 if algorithm == "rsa-sha256" else 0)
    return root


def config_with(tmp_path, key_dir, **dkim):
    (tmp_path / "secrets").write_text("x\n")
    return parse_config(
        {
            "srs": {"domain": FORWARDER, "secrets_file": str(tmp_path / "secrets")},
            "dkim": {"key_directory": str(key_dir)} | dkim,
        }
    )


def entries(*specs):
    """[[dkim.keys]] tables from "domain selector [state]" strings."""
    out = []
    for spec in specs:
        domain, selector, *state = spec.split()
        out.append({"domain": domain, "selector": selector} | ({"state": state[0]} if state else {}))
    return out


def table_of(config):
    return SigningTable(config.dkim_keys, config.dkim.domain or config.srs.domain, config.dkim.sign_subdomains)


def selectors(keys):
    return [(k.domain, k.selector) for k in keys]


# -- configuration -------------------------------------------------------------------------------------------


def test_the_single_key_form_is_one_active_entry(tmp_path, key_dir):
    path = str(key_dir / FORWARDER / "f1.private")
    config = config_with(tmp_path, key_dir, selector="f1", key_file=path)
    (entry,) = config.dkim_keys
    assert (entry.domain, entry.selector, entry.state, entry.key.path, entry.where) == (
        FORWARDER, "f1", ACTIVE, path, "dkim.selector",
    )  # fmt: skip
    assert selectors(table_of(config).forwarder_keys()) == [(FORWARDER, "f1")]


def test_keys_come_from_the_directory_layout_in_config_order(tmp_path, key_dir):
    config = config_with(tmp_path, key_dir, keys=entries("example.org r1", "example.org e1", "Second.Example. s1"))
    assert [(k.domain, k.selector, k.key.algorithm, k.where) for k in config.dkim_keys] == [
        ("example.org", "r1", "rsa-sha256", "dkim.keys[1]"),
        ("example.org", "e1", "ed25519-sha256", "dkim.keys[2]"),  # the type is the file's
        ("second.example", "s1", "rsa-sha256", "dkim.keys[3]"),
    ]
    assert config.dkim_keys[2].key.path == os.path.join(str(key_dir), "second.example", "s1.private")


def test_an_explicit_key_file_wins(tmp_path, key_dir):
    path = str(key_dir / "second.example" / "s1.private")
    config = config_with(tmp_path, key_dir, keys=[{"domain": "other.example", "selector": "x", "key_file": path}])
    assert config.dkim_keys[0].key.path == path


@pytest.mark.parametrize(
    ("dkim", "message"),
    [
        ({"keys": entries("example.org nope")}, r"^dkim.keys\[1\].key_file: .*nope.private: cannot read"),
        ({"keys": entries("example.org r1", "missing.example r1")}, r"^dkim.keys\[2\].key_file: .*missing.example"),
        ({"keys": [{"selector": "r1"}]}, r"^dkim.keys\[1\].domain: .*required"),
        ({"keys": [{"domain": "example.org"}]}, r"^dkim.keys\[1\].selector: .*required"),
        ({"keys": [{"domain": "example.org", "selector": "r1", "state": "on"}]}, r"^dkim.keys\[1\].state: must be"),
        ({"keys": [{"domain": "example.org", "selector": "r1", "stat": "next"}]}, r"^dkim.keys\[1\].stat: unknown key"),
        ({"keys": [{"domain": "example.org", "selector": 1}]}, r"^dkim.keys\[1\].selector: expected a string"),
        ({"keys": {"domain": "example.org"}}, r"^dkim.keys: expected a list of tables"),
        ({"keys": entries("example.org r1", "example.org R1")}, r"^dkim.keys\[2\]: R1._domainkey.example.org is "
                                                               r"configured twice \(also dkim.keys\[1\]\)"),
        ({"sign_subdomains": ["example.org"]}, r"^dkim.sign_subdomains: example.org has no active or next key"),
        ({"keys": entries("example.org r1 retired"), "sign_subdomains": ["example.org"]}, "^dkim.sign_subdomains: "),
        ({"keys": entries("example.org r1"), "sign_subdomains": [".example.org"]}, "^dkim.sign_subdomains: .*parent"),
        ({"keys": entries(f"{FORWARDER} fe1")}, r"^dkim.arc: ARC sets are rsa-sha256 only .*fwd.example has no RSA"),
        ({"rotation_check_interval": 0}, r"^dkim.rotation_check_interval: "),
    ],
)  # fmt: skip
def test_configuration_errors_name_the_entry(tmp_path, key_dir, dkim, message):
    with pytest.raises(ConfigError, match=message):
        config_with(tmp_path, key_dir, **dkim)


def test_an_unreadable_key_names_the_entry_and_the_file(tmp_path, key_dir):
    path = tmp_path / "unreadable.private"
    path.write_bytes((key_dir / "example.org" / "r1.private").read_bytes())
    path.chmod(0)
    spec = [{"domain": "example.org", "selector": "r1", "key_file": str(path)}]
    if os.geteuid() == 0:  # root reads anything: a directory in its place is unreadable for root too
        path.chmod(0o600)
        path.unlink()
        path.mkdir()
    with pytest.raises(ConfigError, match=rf"^dkim.keys\[1\].key_file: {path}: cannot read"):
        config_with(tmp_path, key_dir, keys=spec)


def test_arc_with_an_ed25519_forwarder_key_beside_an_rsa_one_is_fine(tmp_path, key_dir):
    config = config_with(tmp_path, key_dir, keys=entries(f"{FORWARDER} fe1", f"{FORWARDER} f1"))
    assert selectors([table_of(config).arc_key()]) == [(FORWARDER, "f1")]
    config_with(tmp_path, key_dir, keys=entries(f"{FORWARDER} fe1"), arc=False)


def test_each_key_is_read_once_per_load(tmp_path, key_dir, monkeypatch):
    import srsd.mailauth.keys as keys_module

    reads = []
    real = keys_module.Path.read_bytes
    monkeypatch.setattr(keys_module.Path, "read_bytes", lambda self: reads.append(self.suffix) or real(self))
    config = config_with(tmp_path, key_dir, keys=entries("example.org r1", "example.org e1"))
    assert reads.count(".private") == 2
    table = table_of(config)
    for _ in range(3):
        table.for_author("example.org")
    assert reads.count(".private") == 2


# -- which keys sign which mail ----------------------------------------------------------------------------------


@pytest.fixture
def table(tmp_path, key_dir):
    config = config_with(
        tmp_path,
        key_dir,
        keys=entries(f"{FORWARDER} f1", "example.org r1", "example.org e1", "second.example s1", "example.org r2 next"),
        sign_subdomains=["example.org"],
    )
    return table_of(config)


@pytest.mark.parametrize(
    ("author", "expected", "why"),
    [
        ("example.org", [("example.org", "r1"), ("example.org", "e1")], ""),  # dual: RSA and ed25519
        ("EXAMPLE.ORG", [("example.org", "r1"), ("example.org", "e1")], ""),
        ("second.example", [("second.example", "s1")], ""),
        ("mail.example.org", [("example.org", "r1"), ("example.org", "e1")], "parent of mail.example.org"),
        ("a.b.example.org", [("example.org", "r1"), ("example.org", "e1")], "parent of a.b.example.org"),
        ("sub.second.example", [(FORWARDER, "f1")], "no key for sub.second.example"),  # not in sign_subdomains
        ("third.example", [(FORWARDER, "f1")], "no key for third.example"),
        ("notexample.org", [(FORWARDER, "f1")], "no key for notexample.org"),
    ],
)
def test_keys_for_an_author_domain(table, author, expected, why):
    keys, reason = table.for_author(author)
    assert (selectors(keys), reason) == (expected, why)


def test_next_keys_sign_nothing_until_seen(table):
    assert selectors(table.pending) == [("example.org", "r2")]
    assert ("example.org", "r2") not in selectors(table.signing)


def test_a_visible_next_key_takes_over_from_the_active_keys_of_its_type(table):
    (r2,) = table.pending
    assert selectors(table.replaced_by(r2)) == [("example.org", "r1")]
    rotated = table.with_visible([r2.id])
    assert rotated.pending == ()
    assert selectors(rotated.for_author("example.org")[0]) == [("example.org", "e1"), ("example.org", "r2")]
    assert selectors(rotated.for_author("www.example.org")[0]) == [("example.org", "e1"), ("example.org", "r2")]
    assert selectors(rotated.forwarder_keys()) == [(FORWARDER, "f1")]  # other domains untouched
    # ids from another configuration are ignored; a visible id survives a rebuild
    assert table.with_visible([("example.org", "r2", "AAAA")]).pending == table.pending
    rebuilt = SigningTable(table.keys, FORWARDER, ["example.org"], rotated.visible)
    assert selectors(rebuilt.signing) == selectors(rotated.signing)


def test_a_next_key_of_a_new_type_is_added(tmp_path, key_dir):
    table = table_of(config_with(tmp_path, key_dir, keys=entries("example.org r1", "example.org e1 next")))
    (e1,) = table.pending
    assert table.replaced_by(e1) == ()
    both = [("example.org", "r1"), ("example.org", "e1")]
    assert selectors(table.with_visible([e1.id]).keys_of("example.org")) == both


def test_retired_keys_never_sign(tmp_path, key_dir):
    table = table_of(config_with(tmp_path, key_dir, keys=entries("example.org r1 retired", "example.org r2")))
    assert selectors(table.keys_of("example.org")) == [("example.org", "r2")]
    assert [k.state for k in table.keys] == [RETIRED, ACTIVE]


def test_no_forwarder_key_means_no_fallback_and_no_seal(tmp_path, key_dir):
    table = table_of(config_with(tmp_path, key_dir, keys=entries("example.org r1")))
    assert table.for_author("other.example") == ((), "no key for other.example")
    assert table.arc_key() is None


def test_table_key_names(key_dir):
    key = TableKey("example.org", "r1", generate_key(str(key_dir / "extra.private")), NEXT, "dkim.keys[4]")
    assert key.record_name == "r1._domainkey.example.org"
    assert key.id == ("example.org", "r1", key.key.public_key_base64())


# -- the author domain ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "domain", "problem"),
    [
        ([("From", " Alice <alice@Example.ORG>")], "example.org", ""),
        ([("from", " alice@example.org")], "example.org", ""),
        ([("From", " Alice\r\n <alice@example.org>")], "example.org", ""),  # folded
        ([("From", " a@example.org, b@EXAMPLE.org"), ("Sender", " a@example.org")], "example.org", ""),
        ([("From", ' "bob@evil.example" <alice@example.org>')], "example.org", ""),
        ([("From", " =?utf-8?q?x=40evil.example?= <alice@example.org>")], "example.org", ""),
        ([("From", " Bücher <info@bücher.example>")], "xn--bcher-kva.example", ""),
        ([("From", " Group: a@example.org, b@example.org;")], "example.org", ""),
        ([], "", "no From field"),
        ([("From", " a@example.org"), ("From", " b@example.org")], "", "2 From fields"),
        ([("From", " a@x.example, b@y.example")], "", "From addresses in several domains"),
        ([("From", " undisclosed-recipients:;")], "", "From field without an address"),
        ([("From", " ")], "", "From field without an address"),
        ([("From", " garbage")], "", "unparseable From field"),
        ([("From", " a@b.example (c) <c@d.example>")], "", "unparseable From field"),
        ([("From", " <alice@example.org")], "", "unparseable From field"),
        ([("From", " a@b@c.example")], "", "unparseable From field"),
        ([("From", " alice@[192.0.2.1]")], "", "From address without a domain name"),
        ([("From", " alice@localhost")], "", "From address without a domain name"),
        ([("From", ' "' + "x" * 2000 + '" <alice@example.org>')], "", "From field longer than 2000 characters"),
    ],
)
def test_author_domain(fields, domain, problem):
    found = author_domain([("To", " x@y.example"), *fields])
    assert (found.domain, found.problem) == (domain, problem)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_author_domain_never_raises_and_names_a_domain_or_a_problem(value):
    found = author_domain([("From", value)])
    assert bool(found.domain) != bool(found.problem)


# -- key records ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key(key_dir):
    from srsd.mailauth.keys import load_signing_key

    return load_signing_key(str(key_dir / "example.org" / "r1.private"))


@pytest.fixture(scope="module")
def ed_key(key_dir):
    from srsd.mailauth.keys import load_signing_key

    return load_signing_key(str(key_dir / "example.org" / "e1.private"), None)


def test_record_matches_its_key(rsa_key, ed_key):
    assert record_problem(rsa_key.txt_record(), rsa_key) is None
    assert record_problem(ed_key.txt_record().encode(), ed_key) is None
    p = rsa_key.public_key_base64()
    folded = f"v=DKIM1; h=sha1:sha256; s=email; t=y; k=rsa; p={p[:100]} {p[100:]}"
    assert record_problem(folded, rsa_key) is None
    assert record_problem(f"p={p}", rsa_key) is None  # v= and k= are optional (k defaults to rsa)


def test_record_with_the_pkcs1_spelling_of_the_same_key_matches(rsa_key):
    """RFC 6376 3.6.1 names SubjectPublicKeyInfo; verifiers (dkimpy, OpenSSL) accept a bare RSAPublicKey too."""
    pkcs1 = rsa_key.private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert record_problem(f"v=DKIM1; p={base64.b64encode(pkcs1).decode()}", rsa_key) is None


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (None, "no TXT record"),
        ("v=spf1 -all", "v=spf1 -all, not DKIM1"),
        ("v=DKIM1; ==", "not a DKIM key record"),
        ("v=DKIM2; p=AAAA", "v=DKIM2, not DKIM1"),
        ("v=DKIM1; k=ed25519; p={p}", "k=ed25519, but the private key is rsa"),
        ("v=DKIM1; h=sha1; p={p}", "h=sha1 does not allow sha256"),
        ("v=DKIM1; s=tlsrpt; p={p}", "s=tlsrpt does not cover email"),
        ("v=DKIM1; k=rsa; p=", "p= is empty: the key is revoked"),
        ("v=DKIM1; k=rsa; p=!!!", "p= is not a public key"),
        ("v=DKIM1; k=rsa; p={other}", "p= is another key than the private key"),
        ("v=DKIM1; p={p}; p={p}", "not a DKIM key record"),
    ],
)
def test_record_problems(rsa_key, record, problem):
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    other_b64 = base64.b64encode(
        other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    text = None if record is None else record.format(p=rsa_key.public_key_base64(), other=other_b64)
    assert (record_problem(text, rsa_key) or "").startswith(problem)
