"""Mail::DMARC (Debian libmail-dmarc-perl, RFC 7489) as an independent DMARC evaluator.

:func:`mail_dmarc` runs ``Mail::DMARC::PurePerl`` once for a batch of cases (JSON in,
JSON out), its DNS lookups sent through Net::DNS to the loopback test DNS server
(tests/dnsserver.py). A case gives its DKIM results either as (result, d=) pairs or as
the message itself (``Case.message``), which Mail::DKIM's verifier checks first (its key
lookups through the same server) and hands to Mail::DMARC as its DKIM input.
Mail::DMARC finds the Organizational Domain with the public suffix list (Debian's
``publicsuffix`` file), not RFC 9989's tree walk, knows no ``np``/``psd``/``t`` and still
honours ``pct``: tests use it for the cases where RFC 7489 and RFC 9989 agree and assert
the documented difference where they do not.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass, field

_SCRIPT = r"""
use strict;
use warnings;
use JSON::PP;
use MIME::Base64;
use Mail::DKIM::Verifier;
use Mail::DMARC::PurePerl;
use Net::DNS::Resolver;

my ($port) = @ARGV;
my $cases = decode_json(do { local $/; <STDIN> });  # slurp here only: the PSL loader reads lines
sub resolver {
    return Net::DNS::Resolver->new(
        nameservers => ['127.0.0.1'], port => $port, recurse => 0,
        udp_timeout => 2, tcp_timeout => 2, retry => 1,
    );
}
Mail::DKIM::DNS::resolver(resolver());
my @out;
foreach my $case (@$cases) {
    my $dmarc = Mail::DMARC::PurePerl->new;
    $dmarc->set_resolver(resolver());
    $dmarc->source_ip('192.0.2.10');
    $dmarc->header_from($case->{header_from});
    $dmarc->spf(domain => $case->{spf_domain}, scope => 'mfrom', result => $case->{spf_result})
        if $case->{spf_domain};
    my @verified;
    if (defined $case->{message}) {
        my $verifier = Mail::DKIM::Verifier->new();
        $verifier->PRINT(decode_base64($case->{message}));
        $verifier->CLOSE;
        @verified = map { [$_->domain // '', $_->result // ''] } $verifier->signatures;
        $dmarc->dkim($verifier);
    } else {
        $dmarc->dkim([map { {domain => $_->[1], selector => 's', result => $_->[0]} } @{$case->{dkim}}]);
    }
    my $result = eval { $dmarc->validate };
    if (!$result) {
        push @out, {error => "$@"};
        next;
    }
    my $published = eval { $result->published };
    push @out, {
        result      => $result->result,
        disposition => $result->disposition,
        p           => ($published ? $published->p : undef),
        sp          => ($published ? $published->sp : undef),
        policy_domain => ($published ? $published->domain : undef),
        reason      => join('; ', map { ($_->type // '') . ' ' . ($_->comment // '') } @{$result->reason || []}),
        dkim        => \@verified,
    };
}
print encode_json(\@out);
"""


@dataclass(frozen=True)
class Case:
    header_from: str
    spf_result: str = "none"
    spf_domain: str = ""
    dkim: tuple[tuple[str, str], ...] = field(default=())  # (result, d=)
    message: bytes | None = None  # instead of dkim: verified by Mail::DKIM (CRLF line ends)


@dataclass(frozen=True)
class MailDMARCResult:
    result: str  # pass, fail, none
    disposition: str  # none, quarantine, reject: what Mail::DMARC would apply
    p: str | None
    sp: str | None
    policy_domain: str | None
    reason: str
    dkim: tuple[tuple[str, str], ...] = ()  # (d=, result) as Mail::DKIM verified Case.message


def available() -> bool:
    if shutil.which("perl") is None:
        return False
    modules = ["-MMail::DMARC::PurePerl", "-MMail::DKIM::Verifier", "-MJSON::PP", "-MNet::DNS"]
    probe = subprocess.run(["perl", *modules, "-e", "1"], capture_output=True, timeout=60)
    return probe.returncode == 0


def require() -> None:
    """Mail::DMARC is a required test tool (.ci/install): a missing one fails, never skips."""
    assert available(), "Mail::DMARC not installed (apt-get install libmail-dmarc-perl)"


def mail_dmarc(cases: list[Case], dns_port: int) -> list[MailDMARCResult]:
    """Evaluate every case with Mail::DMARC; one Perl process for the batch."""
    payload = json.dumps(
        [{"header_from": c.header_from, "spf_result": c.spf_result, "spf_domain": c.spf_domain,
          "dkim": [list(d) for d in c.dkim]}
         | ({"message": base64.b64encode(c.message).decode()} if c.message is not None else {}) for c in cases]
    )  # fmt: skip
    done = subprocess.run(
        ["perl", "-e", _SCRIPT, str(dns_port)], input=payload.encode(), capture_output=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"Mail::DMARC script failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    out = []
    for item in json.loads(done.stdout):
        if "error" in item:
            raise AssertionError(f"Mail::DMARC: {item['error']}")
        out.append(MailDMARCResult(item["result"], item["disposition"], item["p"], item["sp"],
                                   item["policy_domain"], item["reason"],
                                   tuple(tuple(d) for d in item["dkim"])))  # fmt: skip
    return out
