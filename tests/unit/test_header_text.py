"""What srsd writes into Authentication-Results reads back: comments and property values
escaped and ASCII (findings of fuzz/fuzz_dmarc.py, fuzz_headers.py, fuzz_signing.py)."""

import authres
import authres.core
import pytest

from srsd import dmarc
from srsd.header_text import comment_text, pvalue
from srsd.mailauth.results import authentication_results
from srsd.mailauth.verify import SignatureResult

FEATURES = authres.all_features()


def read_back(value: str) -> list[tuple[str, str]]:
    unfolded = value.replace("\r\n\t", " ")
    assert unfolded.isascii()
    header = authres.core.AuthenticationResultsHeader.parse_value(FEATURES, unfolded)
    return [(r.method, r.result) for r in header.results]


def test_comment_text_escapes_and_is_ascii():
    assert comment_text("a (b)) c\\ d\r\né") == "a \\(b\\)\\) c\\\\ d ?"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("a@example.org", "a@example.org"),
        ("@bücher.example", '"@b?cher.example"'),
        ("a b", '"a b"'),
        ("x\r\ny", '"x?y"'),
        # a DKIM-Signature i=: authres failed on the field (fuzz/corpus/signing/crash-identity-trailing-dot)
        ("@example.", '"@example."'),
        ("@.example.org", '"@.example.org"'),
        ("a..b@example.org", '"a..b@example.org"'),
        ("@example.org", "@example.org"),
        ("token\n", '"token?"'),  # $ matched before the newline: it was written as is
    ],
)
def test_pvalue_is_ascii(value, written):
    assert pvalue(value) == written


class DNS:
    def __init__(self, records):
        self.records = records

    def txt(self, name):
        return self.records.get(name, ())

    def exists(self, name):
        return True


@pytest.mark.parametrize(
    ("froms", "records"),
    [
        # a tag name of the record, quoted in the reason: "(p, x)) y)" closed the comment early
        ([" a@x.example"], {"_dmarc.x.example": ("v=DMARC1; p=bogus; x)) y",)}),
        # the stdlib parser's own defect text ends in ")": "(... non-ASCII characters))"
        ([" \udcb8\udcb8a@example.com"], {}),
        ([" a@b.example (c) <c@d.example>"], {}),
    ],
)
def test_dmarc_result_reads_back(froms, records):
    verdict = dmarc.check(froms, DNS(records))
    assert read_back(f"fwd.example.net; {verdict.authres}") == [("dmarc", verdict.result.result)]


@pytest.mark.parametrize("value", ["@example.", "a@b..example", "a\n", "@", "x@"])
def test_property_values_read_back(value):
    _, field = authentication_results("fwd.example.net", spf=("pass", "smtp.mailfrom", value), dkim_results=[])
    assert read_back(field) == [("spf", "pass"), ("dkim", "none")]


def test_non_ascii_signature_identity_reads_back():
    # authres (dkimpy's ARC sealer, which srsd used until it sealed by itself) skips a field
    # with UTF-8: then no ARC set was made at all (fuzz/corpus/signing/crash-non-ascii-identity)
    bad = SignatureResult("neutral", "malformed signature: i= é (x))", "example.org", "rsa", "@example.or\ufffd")
    _, value = authentication_results("fwd.example.net", spf=None, dkim_results=[bad])
    assert read_back(value) == [("dkim", "neutral")]
