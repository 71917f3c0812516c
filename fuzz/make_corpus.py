"""Write the seed corpora ``fuzz/corpus/<target>/``: small real inputs, taken from the tests
(the SRS vectors in ``tests/data/srs_vectors.json``, the wire examples of
``tests/protocols``, the From fields and DMARC records of ``tests/unit``) and made the way
Postfix and other mail hosts make them (a Postfix 3.7 milter session, DKIM-signed and
ARC-sealed messages whose keys travel in ``X-DNS`` fields).

    PYTHONPATH=. python3 fuzz/make_corpus.py        # rewrites every corpus directory

Signed seeds get fresh keys each time; everything else comes out the same. A crashing
input found by fuzzing is added by hand as ``fuzz/corpus/<target>/crash-<what>`` (kept
when this runs again), with its regression test in ``tests/``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.fuzz_srs import NOW, SCHEMES  # noqa: E402
from fuzz.harness import FUZZ_DIR  # noqa: E402
from srsd.mailauth import dkimpy_setup  # noqa: E402
from srsd.mailauth.keys import SigningKey, dns_record_name, generate_key  # noqa: E402
from srsd.mailauth.message import HeaderField, message_bytes  # noqa: E402
from srsd.mailauth.sign import seal_message, sign_message  # noqa: E402
from srsd.protocols.netstring import encode  # noqa: E402
from srsd.srs_alias import AliasAddresses  # noqa: E402
from tests.protocols import milter_wire as w  # noqa: E402
from tests.protocols.test_policy import POSTFIX_REQUEST  # noqa: E402

ROOT = FUZZ_DIR.parent
Seeds = Iterator[tuple[str, bytes]]


def srs_seeds() -> Seeds:
    vectors = json.loads((ROOT / "tests/data/srs_vectors.json").read_text())
    for case in vectors["cases"]:
        if case["profile"] == "default" and case["now"] == NOW:
            yield f"vector-{case['operation']}-{case['id']}", case["input"].encode("utf-8", "surrogateescape")
    default, urlsafe = SCHEMES
    long_sender = "a.very.long.local.part.that.makes.the.srs0.address.too.long@lists.example.org"
    rewritten = default.forward(long_sender, NOW)
    alias = AliasAddresses(default).shorten(rewritten, NOW)
    assert alias is not None
    yield "alias-valid", alias.address.encode()
    yield "alias-key-lowercase", alias.address.lower().encode()
    yield "srs1-from-srs0", default.forward("SRS0=bhpX=NR=example.org=user@hop.example", NOW).encode()
    foreign_srs1 = "SRS1=abcd=first.example==ATf0=NP=orig.example=alice@hop.example"
    yield "srs1-resigned", default.forward(foreign_srs1, NOW).encode()
    yield "urlsafe-srs0", urlsafe.forward("user+tag@example.org", NOW).encode()
    yield "urlsafe-srs1", urlsafe.forward("SRS0+xyz=NR=example.org=user@hop.example", NOW).encode()
    # shared/testdata/field/cases.json "malformed-foreign-srs1", as tests/ has it
    yield "field-malformed-foreign-srs1", b"SRS1=Xa1b=6ppn=3g=orig.example=user@hop2.example"
    yield "old-domain", default.forward("bob@example.com", NOW).replace("fwd.example.net", "old.example.net").encode()


def tcp_table_seeds() -> Seeds:
    yield "get", b"get user@example.org\n"
    yield "get-srs0", b"get SRS0=bhpX=NR=example.org=user@fwd.example.net\n"
    yield "percent-coded", b"get %22a%20b%22@x%25y\n"
    yield "crlf", b"get a@b.example\r\n"
    yield "pipelined", b"get a@b.example\nget c@d.example\nget temp@x\n"
    yield "bad-requests", b"put a@b.example x\nGET a@b.example\n\nget a%zz@b\nget a%4\n\x00\xff\xfe junk\n"
    yield "oversize-then-get", b"get " + b"x" * 300 + b"\nget a@b.example\n"
    yield "crlf-at-the-limit", b"get " + b"y" * 252 + b"\r\nget z\n"
    yield "unfinished", b"get a@b.example\nget unfini"


def netstring_seeds() -> Seeds:
    yield "socketmap-request", encode(b"reverse SRS0=bhpX=NR=example.org=user@fwd.example.net")
    yield "three", b"3:abc,0:,5:hello,"
    yield "pipelined", encode(b"forward a@b.example") + encode(b"reverse x@y.example") + encode(b"q")
    yield "too-long-then-ok", b"10:0123456789,2:ok,"
    yield "split-length", b"12:hello world!,"
    yield "max-digits", b"0000003:abc,"
    for name, stream in [("not-a-digit", b"x:abc,"), ("no-comma", b"3:abcX"), ("eight-digits", b"12345678:"),
                         ("minus", b"-1:a,"), ("space", b" 3:abc,")]:  # fmt: skip
        yield f"broken-{name}", b"1:a," + stream


def policy_seeds() -> Seeds:
    yield "postfix-rcpt", POSTFIX_REQUEST
    yield "two-recipients", POSTFIX_REQUEST + POSTFIX_REQUEST.replace(b"bob@example.org", b"carol@example.org")
    yield "crlf-trimmed", b"request=smtpd_access_policy\r\nsender= a=b@x \r\nrecipient=c\r\n\r\n"
    base = b"request=smtpd_access_policy\nprotocol_state=%s\nclient_address=%s\nhelo_name=%s\nsender=%s\n"
    base += b"instance=i1\n\n"
    for name, args in {
        "null-sender": (b"RCPT", b"198.51.100.7", b"mail.example.org", b""),
        "whitelisted-network": (b"RCPT", b"192.0.2.200", b"relay.example", b"a@example.org"),
        "v4-mapped": (b"RCPT", b"::ffff:198.51.100.7", b"mx.example", b"a@example.org"),
        "ipv6-scoped": (b"MAIL", b"fe80::1%eth0", b"[fe80::1]", b"a@example.org"),
        "end-of-message": (b"END-OF-MESSAGE", b"198.51.100.7", b"mail.example.org", b"a@example.org"),
        "helo-state": (b"HELO", b"198.51.100.7", b"mail.example.org", b""),
        "loopback": (b"RCPT", b"127.0.0.1", b"localhost", b"root@localhost"),
        "utf8-sender": (b"RCPT", b"198.51.100.7", b"m\xc3\xa4il.example", "jörg@bücher.example".encode()),
    }.items():
        yield name, base % args
    yield "sasl", POSTFIX_REQUEST.replace(b"sasl_username=\n", b"sasl_username=alice\n")
    yield "malformed-then-ok", b"no equals sign\n\n" + POSTFIX_REQUEST
    yield "repeated-attribute", b"request=smtpd_access_policy\nsender=a@b.example\nsender=c@d.example\n\n"


def milter_seeds() -> Seeds:
    headers = [("From", " Alice <alice@example.org>"), ("To", " bob@fwd.example.net"), ("Subject", " hi\n there"),
               ("Authentication-Results", " fwd.example.net; spf=pass")]  # fmt: skip
    message = w.message_events("Q1", "alice@example.org", ["bob@fwd.example.net"], headers, [b"body\r\n"])
    yield "postfix-session", w.session_start() + message + w.QUIT
    yield "two-messages-abort", w.session_start() + message + w.ABORT + message + w.QUIT
    yield "authenticated", w.session_start() + w.message_events("Q2", "a@b.example", ["c@d.example"], headers, [],
                                                                auth="alice") + w.QUIT  # fmt: skip
    yield "unix-client", w.session_start(family=b"L", address="/run/x.sock", port=0) + message + w.QUIT
    yield "unknown-family", w.session_start(family=b"U") + message + w.QUIT_NC + w.QUIT
    yield "protocol-v2", w.optneg(2, w.SENDMAIL_V2_ACTIONS, w.POSTFIX_V2_PROTOCOL) + w.connect() + w.EOH + w.QUIT
    yield "ipv6", w.session_start(address="2001:db8::25") + w.macros(b"U", {"x": "y"}) + w.pkt(b"U", b"XCLIENT\0")
    yield "data-and-eoh", w.session_start() + w.mail("<a@b.example>") + w.DATA + w.EOH + w.body(b"x") + w.EOB
    yield "macros-long-names", w.optneg() + w.macros(b"C", {"daemon_name": "mx", "{a}": "b", "j": "mx.example"})
    yield "bad-length", w.optneg() + b"\x00\x00\x00\x00X"


def _keys(tmp: str) -> tuple[SigningKey, SigningKey]:
    return generate_key(f"{tmp}/ed", "ed25519-sha256"), generate_key(f"{tmp}/rsa", "rsa-sha256", 1024)


def _dns(key: SigningKey, selector: str, domain: str) -> HeaderField:
    return "X-DNS", f" {dns_record_name(selector, domain)} {key.txt_record()}"


def _message(headers: list[HeaderField], body: bytes = b"Hello.\r\n") -> bytes:
    return message_bytes(headers, body)


def headers_seeds() -> Seeds:
    origin: list[HeaderField] = [
        ("From", " Alice <alice@example.org>"), ("To", " bob@fwd.example.net"), ("Subject", " hello"),
        ("Date", " Sat, 15 Jun 2024 12:00:00 +0000"), ("Message-ID", " <1@example.org>"),
        ("X-DNS", " _dmarc.example.org v=DMARC1; p=reject; rua=mailto:dmarc@example.org"),
    ]  # fmt: skip
    yield "plain", _message(origin)
    for n, value in enumerate([" Alice\r\n <alice@example.org>", ' "bob@evil.example" <alice@example.org>',
                               " =?utf-8?q?x=40evil.example?= <alice@example.org>", " Bücher <info@bücher.example>",
                               " Group: a@example.org, b@example.org;", " a@b.example (c) <c@d.example>",
                               " undisclosed-recipients:;", " alice@[192.0.2.1]", " a@b@c.example"]):  # fmt: skip
        yield f"from-{n}", _message([("From", value), *origin[1:]])
    yield "two-from", _message([origin[0], ("From", " b@second.example"), *origin[1:]])
    forged = ("Authentication-Results", " FWD.example.net; dkim=pass header.d=example.org")
    yield "forged-results", _message([forged, *origin, ("Authentication-Results", ' "fwd.example.net"; none'), forged])
    with tempfile.TemporaryDirectory() as tmp:
        ed, rsa = _keys(tmp)
        dkimpy_setup.install()
        zone = [_dns(ed, "ed", "example.org"), _dns(rsa, "rsa", "example.org")]
        signed = [*zone, *origin]
        for key, selector in ((ed, "ed"), (rsa, "rsa")):
            signed = [sign_message(signed, b"Hello.\r\n", key, "example.org", selector, ["From", "To", "Subject"]),
                      *signed]  # fmt: skip
        yield "dkim-signed", _message(signed)
        yield "dkim-signed-body-changed", _message(signed, b"Hello!\r\n")
        yield "dkim-key-missing", _message(signed[:2] + signed[4:])
        yield "dkim-key-tempfail", _message([*signed, ("X-DNS", " ed._domainkey.example.org TEMPFAIL")])
        hop = [("Authentication-Results", " mx.hop.example; dkim=pass header.d=example.org; arc=none"),
               _dns(rsa, "arc", "hop.example"), *signed]  # fmt: skip
        sealed = seal_message(hop, b"Hello.\r\n", rsa, "hop.example", "arc", "mx.hop.example", ["From", "Subject"],
                              cv="none")  # fmt: skip
        yield "arc-sealed", _message([*sealed, *hop])
        yield "arc-broken", _message([*sealed, *hop], b"changed\r\n")
        yield "arc-twice", _message([*sealed, *sealed, *hop])


def dmarc_seeds() -> Seeds:
    records = ["v=DMARC1; p=reject", "v=DMARC1", "v=DMARC1;", "v=DMARC1;\tp=quarantine", "v=DMARC1p=reject",
               "v=DMARC1; p=Quarantine; sp=reject; np=none; adkim=s; aspf=S; t=y; psd=n; fo=1:d:s; "
               "rua=mailto:a@example.com,mailto:b@example.com!10m; ruf=mailto:f@example.com",
               "v=DMARC1; p=reject; pct=0; rf=afrf; ri=3600; foo=bar",
               "v=DMARC1; p=reject; adkim=x; aspf=; t=maybe; psd=q; fo=0:1; rua=not a uri",
               "v=DMARC1; p=none; p=reject", "v=DMARC1; p=bogus; p=reject",
               "v=DMARC1; rua=mailto:a@example.com"]  # fmt: skip
    for n, record in enumerate(records):
        yield f"record-{n}", record.encode()
    facts = "from: Alice <alice@mail.example.org>\nspf: pass bounce.example.org\ndkim: pass signing.example.org\n"
    yield "org-domain", (facts + "_dmarc.example.org v=DMARC1; p=reject\n"
                         "_dmarc.signing.example.org v=DMARC1; p=none\n").encode()  # fmt: skip
    yield "psd", (facts + "_dmarc.org v=DMARC1; p=quarantine; psd=y\n_dmarc.example.org v=DMARC1; p=none\n").encode()
    for name, lines in {
        "np-nxdomain": ["from: a@gone.example.com", "_dmarc.example.com v=DMARC1; p=none; np=reject",
                        "gone.example.com NXDOMAIN"],
        "two-records": ["from: a@example.com", "_dmarc.example.com v=DMARC1; p=reject",
                        "_dmarc.example.com v=DMARC1; p=none"],
        "tempfail": ["from: a@x.example", "dkim: pass x.example", "_dmarc.x.example TEMPFAIL"],
        "arc-trusted": ["from: a@example.com", "arc: pass 1 sealer.example", "_dmarc.example.com v=DMARC1; p=reject"],
        "several-authors": ["from: a@one.example, b@two.example", "from: c@three.example",
                            "_dmarc.two.example v=DMARC1; p=reject; t=y"],
    }.items():  # fmt: skip
        yield name, "\n".join(lines).encode() + b"\n"


def dns_reply_seeds() -> Seeds:
    """Replies of tests/dnsserver.py (dnspython-built) to each question the target can ask:
    answers, CNAME chains, NODATA and NXDOMAIN with their SOA, truncation, and a few
    a resolver would not send (a pointer forward, trailing bytes, an EDNS option)."""
    import struct

    from fuzz.fuzz_dns_reply import NAMES, QTYPES
    from srsd.dns_wire import query_wire
    from tests.dnsserver import DNSServer

    zone = {
        "example.org": [{"TXT": "v=spf1 include:_spf.a.b.example.com mx -all"}, {"MX": [10, "mx.example.org"]},
                        {"MX": [0, "."]}, {"A": "192.0.2.1"}, {"AAAA": "2001:db8::1"}],
        "mixed.example.org": [{"CNAME": "example.org."}],
        "_spf.a.b.example.com": [{"TXT": ["v=spf1 ip4:192.0.2.0/24", " ip6:2001:db8::/32 ~all"]},
                                 {"SPF": "v=spf1 -all"}],
        "1.2.0.192.in-addr.arpa": [{"PTR": "mail.example.org."}, {"PTR": "MAIL.example.org."}],
        "x": [{"TXT": "v=spf1 " + " ".join(f"ip4:10.0.{i}.0/24" for i in range(90)) + " -all"}],
        "xn--bcher-kva.example": [{"CNAME": "loop.example."}],
        "loop.example": [{"CNAME": "xn--bcher-kva.example."}],
    }  # fmt: skip
    server = DNSServer(zone)
    for n, name in enumerate(NAMES):
        for t, qtype in enumerate(QTYPES[:7]):
            query = query_wire(0x1234, name, qtype)
            for transport, tcp_bit in (("udp", 0), ("tcp", 0x40)):
                reply = server._respond(query, transport)  # what the server would send
                if reply is None:
                    continue
                head = bytes((t | (n << 3) | tcp_bit,))
                if transport == "udp" or qtype == "TXT":
                    yield f"{qtype}-{n}-{transport}", head + reply
    reply = server._respond(query_wire(7, "example.org", "MX"), "udp") or b""
    yield "trailing-bytes", bytes((2,)) + reply + b"\x00"
    yield "pointer-forward", bytes((0,)) + struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + b"\xc0\x20" + bytes(30)
    opt_with_option = reply[:-11] + struct.pack("!BHHIH", 0, 41, 1232, 0, 4) + b"\x00\x0a\x00\x00"
    yield "edns-option", bytes((2,)) + opt_with_option


def spf_seeds() -> Seeds:
    """Records of the shapes mail domains publish and of the RFC 7208 suite's corners: ranges,
    an include and a redirect looping back, mx/a with both prefix lengths and an exp=, ptr
    and exists, every macro letter and escape, syntax errors, more lookups than allowed."""
    yield "fail-all", b"\x00v=spf1 -all"
    yield "ip-ranges", b"\x01v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"
    yield "include-loop", b"\x00v=spf1 include:%{d}.x.example -all\x00v=spf1 include:%{i}.y.example ?all"
    yield "mx-exp", b"\x00v=spf1 mx a/24//64 -all exp=e.%{d}\x00%{c} is not %{r} at %{t}: %{L}"
    yield "ptr-exists", b"\x03v=spf1 ptr:example exists:%{ir}.%{v}._spf.%{d2} ~all"
    yield "redirect-loop", b"\x04v=spf1 redirect=%{l1r-}.example\x00v=spf1 redirect=r.example"
    yield "syntax-errors", b"\x00v=spf1 a:%{p}.example %{h} -ip4:1.2.3.4/33 frob"
    yield "macros-escapes", b"\x08v=spf1 exists:%{S}.%{O}.%{D}.example exp=%%%_%-.example ?all\x00v=spf1 +all"
    yield "too-many-lookups", b"\x02v=spf1 a mx ptr exists:a.example include:b.example a a a a a a a -all\x00v=spf1"


SEEDS = {
    "srs": srs_seeds,
    "tcp_table": tcp_table_seeds,
    "netstring": netstring_seeds,
    "policy": policy_seeds,
    "milter": milter_seeds,
    "headers": headers_seeds,
    "signing": headers_seeds,  # the same messages, sealed and signed
    "dmarc": dmarc_seeds,
    "dns_reply": dns_reply_seeds,
    "spf": spf_seeds,
}


def main() -> None:
    """Rewrite every seed corpus (files named ``crash-*`` stay)."""
    for target, seeds in SEEDS.items():
        directory = FUZZ_DIR / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if not old.name.startswith("crash-"):
                old.unlink()
        count = 0
        for name, data in seeds():
            (directory / name).write_bytes(data)
            count += 1
        print(f"{target}: {count} seeds")


if __name__ == "__main__":
    main()
