"""srsd's verifier (srsd.mailauth.verify) against dkimpy's, message by message.

Signatures made by dkimpy (every canonicalization, l=, rsa-sha256, rsa-sha1, ed25519,
absent and repeated fields in h=) and ARC chains sealed by dkimpy are checked by
both verifiers, as they arrive and after each change a hop may make; both must agree
on every one. Where srsd is stricter than dkimpy by RFC 6376 or RFC 8617, the test
says so by name.
"""

from __future__ import annotations

import itertools
import random

import dkim
import pytest

from srsd.mailauth.canonical import _b_emptied, canonical_fields, forget_fields, relaxed_header, selected
from srsd.mailauth.dkimpy_setup import QUIET
from srsd.mailauth.keys import dns_record_name, generate_key
from srsd.mailauth.message import message_bytes, split_message
from srsd.mailauth.sign import _body_hash, _signature_field
from srsd.mailauth.verify import verify_arc, verify_signatures

MESSAGE = (
    b"Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n"
    b"\tby origin.example (Postfix) with ESMTPS id 4Xyz\r\n"
    b"From: Alice Example <alice@example.org>\r\n"
    b"To:   forward-me@fwd.example \r\n"
    b"Subject: a folded\r\n  subject\tline \r\n"
    b"Date: Tue, 24 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1234@example.org>\r\n"
    b"X-Tab:\tvalue\twith\t tabs\r\n"
    b"\r\n"
    b"Hello,\r\n\r\nthis is the body.  With  spaces \r\n\tand a tab\r\n\r\n\r\n"
)
INCLUDE = [b"from", b"to", b"subject", b"date", b"message-id", b"x-tab", b"list-id", b"x-tab"]  # absent, repeated


def _headers_changed(message: bytes) -> bytes:
    return message.replace(b"Subject: a folded", b"Subject: a changed", 1)


def _whitespace_changed(message: bytes) -> bytes:  # relaxed passes, simple fails
    return message.replace(b"To:   forward-me", b"To: forward-me", 1)


def _body_appended(message: bytes) -> bytes:  # l= passes
    return message + b"-- \r\nmailing list footer\r\n"


def _body_trailing_lines(message: bytes) -> bytes:  # both pass: trailing empty lines
    return message + b"\r\n\r\n"


def _body_spaces(message: bytes) -> bytes:  # relaxed passes
    return message.replace(b"With  spaces", b"With spaces", 1)


def _second_from_on_top(message: bytes) -> bytes:  # both fail: From is over-verified
    return b"From: mallory@evil.example\r\n" + message


def _name_case(message: bytes) -> bytes:  # relaxed passes
    return message.replace(b"\r\nSubject:", b"\r\nSUBJECT:", 1)


def _new_unsigned_field(message: bytes) -> bytes:  # both pass
    return b"X-Added: by a later hop\r\n" + message


