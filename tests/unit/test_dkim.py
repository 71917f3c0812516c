"""srsd.mailauth: keys, the OpenSSL RSA adapter, signing, sealing and verification.

Real crypto throughout; keys are looked up in a real DNS server on loopback
(tests/dnsserver.py) through srsd's resolver, and checked by two verifiers:
dkimpy and Perl's Mail::DKIM (Debian libmail-dkim-perl).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import stat
import subprocess
import sys
import time

import authres
import dkim
import dkim.canonicalization
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from srsd.dns import Resolver
from srsd.mailauth.dkimpy_setup import install, installed, openssl_rsa_sign, openssl_rsa_verify, pure_python_rsa
from srsd.mailauth.key_lookup import DKIMTemporaryError, txt_lookup
from srsd.mailauth.keys import DKIMKeyError, dns_record_name, generate_key, load_signing_key, zone_file_txt
from srsd.mailauth.message import message_bytes, split_message
from srsd.mailauth.results import authentication_results, authserv_id_of, forged_results
from srsd.mailauth.sign import seal_message, sign_message
from srsd.mailauth.verify import ARCResult, SignatureResult, verify_arc, verify_signatures
from tests import maildkim
from tests.maildkim import needs_mail_dkim
from tests.srsd_daemon import REPO_ROOT, environment

HEADERS = [
    ("From", " Alice Example <alice@example.org>"),
    ("To", " forward-me@fwd.example"),
    ("Subject", " a folded\r\n subject line"),
    ("Date", " Tue, 24 Nov 2026 12:00:00 +0000"),
    ("Message-ID", " <1234@example.org>"),
    ("MIME-Version", " 1.0"),
    ("Content-Type", " text/plain; charset=utf-8"),
    ("X-Unsigned", " not in the list"),
]
BODY = b"Hello,\r\n\r\nthis is the body.  With  spaces \r\nand trailing lines\r\n\r\n\r\n"
SIGNED = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "List-Id")


def _write_key(path, private, fmt=serialization.PrivateFormat.PKCS8):
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    return str(path)


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory):
    return generate_key(str(tmp_path_factory.mktemp("keys") / "rsa.private"))


@pytest.fixture(scope="module")
def rsa_key2(tmp_path_factory):
    return generate_key(str(tmp_path_factory.mktemp("keys") / "rsa2.private"))


@pytest.fixture(scope="module")
def ed_key(tmp_path_factory):
    return generate_key(str(tmp_path_factory.mktemp("keys") / "ed.private"), "ed25519-sha256")


def publish(dns_server, selector, domain, key):
    dns_server.add(dns_record_name(selector, domain), {"TXT": key.txt_record()})


def lookup(dns_server, timeout=2.0):
    return txt_lookup(Resolver([dns_server.address], timeout=timeout))


# -- keys -------------------------------------------------------------------------------------------


def test_generated_rsa_key_is_private_and_2048_bits(tmp_path):
    key = generate_key(str(tmp_path / "sel.private"))
    assert (key.algorithm, key.key_type, key.bits, key.warnings) == ("rsa-sha256", "rsa", 2048, ())
    assert stat.S_IMODE(os.stat(tmp_path / "sel.private").st_mode) == 0o600
    assert (tmp_path / "sel.private").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(DKIMKeyError, match="exists; not overwriting"):
        generate_key(str(tmp_path / "sel.private"))


def test_generated_key_with_a_lax_umask_is_still_0600(tmp_path):
    old = os.umask(0)
    try:
        generate_key(str(tmp_path / "k"), "ed25519-sha256")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600


def test_txt_records_parse_in_dkimpy(rsa_key, ed_key):
    assert rsa_key.txt_record().startswith("v=DKIM1; k=rsa; p=MIIB")
    _pk, bits, ktag, _ = dkim.evaluate_pk(b"x", rsa_key.txt_record().encode())
    assert (bits, ktag) == (2048, b"rsa")
    assert ed_key.txt_record().startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_key.public_key_base64())) == 32
    _pk, _bits, ktag, _ = dkim.evaluate_pk(b"x", ed_key.txt_record().encode())
    assert ktag == b"ed25519"


def test_zone_file_txt_splits_at_255():
    text = "v=DKIM1; k=rsa; p=" + "A" * 400
    rendered = zone_file_txt(text)
    pieces = rendered.split('" "')
    assert len(pieces) == 2 and len(pieces[0]) == 256  # the opening quote + 255
    assert rendered.replace('" "', "").strip('"') == text
    assert dns_record_name("s1", "fwd.example.") == "s1._domainkey.fwd.example"


def test_pkcs1_pkcs8_and_dknewkey_formats_load(tmp_path):
    private = rsa.generate_private_key(65537, 2048)
    pkcs1 = load_signing_key(_write_key(tmp_path / "a", private, serialization.PrivateFormat.TraditionalOpenSSL))
    pkcs8 = load_signing_key(_write_key(tmp_path / "b", private))
    assert pkcs1.txt_record() == pkcs8.txt_record() and pkcs1.dkimpy_key == pkcs8.dkimpy_key
    seed = os.urandom(32)
    (tmp_path / "ed").write_text(base64.b64encode(seed).decode() + "\n")  # dkimpy's dknewkey writes this
    key = load_signing_key(str(tmp_path / "ed"), "ed25519-sha256")
    assert (
        key.public_key_base64()
        == base64.b64encode(
            ed25519.Ed25519PrivateKey.from_private_bytes(seed)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).decode()
    )


def test_key_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(DKIMKeyError, match=f"^{missing}: cannot read"):
        load_signing_key(missing)
    (tmp_path / "junk").write_text("hello\n")
    with pytest.raises(DKIMKeyError, match="junk: not a PEM private key"):
        load_signing_key(str(tmp_path / "junk"))
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DKIMKeyError, match="bad.pem: not a usable PEM private key"):
        load_signing_key(str(tmp_path / "bad.pem"))
    private = rsa.generate_private_key(65537, 2048)
    (tmp_path / "enc").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(DKIMKeyError, match="enc: the key is encrypted"):
        load_signing_key(str(tmp_path / "enc"))


def test_key_type_must_match_the_algorithm(tmp_path, rsa_key, ed_key):
    with pytest.raises(DKIMKeyError, match="an rsa key, but the algorithm is ed25519-sha256"):
        load_signing_key(rsa_key.path, "ed25519-sha256")
    with pytest.raises(DKIMKeyError, match="an ed25519 key, but the algorithm is rsa-sha256"):
        load_signing_key(ed_key.path, "rsa-sha256")
    path = _write_key(tmp_path / "ec", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(DKIMKeyError, match="DKIM keys are RSA or ed25519"):
        load_signing_key(path)


def test_rsa_key_sizes(tmp_path):
    # cryptography refuses to generate keys below 1024 bits; openssl still does
    small = str(tmp_path / "512")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512", "-out", small],
                   check=True, capture_output=True)  # fmt: skip
    with pytest.raises(DKIMKeyError, match="a 512-bit RSA key; verifiers reject keys below 1024"):
        load_signing_key(small)
    weak = load_signing_key(_write_key(tmp_path / "1024", rsa.generate_private_key(65537, 1024)))
    assert weak.bits == 1024 and "use 2048 bits" in weak.warnings[0]


# -- the OpenSSL adapter -------------------------------------------------------------------------------


def test_the_adapter_is_installed():
    install()
    assert installed() and dkim.RSASSA_PKCS1_v1_5_sign is openssl_rsa_sign
    assert dkim.RSASSA_PKCS1_v1_5_verify is openssl_rsa_verify
    with pure_python_rsa():  # dkimpy as shipped, every function
        assert not installed()
        assert dkim.RSASSA_PKCS1_v1_5_sign is dkim.crypto.RSASSA_PKCS1_v1_5_sign
        assert dkim.RSASSA_PKCS1_v1_5_verify is dkim.crypto.RSASSA_PKCS1_v1_5_verify
        assert dkim.parse_pem_private_key is dkim.crypto.parse_pem_private_key
        assert dkim.parse_public_key is dkim.crypto.parse_public_key
        assert dkim.canonicalization.CanonicalizationPolicy.canonicalize_body.__module__ == "dkim.canonicalization"
        assert dkim.rfc822_parse.__module__ == "dkim"
        assert dkim.canonicalization.Relaxed.canonicalize_headers.__module__ == "dkim.canonicalization"
        assert dkim.canonicalization.Relaxed.canonicalize_body.__module__ == "dkim.canonicalization"
    assert installed()
    assert dkim.canonicalization.Relaxed.canonicalize_body.__module__ == "srsd.mailauth.dkimpy_setup"


@pytest.mark.parametrize("bits", [1024, 2048])
@pytest.mark.parametrize("digest", ["sha256", "sha1"])
def test_adapter_verifications_agree_with_dkimpy(bits, digest):
    private = rsa.generate_private_key(65537, bits)
    other = rsa.generate_private_key(65537, bits)
    public = {"modulus": private.public_key().public_numbers().n, "publicExponent": 65537}
    rng = random.Random(bits)
    data = rng.randbytes(1000)
    good = private.sign(data, padding.PKCS1v15(), getattr(hashes, digest.upper())())
    cases = {
        "valid": (data, good),
        "other data": (data + b"x", good),
        "other key": (data, other.sign(data, padding.PKCS1v15(), getattr(hashes, digest.upper())())),
        "one bit flipped": (data, bytes([good[0] ^ 1]) + good[1:]),
        "truncated": (data, good[:-1]),
        "empty": (data, b""),
    }
    for name, (signed, signature) in cases.items():
        ours = openssl_rsa_verify(hashlib.new(digest, signed), signature, public)
        try:
            theirs = dkim.crypto.RSASSA_PKCS1_v1_5_verify(hashlib.new(digest, signed), signature, public)
        except Exception:  # dkimpy's own code may raise on malformed input: a failure either way
            theirs = False
        assert ours == theirs == (name == "valid"), name


def test_each_body_is_canonicalized_once_per_algorithm(monkeypatch):
    from dkim.canonicalization import CanonicalizationPolicy

    from srsd.mailauth import dkimpy_setup

    calls = []
    shipped = dkimpy_setup._CANONICALIZE_BODY
    monkeypatch.setattr(dkimpy_setup, "_CANONICALIZE_BODY", lambda p, b: (calls.append(b), shipped(p, b))[1])
    memo = dkimpy_setup._BodyMemo(budget=4000)
    monkeypatch.setattr(dkimpy_setup, "_BODY_MEMO", memo)
    relaxed, simple = (CanonicalizationPolicy.from_c_value(c) for c in (b"relaxed/relaxed", b"simple/simple"))
    body = b"line  with   spaces \r\n\r\n\r\n"
    for _ in range(3):
        assert dkimpy_setup._memo_canonicalize_body(relaxed, bytes(body)) == shipped(relaxed, body)
        assert dkimpy_setup._memo_canonicalize_body(simple, bytes(body)) == shipped(simple, body)
    assert len(calls) == 2  # once per algorithm
    big = b"x" * 1001  # over a quarter of the budget: never kept
    dkimpy_setup._memo_canonicalize_body(relaxed, big)
    dkimpy_setup._memo_canonicalize_body(relaxed, big)
    assert calls.count(big) == 2
    for i in range(20):  # the budget holds: the oldest go
        dkimpy_setup._memo_canonicalize_body(relaxed, b"%d" % i * 100)
    assert memo.size <= 4000


def test_importing_srsd_patches_no_library():
    """dkimpy's RSA step is installed by the part that uses it (MailAuth), never as a side
    effect of an import."""
    code = (
        "import dkim, dkim.crypto, srsd.service, srsd.cli, srsd.mailauth.sign, srsd.spf\n"
        "assert dkim.RSASSA_PKCS1_v1_5_sign is dkim.crypto.RSASSA_PKCS1_v1_5_sign, 'dkimpy patched'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=environment())


@pytest.mark.parametrize("bits", [1024, 2048, 3072])
@pytest.mark.parametrize("digest", ["sha256", "sha1"])
def test_adapter_signatures_are_byte_identical_to_dkimpy(tmp_path, bits, digest):
    private = rsa.generate_private_key(65537, bits)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    parsed = dkim.crypto.parse_pem_private_key(pem)
    rng = random.Random(bits)
    for _ in range(5):
        data = rng.randbytes(rng.randrange(0, 3000))
        ours = openssl_rsa_sign(hashlib.new(digest, data), parsed)
        theirs = dkim.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.new(digest, data), parsed)
        assert bytes(ours) == bytes(theirs)


T = 1795521600  # a fixed t= so two signers can be compared


def _dkimpy_field(line: bytes) -> tuple[str, str]:
    name, _, value = line.decode("ascii").partition(":")
    return name, value.removesuffix("\r\n")


def _odd_headers(rng: random.Random) -> list[tuple[str, str]]:
    """HEADERS with random repeats, folds, tabs and runs of spaces (what relaxed canonicalization is for)."""
    pieces = ["a", "b c", "\t", "  ", "\r\n ", "\r\n\t", "x\ty", "=?utf-8?q?J=C3=B6rg?=", "é"]
    out = list(HEADERS)
    for _ in range(rng.randrange(1, 6)):
        name = rng.choice(["To", "Subject", "Date", "X-Other", "Content-Type", "List-Id"])
        value = " " + "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 8))) + "z"
        out.insert(rng.randrange(0, len(out) + 1), (name, value))
    return out


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_whole_dkim_signature_is_byte_identical_to_dkimpys(rsa_key, ed_key, monkeypatch, algorithm):
    from srsd.mailauth.sign import _signed_fields

    monkeypatch.setattr(dkim.time, "time", lambda: float(T))
    key = rsa_key if algorithm == "rsa-sha256" else ed_key
    rng = random.Random(algorithm)
    for headers in [HEADERS] + [_odd_headers(rng) for _ in range(20)]:
        ours = sign_message(headers, BODY, key, "fwd.example", "sel", SIGNED, timestamp=T)
        signer = dkim.DKIM(message_bytes(headers, BODY), signature_algorithm=algorithm.encode())
        theirs = signer.sign(b"sel", b"fwd.example", key.dkimpy_key, canonicalize=(b"relaxed", b"relaxed"),
                             include_headers=_signed_fields(headers, SIGNED))  # fmt: skip
        assert ours == _dkimpy_field(theirs), headers
        assert f"t={T};" in ours[1]


def test_whole_arc_sets_are_dkimpys(dns_server, rsa_key, monkeypatch):
    """The ARC-Seal and ARC-Message-Signature are byte for byte those of dkimpy's own sealer,
    for a first hop (cv=none), a second (cv=pass: the seal covers both sets) and after a
    failed chain (cv=fail: it covers the new set only); the ARC-Authentication-Results
    is a verbatim copy of our field where dkimpy rewrites it (same canonical form)."""
    from srsd.mailauth.canonical import relaxed_header
    from srsd.mailauth.sign import _signed_fields

    publish(dns_server, "sel", "fwd.example", rsa_key)
    headers = list(HEADERS)
    for hop, cv in enumerate(["none", "pass", "fail", "fail"], 1):
        authserv_id = f"mx{hop}.fwd.example"  # each hop's own (dkimpy merges the fields of one id)
        results = authentication_results(authserv_id, spf=("pass", "smtp.mailfrom", "example.org"),
                                            dkim_results=[], arc=ARCResult(cv))  # fmt: skip
        leaving = [results, *headers]
        ours = seal_message(leaving, BODY, rsa_key, "fwd.example", "sel", authserv_id, SIGNED, T, cv=cv)
        sealer = dkim.ARC(message_bytes(leaving, BODY), signature_algorithm=b"rsa-sha256")
        theirs = [_dkimpy_field(line) for line in sealer.sign(b"sel", b"fwd.example", rsa_key.dkimpy_key,
                  authserv_id.encode(), include_headers=_signed_fields(leaving, SIGNED), timestamp=T)]  # fmt: skip
        assert [name for name, _ in ours] == ["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"]
        assert ours[:2] == theirs[:2], hop
        assert ours[2] == ("ARC-Authentication-Results", f" i={hop};{results[1]}")
        assert relaxed_header(*ours[2]) == relaxed_header(*theirs[2])
        headers = [*ours, *leaving]
        outcome = verify_arc(*split_message(message_bytes(headers, BODY)), lookup(dns_server))
        assert outcome.cv == ("pass" if cv != "fail" else "fail"), hop


def test_seal_refuses_what_it_cannot_seal(rsa_key):
    results = authentication_results("fwd.example", spf=None, dkim_results=[], arc=ARCResult("pass"))
    with pytest.raises(ValueError, match="no earlier ARC set"):
        seal_message([results, *HEADERS], BODY, rsa_key, "fwd.example", "s", "fwd.example", SIGNED, cv="pass")
    past = [("ARC-Seal", " i=50; cv=pass; a=rsa-sha256; d=x; s=y; b=AAAA"), results, *HEADERS]
    with pytest.raises(ValueError, match="instance 51 is past 50"):
        seal_message(past, BODY, rsa_key, "fwd.example", "s", "fwd.example", SIGNED, cv="fail")
    half = [("ARC-Seal", " i=1; cv=none; a=rsa-sha256; d=x; s=y; b=AAAA"), results, *HEADERS]
    with pytest.raises(ValueError, match="i=1 has 0 arc-authentication-results"):
        seal_message(half, BODY, rsa_key, "fwd.example", "s", "fwd.example", SIGNED, cv="pass")
    assert seal_message(half, BODY, rsa_key, "fwd.example", "s", "fwd.example", SIGNED, cv="none") == []
    with pytest.raises(ValueError, match="Received is never signed"):
        sign_message(HEADERS, BODY, rsa_key, "fwd.example", "s", ["From", "Received"])


def test_relaxed_canonicalization_is_dkimpys():
    """srsd's faster header and body canonicalization give dkimpy's bytes, for random
    text made of the characters that matter (WSP, CR, LF) and a little else."""
    from srsd.mailauth import dkimpy_setup
    from srsd.mailauth.canonical import relaxed_header

    rng = random.Random(6376)
    for _ in range(20000):
        body = bytes(rng.choice(b" \t\r\nab") for _ in range(rng.randrange(0, 40)))
        assert dkimpy_setup.relaxed_body(body) == dkimpy_setup._RELAXED_BODY(body), body
        value = "".join(rng.choice([" ", "\t", "\r\n ", "\r\n\t", "a", "b c", "\x0b", "é"]) for _ in range(8))
        field = ("X-Test", value)
        (theirs,) = dkimpy_setup._RELAXED_HEADERS(dkim.rfc822_parse(message_bytes([field], b""))[0])
        assert relaxed_header(*field) == theirs[0] + b":" + theirs[1], field


def test_keys_dkimpy_parses_itself_are_signed_too(tmp_path):
    # A key srsd never loaded (some other dkimpy user in the process): built from dkimpy's numbers.
    private = rsa.generate_private_key(65537, 2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    message = message_bytes(HEADERS, BODY)
    fast = dkim.sign(message, b"s", b"example.org", pem)
    with pure_python_rsa():
        slow = dkim.sign(message, b"s", b"example.org", pem)
    assert fast.split(b"t=")[0] == slow.split(b"t=")[0]


# -- signing, verified by dkimpy and Mail::DKIM ---------------------------------------------------------


def signed_message(key, domain="fwd.example", selector="sel", headers=HEADERS, body=BODY):
    signature = sign_message(headers, body, key, domain, selector, SIGNED)
    return message_bytes([signature, *headers], body), signature


def test_signature_shape(rsa_key):
    _, (name, value) = signed_message(rsa_key)
    assert name == "DKIM-Signature" and value.startswith(" v=1; a=rsa-sha256; c=relaxed/relaxed; d=fwd.example;")
    tags = dkim.util.parse_tag_value(value.encode())
    # present fields once each, From over-signed; absent List-Id and unlisted X-Unsigned not signed
    assert re.sub(rb"\s+", b"", tags[b"h"]).split(b":") == [
        b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type", b"from",
    ]  # fmt: skip
    assert tags[b"i"] == b"@fwd.example" and tags[b"s"] == b"sel"


def test_rsa_signature_verifies_in_dkimpy_over_loopback_dns(dns_server, rsa_key):
    publish(dns_server, "sel", "fwd.example", rsa_key)
    message, _ = signed_message(rsa_key)
    dnsfunc = lookup(dns_server)
    results = verify_signatures(*split_message(message), dnsfunc)
    assert [(r.result, r.domain, r.selector) for r in results] == [("pass", "fwd.example", "sel")]
    asked = dns_server.count("sel._domainkey.fwd.example", "TXT")
    assert dkim.verify(message, dnsfunc=dnsfunc)  # dkimpy's own entry point takes it too
    assert dns_server.count("sel._domainkey.fwd.example", "TXT") == asked  # srsd's resolver cache


@needs_mail_dkim
def test_rsa_signature_verifies_in_mail_dkim(dns_server, rsa_key):
    publish(dns_server, "sel", "fwd.example", rsa_key)
    message, _ = signed_message(rsa_key)
    outcome = maildkim.mail_dkim(message, dns_server.port)
    assert outcome.result == "pass", outcome
    assert outcome.signatures == (("fwd.example", "pass", "pass"),)


@needs_mail_dkim
def test_mail_dkim_sees_a_tampered_message_fail(dns_server, rsa_key):
    publish(dns_server, "sel", "fwd.example", rsa_key)
    message, _ = signed_message(rsa_key)
    tampered = message.replace(b"this is the body", b"this is another body")
    assert maildkim.mail_dkim(tampered, dns_server.port).result == "fail"
    assert verify_signatures(*split_message(tampered), lookup(dns_server))[0].result == "fail"


def test_ed25519_signature_verifies_in_dkimpy(dns_server, ed_key):
    publish(dns_server, "ed", "fwd.example", ed_key)
    message, (_, value) = signed_message(ed_key, selector="ed")
    assert "a=ed25519-sha256" in value
    results = verify_signatures(*split_message(message), lookup(dns_server))
    assert [(r.result, r.algorithm) for r in results] == [("pass", "ed25519-sha256")]


# -- verification of every signature ---------------------------------------------------------------------


def test_every_signature_is_reported(dns_server, rsa_key, rsa_key2):
    publish(dns_server, "good", "example.org", rsa_key)
    publish(dns_server, "wrong", "example.net", rsa_key)  # published key is not the signing key
    publish(dns_server, "revoked", "example.com", rsa_key)
    dns_server.add("revoked._domainkey.example.com", {"TXT": "v=DKIM1; k=rsa; p="})  # second record: ignored
    dns_server.set_zone(
        {
            "good._domainkey.example.org": [{"TXT": rsa_key.txt_record()}],
            "wrong._domainkey.example.net": [{"TXT": rsa_key.txt_record()}],
            "revoked._domainkey.example.com": [{"TXT": "v=DKIM1; k=rsa; p="}],
            "slow._domainkey.example.com": ["TIMEOUT"],
        }
    )
    headers = list(HEADERS)
    signatures = [
        sign_message(headers, BODY, rsa_key, "example.org", "good", SIGNED),
        sign_message(headers, BODY, rsa_key2, "example.net", "wrong", SIGNED),
        sign_message(headers, BODY, rsa_key, "example.com", "revoked", SIGNED),
        sign_message(headers, BODY, rsa_key, "example.com", "missing", SIGNED),
        sign_message(headers, BODY, rsa_key, "example.com", "slow", SIGNED),
        ("DKIM-Signature", " v=1; a=rsa-sha256; d=example.com; s=x; b=AAAA"),  # no h=, no bh=
    ]
    message = message_bytes([*signatures, *headers], BODY)
    results = verify_signatures(*split_message(message), lookup(dns_server, timeout=0.3))
    assert [(r.result, r.domain, r.selector) for r in results] == [
        ("pass", "example.org", "good"),
        ("fail", "example.net", "wrong"),
        ("permerror", "example.com", "revoked"),
        ("permerror", "example.com", "missing"),
        ("temperror", "example.com", "slow"),
        ("neutral", "example.com", "x"),
    ]
    assert results[3].reason == "no key for signature"
    # dkimpy's own dkim.verify would have looked at the first one only
    assert dkim.verify(message, dnsfunc=lookup(dns_server))


def test_body_hash_mismatch_is_a_fail_with_reason(dns_server, rsa_key):
    publish(dns_server, "sel", "fwd.example", rsa_key)
    message, _ = signed_message(rsa_key)
    result = verify_signatures(*split_message(message.replace(b"Hello,", b"Hullo,")), lookup(dns_server))[0]
    assert (result.result, result.reason) == ("fail", "body hash mismatch")


def test_key_record_whose_p_is_not_a_key_is_permerror(dns_server, rsa_key):
    # dkimpy's ASN.1 reader asserts on it: AssertionError escaped verify_signatures and the
    # milter failed on the message at every attempt (fuzz/corpus/headers/crash-key-not-asn1)
    der = base64.b64decode(rsa_key.txt_record().split("p=")[1])
    mangled = base64.b64encode(der.replace(b"\x05\x00", b"\x05\x01", 1)).decode()  # a NULL one byte long
    dns_server.set_zone({"sel._domainkey.fwd.example": [{"TXT": f"v=DKIM1; k=rsa; p={mangled}"}]})
    message, _ = signed_message(rsa_key)
    result = verify_signatures(*split_message(message), lookup(dns_server))[0]
    assert (result.result, result.reason) == ("permerror", "unusable key: AssertionError")


@pytest.mark.parametrize(
    "old,new,reason",
    [
        # dkimpy's tag check indexes past the start of such an i= (IndexError escaped
        # verify_signatures: fuzz/corpus/headers/crash-identity-as-long-as-domain)
        (b"i=@fwd.example", b"i=fwd.example", "IndexError in its tags"),
        # it lets "l=" through, and int(b"") raised (fuzz/corpus/headers/crash-empty-body-length)
        (b"q=dns/txt;", b"q=dns/txt; l=;", "l= is not a number"),
    ],
)
def test_tags_dkimpy_slips_on_are_neutral(dns_server, rsa_key, old, new, reason):
    publish(dns_server, "sel", "fwd.example", rsa_key)
    message, _ = signed_message(rsa_key)
    result = verify_signatures(*split_message(message.replace(old, new, 1)), lookup(dns_server))[0]
    assert (result.result, result.reason) == ("neutral", f"malformed signature: {reason}")


def test_key_record_with_an_even_exponent_is_permerror(dns_server, rsa_key):
    # dkimpy reads the numbers, OpenSSL refuses them: ValueError escaped verify_signatures
    # (fuzz/corpus/headers/crash-key-even-exponent, signing/crash-arc-key-even-exponent)
    der = base64.b64decode(rsa_key.txt_record().split("p=")[1])
    assert der.endswith(b"\x02\x03\x01\x00\x01")  # e = 65537, last in the key
    even = base64.b64encode(der[:-1] + b"\x02").decode()
    dns_server.set_zone({"sel._domainkey.fwd.example": [{"TXT": f"v=DKIM1; k=rsa; p={even}"}]})
    message, _ = signed_message(rsa_key)
    result = verify_signatures(*split_message(message), lookup(dns_server))[0]
    assert (result.result, result.reason) == ("permerror", "unusable key: e must be odd.")


@pytest.mark.parametrize("tag", [b"bh=", b"b="])
def test_signature_whose_hash_is_not_base64_is_neutral(dns_server, rsa_key, tag):
    # dkimpy decodes bh= and b= in verify() and let binascii.Error out: the milter failed
    # on the message at every attempt (fuzz/corpus/headers/crash-bh-not-base64)
    publish(dns_server, "sel", "fwd.example", rsa_key)
    message, _ = signed_message(rsa_key)
    # one base64 character less: b64decode drops the 8-bit byte, then the padding is wrong
    broken = re.sub(rb"(\s" + tag + rb"[A-Za-z0-9+/]{5})[A-Za-z0-9+/]", lambda m: m[1] + b"\xed", message, count=1)
    result = verify_signatures(*split_message(broken), lookup(dns_server))[0]
    assert (result.result, result.domain) == ("neutral", "fwd.example")
    assert result.reason.startswith("malformed signature: ")


def test_signature_count_is_capped(dns_server, rsa_key):
    publish(dns_server, "sel", "fwd.example", rsa_key)
    signature = sign_message(HEADERS, BODY, rsa_key, "fwd.example", "sel", SIGNED)
    message = message_bytes([signature] * 12 + HEADERS, BODY)
    assert [r.result for r in verify_signatures(*split_message(message), lookup(dns_server), limit=8)] == ["pass"] * 8


def test_lookups_respect_the_deadline(dns_server):
    dns_server.set_zone({"sel._domainkey.example.org": ["TIMEOUT"]})
    resolver = Resolver([dns_server.address], timeout=2.0)
    started = time.monotonic()
    with pytest.raises(DKIMTemporaryError):
        txt_lookup(resolver, deadline=time.monotonic() + 0.3)(b"sel._domainkey.example.org.")
    assert time.monotonic() - started < 1.0
    with pytest.raises(DKIMTemporaryError, match="no time left"):
        txt_lookup(resolver, deadline=time.monotonic() - 1)(b"other._domainkey.example.org.")


def test_multi_string_txt_records_are_joined(dns_server, rsa_key):
    record = rsa_key.txt_record()
    dns_server.set_zone({"sel._domainkey.fwd.example": [{"TXT": [record[:100], record[100:]]}]})
    assert lookup(dns_server)(b"sel._domainkey.fwd.example.") == record.encode()
    assert lookup(dns_server)(b"nothing.fwd.example.") is None


# -- ARC --------------------------------------------------------------------------------------------------


def seal(headers, body, key, domain, selector="arc", cv="none", spf="pass"):
    results = authentication_results(
        domain, spf=(spf, "smtp.mailfrom", "example.org"), dkim_results=[], arc=ARCResult(cv)
    )
    return seal_message([results, *headers], body, key, domain, selector, domain, SIGNED, cv=cv), results


def test_first_arc_set_validates_in_dkimpy(dns_server, rsa_key):
    publish(dns_server, "arc", "hop1.example", rsa_key)
    arc_set, results = seal(HEADERS, BODY, rsa_key, "hop1.example")
    assert arc_set[0][1].startswith(" i=1; cv=none; a=rsa-sha256; d=hop1.example; s=arc;")
    assert arc_set[2][1].startswith(" i=1; hop1.example;")
    message = message_bytes([*arc_set, results, *HEADERS], BODY)
    assert verify_arc(*split_message(message), lookup(dns_server)) == ARCResult("pass", "", 1)


@needs_mail_dkim
def test_two_hop_arc_chain_validates_in_dkimpy_and_mail_dkim(dns_server, rsa_key, rsa_key2):
    publish(dns_server, "arc", "hop1.example", rsa_key)
    publish(dns_server, "sel", "fwd.example", rsa_key2)
    first, results1 = seal(HEADERS, BODY, rsa_key, "hop1.example")
    hop1 = [*first, results1, *HEADERS]
    assert verify_arc(*split_message(message_bytes(hop1, BODY)), lookup(dns_server)).cv == "pass"
    second, results2 = seal(hop1, BODY, rsa_key2, "fwd.example", selector="sel", cv="pass")
    assert second[0][1].startswith(" i=2; cv=pass;")
    message = message_bytes([*second, results2, *hop1], BODY)
    assert verify_arc(*split_message(message), lookup(dns_server)) == ARCResult("pass", "", 2)
    outcome = maildkim.mail_dkim(message, dns_server.port, "arc")
    assert outcome.result == "pass", outcome


def test_broken_chain_is_fail_and_still_sealable(dns_server, rsa_key):
    publish(dns_server, "arc", "hop1.example", rsa_key)
    arc_set, results = seal(HEADERS, BODY, rsa_key, "hop1.example")
    message = message_bytes([*arc_set, results, *HEADERS], BODY.replace(b"Hello", b"Bye"))
    outcome = verify_arc(*split_message(message), lookup(dns_server))
    assert (outcome.cv, outcome.sealable, outcome.temporary) == ("fail", True, False)


def test_chain_that_already_failed_is_not_sealed_again(dns_server, rsa_key):
    publish(dns_server, "arc", "hop1.example", rsa_key)
    first, results1 = seal(HEADERS, BODY, rsa_key, "hop1.example")
    hop1 = [*first, results1, *HEADERS]
    second, results2 = seal(hop1, BODY, rsa_key, "hop1.example", cv="fail")
    assert second[0][1].startswith(" i=2; cv=fail;")
    outcome = verify_arc(*split_message(message_bytes([*second, results2, *hop1], BODY)), lookup(dns_server))
    assert (outcome.cv, outcome.sealable) == ("fail", False)


@pytest.mark.parametrize("claim", ["i=50", "i=112:00:00 +0000"])
def test_chain_claiming_instance_50_is_not_sealable(dns_server, rsa_key, claim):
    # the sealer refuses past i=50 by the highest i= of any ARC field; a failed chain's
    # results did not show it, so the milter sealed and failed on the message at every
    # attempt (fuzz/corpus/signing/crash-arc-instance-112)
    publish(dns_server, "arc", "hop1.example", rsa_key)
    arc_set, results = seal(HEADERS, BODY, rsa_key, "hop1.example")
    message = message_bytes([("ARC-Message-Signature", f" {claim}"), *arc_set, results, *HEADERS], BODY)
    outcome = verify_arc(*split_message(message), lookup(dns_server))
    assert (outcome.cv, outcome.sealable) == ("fail", False)


def test_an_arc_field_without_an_instance_is_not_sealed_over(dns_server, rsa_key):
    # it belongs to no set, and dkimpy's verifier picks ARC fields by position: it hashed
    # that field instead of our new ARC-Message-Signature, and our set failed at the next
    # hop (fuzz/corpus/signing/crash-arc-field-without-instance, crash-arc-instance-0)
    publish(dns_server, "arc", "hop1.example", rsa_key)
    stray = ("ARC-Message-Signature", " a=rsa-sha256; d=x.example; s=y; h=from; bh=AAAA; b=AAAA")
    outcome = verify_arc(*split_message(message_bytes([*HEADERS, stray], BODY)), lookup(dns_server))
    assert (outcome.cv, outcome.sealable) == ("none", False)
    zero = ("ARC-Seal", " i=0; cv=none; a=rsa-sha256; d=x.example; s=y; b=AAAA")  # crash-arc-instance-0
    outcome = verify_arc(*split_message(message_bytes([*HEADERS, zero], BODY)), lookup(dns_server))
    assert (outcome.cv, outcome.sealable) == ("none", False)
    arc_set, results = seal(HEADERS, BODY, rsa_key, "hop1.example")
    outcome = verify_arc(*split_message(message_bytes([stray, *arc_set, results, *HEADERS], BODY)), lookup(dns_server))
    assert (outcome.cv, outcome.sealable) == ("pass", False)


def test_arc_lookup_timeout_is_temporary(dns_server, rsa_key):
    dns_server.set_zone({"arc._domainkey.hop1.example": ["TIMEOUT"]})
    arc_set, results = seal(HEADERS, BODY, rsa_key, "hop1.example")
    outcome = verify_arc(*split_message(message_bytes([*arc_set, results, *HEADERS], BODY)), lookup(dns_server, 0.3))
    assert (outcome.cv, outcome.temporary, outcome.sealable) == ("fail", True, False)


def test_no_arc_headers_is_none(dns_server):
    assert verify_arc(*split_message(message_bytes(HEADERS, BODY)), lookup(dns_server)) == ARCResult("none", "", 0)


def test_seal_needs_our_authentication_results(rsa_key):
    foreign = ("Authentication-Results", " mx.other.example; spf=pass smtp.mailfrom=example.org")
    assert seal_message([foreign, *HEADERS], BODY, rsa_key, "fwd.example", "s", "fwd.example", SIGNED, cv="none") == []
    with pytest.raises(ValueError, match="rsa-sha256 only"):
        seal_message(HEADERS, BODY, generate_key(str(rsa_key.path) + ".ed", "ed25519-sha256"), "a.b", "s",
                        "a.b", SIGNED, cv="none")  # fmt: skip


def test_seal_despite_an_earlier_hops_8bit_authentication_results(dns_server, rsa_key):
    # dkimpy decodes every Authentication-Results field as UTF-8 when sealing: a Latin-1
    # byte in another hop's field (kept by the milter as a surrogate) raised
    # UnicodeDecodeError, and the message was refused for now at every attempt.
    publish(dns_server, "arc", "hop1.example", rsa_key)
    latin1 = ("Authentication-Results", " mx.other.example; spf=pass (J\udcf6rg) smtp.mailfrom=example.org")
    arc_set, results = seal([latin1, *HEADERS], BODY, rsa_key, "hop1.example")
    assert arc_set[0][0] == "ARC-Seal"
    assert "other.example" not in arc_set[2][1]  # the set records our results alone
    message = message_bytes([*arc_set, results, latin1, *HEADERS], BODY)
    assert verify_arc(*split_message(message), lookup(dns_server)) == ARCResult("pass", "", 1)


# -- Authentication-Results -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "authserv_id"),
    [
        (" fwd.example; spf=pass", "fwd.example"),
        (" FWD.Example; none", "fwd.example"),
        (" fwd.example 1; dkim=pass", "fwd.example"),
        (" (comment (nested)) fwd.example;\r\n\tarc=none", "fwd.example"),
        ("\r\n\tfwd.example;spf=pass", "fwd.example"),
        (' "quoted.example"; none', "quoted.example"),
        (" fwd.example", "fwd.example"),
        ("", ""),
    ],
)
def test_authserv_id_of(value, authserv_id):
    assert authserv_id_of(value) == authserv_id


def test_forged_results_are_found_highest_first():
    headers = [
        ("Authentication-Results", " fwd.example; spf=pass"),
        ("Subject", " x"),
        ("authentication-results", " mx.other.example; spf=fail"),
        ("AUTHENTICATION-RESULTS", " Fwd.Example; dkim=pass"),
        ("X-Authentication-Results", " fwd.example; spf=pass"),
        ("Authentication-Results", " fwd.example.evil; spf=pass"),
    ]
    assert forged_results(headers, "fwd.example") == [3, 1]
    assert forged_results(headers, "nobody.example") == []


def test_authentication_results_format_parses_in_authres():
    results = [
        SignatureResult("pass", "", "example.org", "s1", "@example.org", "rsa-sha256", "abcdefg/1234+=="),
        SignatureResult("fail", "body hash mismatch", "example.net", "s2", "", "rsa-sha256", "abcdefg/5678"),
    ]
    name, value = authentication_results(
        "fwd.example", spf=("softfail", "smtp.mailfrom", "example.org"), dkim_results=results, arc=ARCResult("pass")
    )
    assert name == "Authentication-Results"
    assert value == (
        " fwd.example;\r\n"
        "\tspf=softfail smtp.mailfrom=example.org;\r\n"
        "\tdkim=pass header.d=example.org header.i=@example.org header.s=s1 header.a=rsa-sha256"
        ' header.b="abcdefg/1234";\r\n'
        "\tdkim=fail (body hash mismatch) header.d=example.net header.s=s2 header.a=rsa-sha256"
        ' header.b="abcdefg/5678";\r\n'
        "\tarc=pass"
    )
    parsed = authres.AuthenticationResultsHeader.parse(f"{name}:{value}")
    assert parsed.authserv_id == "fwd.example"
    assert [(r.method, r.result) for r in parsed.results] == [("spf", "softfail"), ("dkim", "pass"),
                                                              ("dkim", "fail"), ("arc", "pass")]  # fmt: skip


def test_authentication_results_without_signatures_or_spf():
    _, value = authentication_results("fwd.example", spf=None, dkim_results=[], arc=None)
    assert value == " fwd.example;\r\n\tdkim=none"
    _, value = authentication_results("fwd.example", spf=("none", "smtp.helo", "mx.example"), dkim_results=[],
                                         arc=ARCResult("fail", "ARC-Seal[1] did not validate"))  # fmt: skip
    assert "spf=none smtp.helo=mx.example" in value and "arc=fail (ARC-Seal[1] did not validate)" in value


def test_header_b_prefixes_are_long_enough_to_tell_signatures_apart():
    a = SignatureResult("pass", b="abcdefghIJKLmnop")
    b = SignatureResult("fail", b="abcdefghIJKLqrst")
    c = SignatureResult("pass", b="zzzzzzzzzzzz")
    _, value = authentication_results("x.example", spf=None, dkim_results=[a, b, c], arc=None)
    assert "header.b=abcdefghIJKLmnop" in value and "header.b=abcdefghIJKLqrst" in value
    assert "header.b=zzzzzzzz;" in value or value.endswith("header.b=zzzzzzzz")


# -- CLI: dkim-keygen, dns-records ----------------------------------------------------------------------------


def test_cli_dkim_keygen(tmp_path, capsys):
    from srsd.cli import main

    assert main(["dkim-keygen", "--domain", "Fwd.Example.", "--selector", "s2026", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    name, _in, _txt, data = out.out.strip().split(" ", 3)
    assert name == "s2026._domainkey.fwd.example."
    key = load_signing_key(str(tmp_path / "s2026.private"))
    assert data.replace('" "', "").strip('"') == key.txt_record()
    assert stat.S_IMODE(os.stat(tmp_path / "s2026.private").st_mode) == 0o600
    assert "key_file" in out.err
    assert main(["dkim-keygen", "--domain", "fwd.example", "--selector", "s2026", "--out", str(tmp_path)]) == 1
    assert "not overwriting" in capsys.readouterr().err
    assert main(["dkim-keygen", "--domain", "x", "--selector", "e", "--out", str(tmp_path)]) == 2
    args = ["dkim-keygen", "--domain", "fwd.example", "--selector", "e", "--algorithm", "ed25519", "--out"]
    assert main([*args, str(tmp_path)]) == 0
    assert "k=ed25519" in capsys.readouterr().out


def test_cli_dkim_keygen_writes_the_key_directory_layout(tmp_path, capsys):
    """Without --out: <key-directory>/<domain>/<selector>.private, where [[dkim.keys]] looks by default."""
    from srsd.cli import main

    args = ["dkim-keygen", "--domain", "Example.ORG", "--selector", "r2027", "--key-directory", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr()
    path = tmp_path / "example.org" / "r2027.private"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert out.out.startswith("r2027._domainkey.example.org. IN TXT ")
    published = out.out.split(" TXT ", 1)[1].strip().replace('" "', "").strip('"')
    assert published == load_signing_key(str(path)).txt_record()
    assert '[[dkim.keys]]\n;   domain = "example.org"\n;   selector = "r2027"' in out.err
    assert 'state = "next"' in out.err
    with pytest.raises(SystemExit) as exit_status:  # one or the other (argparse)
        main([*args, "--out", str(tmp_path)])
    assert exit_status.value.code == 2
