"""Mail::DKIM (Debian libmail-dkim-perl) as an independent verifier for tests.

:func:`mail_dkim` runs a small Perl script that verifies a message's DKIM
signatures (``Mail::DKIM::Verifier``) or its ARC chain
(``Mail::DKIM::ARC::Verifier``), looking keys up through Net::DNS pointed at
the loopback test DNS server (tests/dnsserver.py). Mail::DKIM 1.20230212 cannot
verify ed25519 signatures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

_SCRIPT = r"""
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::ARC::Verifier;
use Net::DNS::Resolver;

my ($port, $mode, @files) = @ARGV;
my $resolver = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 0,
    udp_timeout => 3, tcp_timeout => 3, retry => 1,
);
Mail::DKIM::DNS::resolver($resolver);
local $/;

sub verify {
    my ($message) = @_;
    my $verifier = $mode eq 'arc' ? Mail::DKIM::ARC::Verifier->new() : Mail::DKIM::Verifier->new();
    $verifier->PRINT($message);
    $verifier->CLOSE;
    print "result\t", $verifier->result, "\t", ($verifier->result_detail // ''), "\n";
    if ($mode ne 'arc') {
        foreach my $sig ($verifier->signatures) {
            print "sig\t", ($sig->domain // ''), "\t", ($sig->result // ''), "\t", ($sig->result_detail // ''), "\n";
        }
    }
}

if (@files) {  # one result block per file, each after a "message" line
    foreach my $file (@files) {
        open(my $fh, '<:raw', $file) or die "$file: $!";
        my $message = <$fh>;
        close $fh;
        print "message\t$file\n";
        verify($message);
    }
} else {
    binmode STDIN;
    verify(scalar <STDIN>);
}
"""


@dataclass(frozen=True)
class MailDKIMResult:
    result: str  # pass, fail, invalid, none, temperror (DKIM); pass, fail, none (ARC)
    detail: str
    signatures: tuple[tuple[str, str, str], ...]  # (domain, result, detail), DKIM mode only


def available() -> bool:
    if shutil.which("perl") is None:
        return False
    probe = subprocess.run(
        ["perl", "-MMail::DKIM::ARC::Verifier", "-MNet::DNS", "-e", "1"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def require() -> None:
    """Mail::DKIM is a required test tool (.ci/install): a missing one fails, never skips."""
    assert available(), "Mail::DKIM not installed (apt-get install libmail-dkim-perl libnet-dns-perl)"


def needs_mail_dkim(test):
    """Decorator of a test that runs Mail::DKIM: see :func:`require`."""
    require()
    return test


def _run(args: list[str], stdin: bytes, timeout: float) -> list[MailDKIMResult]:
    done = subprocess.run(
        ["perl", "-e", _SCRIPT, *args], input=stdin, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"Mail::DKIM script failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    blocks: list[tuple[str, str, list]] = []
    for line in done.stdout.decode(errors="replace").splitlines():
        fields = line.split("\t")
        if fields[0] == "result":
            blocks.append((fields[1], fields[2] if len(fields) > 2 else "", []))
        elif fields[0] == "sig":
            blocks[-1][2].append((fields[1], fields[2], fields[3] if len(fields) > 3 else ""))
    return [MailDKIMResult(result, detail, tuple(sigs)) for result, detail, sigs in blocks]


def mail_dkim(message: bytes, dns_port: int, mode: str = "dkim") -> MailDKIMResult:
    """Verify *message* with Mail::DKIM; *mode* ``"dkim"`` or ``"arc"``."""
    (outcome,) = _run([str(dns_port), mode], message, 60)
    return outcome


def mail_dkim_many(messages: list[bytes], dns_port: int, mode: str = "dkim") -> list[MailDKIMResult]:
    """:func:`mail_dkim` of each of *messages*, in one Perl process (hundreds in seconds)."""
    with tempfile.TemporaryDirectory(prefix="maildkim-") as directory:
        paths = []
        for number, message in enumerate(messages):
            path = os.path.join(directory, f"{number}.eml")
            with open(path, "wb") as fh:
                fh.write(message)
            paths.append(path)
        outcomes = _run([str(dns_port), mode, *paths], b"", 60 + len(messages))
    assert len(outcomes) == len(messages), outcomes
    return outcomes