MUTATIONS = [
    lambda m: m,
    _headers_changed,
    _whitespace_changed,
    _body_appended,
    _body_trailing_lines,
    _body_spaces,
    _second_from_on_top,
    _name_case,
    _new_unsigned_field,
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    return {
        b"rsa-sha256": generate_key(str(directory / "rsa.private")),
        b"ed25519-sha256": generate_key(str(directory / "ed.private"), "ed25519-sha256"),
    }


def _records(keys) -> dict[bytes, bytes]:
    return {(dns_record_name(f"s{n}", "example.org") + ".").encode(): key.txt_record().encode()
            for n, key in enumerate(keys.values())}  # fmt: skip


def _lookup(records: dict[bytes, bytes]):
    """A dnsfunc(name, timeout=5) over *records*."""

    def dnsfunc(name, timeout=5):
        return records.get(name if isinstance(name, bytes) else name.encode())

    return dnsfunc


def _srsd_passes(message: bytes, dnsfunc) -> list[bool]:
    forget_fields()
    return [r.result == "pass" for r in verify_signatures(*split_message(message), dnsfunc)]


def _dkimpy_passes(message: bytes, dnsfunc) -> list[bool]:
    checker = dkim.DKIM(message, logger=QUIET)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    return [_dkimpy_verify(checker, i, dnsfunc) for i in range(count)]


def _dkimpy_verify(checker, idx, dnsfunc) -> bool:
    try:
        return bool(checker.verify(idx=idx, dnsfunc=dnsfunc))
    except dkim.DKIMException:  # a body hash mismatch, among others
        return False


@pytest.mark.parametrize(
    "canonicalize,length,algorithm",
    list(itertools.product(
        [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"simple", b"relaxed"), (b"relaxed", b"simple")],
        [False, True],
        [b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256"],
    )),
)  # fmt: skip
def test_dkimpy_signatures_get_the_same_verdicts(keys, canonicalize, length, algorithm):
    dnsfunc = _lookup(_records(keys))
    selector = b"s0" if algorithm.startswith(b"rsa") else b"s1"
    key = keys[b"rsa-sha256" if algorithm.startswith(b"rsa") else b"ed25519-sha256"]

    field = dkim.sign(MESSAGE, selector, b"example.org", key.dkimpy_key, canonicalize=canonicalize,
                      signature_algorithm=algorithm, include_headers=INCLUDE, length=length, logger=QUIET)  # fmt: skip
    signed = field + MESSAGE
    verdicts = []
    for mutate in MUTATIONS:
        message = mutate(signed)
        ours, theirs = _srsd_passes(message, dnsfunc), _dkimpy_passes(message, dnsfunc)
        assert ours == theirs, (mutate, canonicalize, length, algorithm)
        verdicts.append(ours[0])
    assert verdicts[0] is True and verdicts[1] is False  # as signed; a signed field changed


def test_several_signatures_each_get_their_own_verdict(keys):
    dnsfunc = _lookup(_records(keys))

    message = MESSAGE
    for n, (algorithm, canonicalize) in enumerate([(b"rsa-sha256", (b"relaxed", b"relaxed")),
                                                   (b"ed25519-sha256", (b"simple", b"simple"))]):  # fmt: skip
        message = dkim.sign(message, f"s{n}".encode(), b"example.org", keys[algorithm].dkimpy_key,
                            canonicalize=canonicalize, signature_algorithm=algorithm, include_headers=INCLUDE,
                            logger=QUIET) + message  # fmt: skip
    for mutate in MUTATIONS:
        assert _srsd_passes(mutate(message), dnsfunc) == _dkimpy_passes(mutate(message), dnsfunc), mutate
    assert _srsd_passes(_whitespace_changed(message), dnsfunc) == [False, True]  # ed25519 simple, rsa relaxed


def test_a_signature_without_from_in_h_is_neutral_where_dkimpy_passes_it(keys):
    # RFC 6376 6.1.1: a signature whose h= leaves out From MUST be ignored (PERMFAIL)
    # (dkimpy's signer refuses to make one: srsd's field builder, over relaxed fields)
    dnsfunc = _lookup(_records(keys))
    headers, body = split_message(MESSAGE)
    tags = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", b"example.org"), (b"s", b"s0"),
            (b"h", b"subject : to"), (b"bh", _body_hash(body))]  # fmt: skip
    lines = selected(canonical_fields(headers), [b"subject", b"to"])
    message = message_bytes([_signature_field("DKIM-Signature", tags, lines, keys[b"rsa-sha256"]), *headers], body)
    assert _dkimpy_passes(message, dnsfunc) == [True]
    (result,) = verify_signatures(*split_message(message), dnsfunc)
    assert (result.result, result.reason) == ("neutral", "malformed signature: h= does not sign From (RFC 6376 6.1.1)")


def test_key_records_flags_and_hashes_are_honoured(keys):
    # RFC 6376 3.6.1 h= (hashes the key may sign with) and t=s (no subdomain in i=);
    # dkimpy ignores both
    key = keys[b"rsa-sha256"]
    name = (dns_record_name("s0", "example.org") + ".").encode()
    sha1 = dkim.sign(MESSAGE, b"s0", b"example.org", key.dkimpy_key, signature_algorithm=b"rsa-sha1",
                     include_headers=INCLUDE, logger=QUIET) + MESSAGE  # fmt: skip
    only_sha256 = {name: key.txt_record().replace("k=rsa;", "k=rsa; h=sha256;").encode()}
    (result,) = verify_signatures(*split_message(sha1), _lookup(only_sha256))
    assert (result.result, result.reason) == ("permerror", "key does not allow sha1")
    sub = dkim.sign(MESSAGE, b"s0", b"example.org", key.dkimpy_key, identity=b"@mail.example.org",
                    include_headers=INCLUDE, logger=QUIET) + MESSAGE  # fmt: skip
    strict = {name: key.txt_record().replace("k=rsa;", "k=rsa; t=s;").encode()}
    assert verify_signatures(*split_message(sub), _lookup(strict))[0].result == "permerror"
    assert verify_signatures(*split_message(sub), _lookup({name: key.txt_record().encode()}))[0].result == "pass"
    ed_record = {name: keys[b"ed25519-sha256"].txt_record().encode()}
    (result,) = verify_signatures(*split_message(sha1), _lookup(ed_record))  # an rsa a= with an ed25519 key
    assert result.result == "permerror"


def _arc_sign(message: bytes, key, domain: bytes, selector: bytes, authserv_id: bytes, dnsfunc) -> bytes:
    """The next ARC set, as dkimpy seals it: its cv from the arc= of our results."""
    cv = dkim.arc_verify(message, logger=QUIET, dnsfunc=dnsfunc)[0] or b"fail"
    results = b"Authentication-Results: " + authserv_id + b"; spf=pass smtp.mailfrom=example.org; arc=" + cv + b"\r\n"
    message = results + message
    fields = dkim.arc_sign(message, selector, domain, key.dkimpy_key, authserv_id,
                           include_headers=[b"from", b"to", b"subject", b"date"], logger=QUIET)  # fmt: skip
    return b"".join(fields) + message


ARC_MUTATIONS = [
    lambda m: m,
    _headers_changed,
    _body_appended,
    _new_unsigned_field,
    lambda m: m.replace(b"spf=pass", b"spf=fail", 1),  # the newest ARC-Authentication-Results
    lambda m: m.replace(b"ARC-Authentication-Results: i=1; ", b"ARC-Authentication-Results: i=1;  x; ", 1),
    lambda m: m.replace(b"cv=none", b"cv=pass", 1),
]


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_dkimpy_arc_chains_get_the_same_verdicts(keys, hops):
    key = keys[b"rsa-sha256"]
    dnsfunc = _lookup(_records(keys))

    message = MESSAGE
    verdicts = []
    for hop in range(hops):
        # each hop its own authserv-id (dkimpy merges the fields of one)
        message = _arc_sign(message, key, b"example.org", b"s0", b"mx%d.example.org" % hop, dnsfunc)
        assert message.startswith(b"ARC-Seal: i=%d;" % (hop + 1))
        if hop == 0 and hops == 3:
            message = _body_appended(message)  # hop 2 sees a broken chain: seals cv=fail
    for mutate in ARC_MUTATIONS:
        changed = mutate(message)
        forget_fields()
        ours = verify_arc(*split_message(changed), dnsfunc)
        theirs = dkim.arc_verify(changed, logger=QUIET, dnsfunc=dnsfunc)[0]
        # dkimpy's None: a set said cv=fail, the chain has ended -- srsd's fail, not sealable
        assert ours.cv == (theirs or b"fail").decode(), (hops, mutate, ours)
        if hops == 3:
            # the newest set says cv=fail: srsd ends the chain there (RFC 8617 5.2 step 2),
            # dkimpy first checks the newest ARC-Message-Signature, and when that fails
            # (a signed field changed) says "fail" as of a chain that may be sealed again
            assert (theirs in (None, b"fail"), ours.sealable) == (True, False), (mutate, ours)
        else:
            assert ours.sealable == (theirs is not None), (hops, mutate, ours)
        verdicts.append(ours.cv)
    # as sealed; a signed field changed; the newest sealed results changed
    assert verdicts[:2] == (["pass", "fail"] if hops < 3 else ["fail", "fail"]) and verdicts[4] == "fail"


def test_b_value_removal_is_dkimpys():
    alphabet = [b" ", b"\t", b"\r\n", b"\n", b"\r", b";", b"b", b"=", b"A", b"z", b"0", b"+", b"/", b"h", b"\x0b",
                b"bh", b"-", b"\xff", b"b=", b"; b="]  # fmt: skip
    rng = random.Random(7)
    for _ in range(20000):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert _b_emptied(raw) == dkim.RE_BTAG.sub(rb"\1", raw), raw


def test_relaxed_fields_are_dkimpys():
    alphabet = [" ", "\t", "\r\n", "\n", "\r", "a", "B", ";", "\x0b", "\x0c", "\udcff", "é", "  ", "\x1c"]
    rng = random.Random(8)
    relaxed = dkim.canonicalization.Relaxed.canonicalize_headers
    for _ in range(20000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        (name, theirs), *_ = relaxed([[b"Subject", value.encode("utf-8", "surrogateescape")]])
        assert relaxed_header("Subject", value) == name + b":" + theirs, repr(value)


def test_fields_split_back_as_they_were():
    headers, body = split_message(MESSAGE)
    assert message_bytes(headers, body) == MESSAGE
    assert headers[0] == ("Received", " from mx.example.org (mx.example.org [192.0.2.1])\r\n\tby origin.example "
                                      "(Postfix) with ESMTPS id 4Xyz")  # fmt: skip
    with pytest.raises(ValueError):
        split_message(b" continuation first\r\n\r\nbody")
