"""Interoperability with the real PostSRSd 1.10 and Mail::SRS 0.31 (no mocks).

A site migrating between srsd and PostSRSd (or Mail::SRS) must not lose a bounce:
what one mints with a secrets file, the other reverses with the same file, and
both mint the same bytes on the same day.

* PostSRSd runs as a subprocess on free loopback ports and is asked over Postfix's
  tcp_table protocol. Two instances: ``current`` reads srsd's own secrets file
  (new secret first, old second); ``legacy`` reads a file holding only the old
  secret (the site before the migration).
* Mail::SRS runs through ``perl -MMail::SRS`` (one process per batch) and, where
  noted, through the ``srs`` command-line tool.
* srsd is driven through its configuration loader and :class:`Rewriter`, the
  layer whose answers the daemon sends to Postfix.

The tools are required: a missing one fails the tests (CI installs them).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from srsd.config import ConfigError, load_config
from srsd.rewrite import FOUND, Rewriter, rewriter_from_config
from srsd.srs import SRS
from tests.srsd_daemon import free_port

DOMAIN = "fwd.example"
NEW_SECRET = "n3w-s3cr3t-Qm9vYmFy"
OLD_SECRET = "0ld-s3cr3t-YmF6cXV4"

# sender -> where a bounce to its SRS address must go back to
SENDERS = {
    "alice@orig.example": "alice@orig.example",
    "Bob.Smith@Example.COM": "Bob.Smith@Example.COM",
    "x+tag@sub.example.org": "x+tag@sub.example.org",
    "a=b@orig.example": "a=b@orig.example",
    "J\u00f6rg@B\u00fccher.Example": "J\u00f6rg@B\u00fccher.Example",  # UTF-8, hashed with ASCII-only lower-casing
    # SRS0 from another forwarder -> SRS1; reverses to that hop's SRS0
    "SRS0=abcd=AB=orig.example=carol@hop1.example": "SRS0=abcd=AB=orig.example=carol@hop1.example",
    "SRS0+Xy9/=CD=orig.example=dave@hop1.example": "SRS0+Xy9/=CD=orig.example=dave@hop1.example",
    # SRS1 from a second hop -> re-signed SRS1 with the same first hop
    "SRS1=wxyz=hop1.example==abcd=AB=orig.example=carol@hop2.example": ("SRS0=abcd=AB=orig.example=carol@hop1.example"),
}

POSTSRSD = shutil.which("postsrsd") or "/usr/sbin/postsrsd"
PERL = shutil.which("perl") or "perl"
SRS_CLI = shutil.which("srs") or "/usr/bin/srs"

T = TypeVar("T")


# -- the tools ------------------------------------------------------------------


@functools.cache  # a failure raises, so it is not cached
def _require_tools() -> None:
    missing = []
    if not os.access(POSTSRSD, os.X_OK):
        missing.append("postsrsd (Debian package postsrsd, /usr/sbin/postsrsd)")
    try:
        subprocess.run([PERL, "-MMail::SRS", "-e", "1"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.CalledProcessError):
        missing.append("perl Mail::SRS (Debian package libmail-srs-perl)")
    if not os.access(SRS_CLI, os.X_OK):
        missing.append("srs CLI (Debian package libmail-srs-perl, /usr/bin/srs)")
    if missing:
        pytest.fail("interop tools missing: " + "; ".join(missing), pytrace=False)


class TcpTable:
    """A Postfix tcp_table client on one persistent connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("rb")

    def get(self, key: str) -> tuple[int, str]:
        """``get <key>`` -> (code, %XX-decoded text)."""
        encoded = urllib.parse.quote(key, safe="@=+!#$&'*/?^`{|}~")
        self.sock.sendall(f"get {encoded}\n".encode("ascii"))
        line = self.reader.readline()
        if not line:
            raise AssertionError(f"tcp_table server closed the connection on {key!r}")
        code, _, text = line.decode("utf-8", "surrogateescape").rstrip("\n").partition(" ")
        return int(code), urllib.parse.unquote(text, errors="surrogateescape")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@dataclass
class PostSRSd:
    """One PostSRSd 1.10 process; forward/reverse return the 200 value or None."""

    process: subprocess.Popen[bytes]
    forward_port: int
    reverse_port: int
    log: Path

    def __post_init__(self) -> None:
        self._fwd = TcpTable(self.forward_port)
        self._rev = TcpTable(self.reverse_port)

    def forward_reply(self, address: str) -> tuple[int, str]:
        return self._fwd.get(address)

    def reverse_reply(self, address: str) -> tuple[int, str]:
        return self._rev.get(address)

    def forward(self, address: str) -> str | None:
        code, text = self._fwd.get(address)
        return text if code == 200 else None

    def reverse(self, address: str) -> str | None:
        code, text = self._rev.get(address)
        return text if code == 200 else None

    def stop(self) -> None:
        self._fwd.close()
        self._rev.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def start_postsrsd(secrets_file: Path, workdir: Path, name: str, flags: list[str] | None = None) -> PostSRSd:
    """Start PostSRSd in the foreground on two free loopback ports."""
    log = workdir / f"postsrsd-{name}.log"
    for _attempt in range(3):  # a free port may be taken between probe and bind
        fwd, rev = free_port(), free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [POSTSRSD, "-s", str(secrets_file), "-d", DOMAIN, "-f", str(fwd), "-r", str(rev),
                 "-l", "127.0.0.1", "-4", "-t", "60", *(flags or [])],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", rev), timeout=1).close()
                return PostSRSd(proc, fwd, rev, log)
            except OSError:
                time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail(f"PostSRSd did not start: {log.read_text(errors='replace')}", pytrace=False)


_MAILSRS = r"""
use strict; use warnings; use Mail::SRS;
binmode STDIN; binmode STDOUT; $| = 1;
my ($alias, @secrets) = @ARGV;
my $srs = Mail::SRS->new(Secret => \@secrets, HashLength => 4, HashMin => 4,
                         MaxAge => 21, Separator => '=');
while (my $line = <STDIN>) {
    chomp $line;
    my ($op, $addr) = split /\t/, $line, 2;
    my $out = eval { $op eq 'F' ? $srs->forward($addr, $alias) : $srs->reverse($addr) };
    if ($@) { (my $e = $@) =~ s/\s+/ /g; print "ERR\t$e\n"; } else { print "OK\t$out\n"; }
}
"""


def mailsrs(secrets: list[str], ops: list[tuple[str, str]]) -> list[str | None]:
    """Run ("F"|"R", address) operations through Mail::SRS (Guarded, hash 4,
    21 days); each result is the output or None when Mail::SRS died."""
    stdin = "".join(f"{op}\t{addr}\n" for op, addr in ops)
    done = subprocess.run(
        [PERL, "-e", _MAILSRS, DOMAIN, *secrets],
        input=stdin.encode(),
        capture_output=True,
        check=True,
        timeout=30,
    )
    lines = done.stdout.decode("utf-8").split("\n")[:-1]
    assert len(lines) == len(ops), done.stderr.decode()
    return [line[3:] if line.startswith("OK\t") else None for line in lines]


def srs_cli(*args: str) -> list[str]:
    """The ``srs`` tool; secrets go as --secret (its --secretfile keeps each
    line's newline as part of the secret, so it cannot share PostSRSd's file)."""
    done = subprocess.run([SRS_CLI, *args], capture_output=True, check=True, timeout=30)
    return done.stdout.decode("utf-8").split("\n")[:-1]


def same_day(compute: Callable[[], T]) -> T:
    """Run *compute* (which reads the real clock) within one UTC day; once more
    if midnight passed meanwhile."""
    for _attempt in range(2):
        day = int(time.time()) // 86400
        result = compute()
        if int(time.time()) // 86400 == day:
            return result
    raise AssertionError("the UTC day changed twice while computing")


def _ascii(text: str, how: str) -> str:
    """ASCII-only case change (MTAs smash A-Z/a-z; UTF-8 bytes stay as they are)."""
    raw = text.encode("utf-8")
    return (raw.lower() if how == "lower" else raw.upper()).decode("utf-8")


def smashed(address: str) -> dict[str, str]:
    """Case-smashed variants of an address, as broken MTAs deliver them."""
    local, _, domain = address.rpartition("@")
    return {
        "lower-local": f"{_ascii(local, 'lower')}@{domain}",
        "upper-local": f"{_ascii(local, 'upper')}@{domain}",
        "upper-all": _ascii(address, "upper"),
    }


# -- fixtures -------------------------------------------------------------------


@dataclass
class Sites:
    srsd: Rewriter  # secrets file: NEW, OLD
    secrets_file: Path
    current: PostSRSd  # the same secrets file as srsd
    legacy: PostSRSd  # OLD alone

    def srsd_forward(self, sender: str) -> str:
        answer = self.srsd.forward(sender)
        assert answer.status == FOUND, f"srsd did not rewrite {sender!r}: {answer}"
        return answer.text

    def srsd_reverse(self, address: str) -> str:
        answer = self.srsd.reverse(address)
        assert answer.status == FOUND, f"srsd did not reverse {address!r}: {answer}"
        return answer.text


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    _require_tools()
    workdir = tmp_path_factory.mktemp("interop")
    secrets_file = workdir / "secrets"
    secrets_file.write_text(f"{NEW_SECRET}\n{OLD_SECRET}\n")
    legacy_file = workdir / "secrets.legacy"
    legacy_file.write_text(f"{OLD_SECRET}\n")
    for path in (secrets_file, legacy_file):
        path.chmod(0o600)
    config = workdir / "srsd.toml"
    config.write_text(f'[srs]\ndomain = "{DOMAIN}"\nsecrets_file = "{secrets_file}"\n')
    rewriter = rewriter_from_config(load_config(str(config)))
    current = start_postsrsd(secrets_file, workdir, "current")
    try:
        legacy = start_postsrsd(legacy_file, workdir, "legacy")
    except BaseException:
        current.stop()
        raise
    try:
        yield Sites(rewriter, secrets_file, current, legacy)
    finally:
        current.stop()
        legacy.stop()


# -- tests ----------------------------------------------------------------------


def test_postsrsd_reads_secrets_file_first_signs_all_verify(sites: Sites) -> None:
    """PostSRSd 1.10 signs with the first line and verifies with every line."""
    for sender in SENDERS:
        minted = same_day(lambda s=sender: (sites.current.forward(s), SRS([NEW_SECRET], DOMAIN).forward(s)))
        assert minted[0] == minted[1], f"PostSRSd did not sign {sender!r} with the first line"
    old = SRS([OLD_SECRET], DOMAIN).forward("alice@orig.example")
    assert sites.current.reverse(old) == "alice@orig.example", "PostSRSd ignored the second line"


def test_srsd_minted_reverses_in_postsrsd_and_mailsrs(sites: Sites) -> None:
    minted = {sender: sites.srsd_forward(sender) for sender in SENDERS}
    for sender, address in minted.items():
        want = SENDERS[sender]
        assert address.endswith("@" + DOMAIN)
        assert sites.current.reverse(address) == want, f"PostSRSd on {address!r}"
    reversed_ = mailsrs([NEW_SECRET, OLD_SECRET], [("R", a) for a in minted.values()])
    assert reversed_ == [SENDERS[s] for s in minted], "Mail::SRS"
    cli = srs_cli("--reverse", f"--secret={NEW_SECRET}", f"--secret={OLD_SECRET}", *minted.values())
    assert cli == [SENDERS[s] for s in minted], "srs CLI"


def test_postsrsd_and_mailsrs_minted_reverse_in_srsd(sites: Sites) -> None:
    by_postsrsd = {sender: sites.current.forward(sender) for sender in SENDERS}
    by_mailsrs = dict(zip(SENDERS, mailsrs([NEW_SECRET, OLD_SECRET], [("F", s) for s in SENDERS]), strict=True))
    for minter, minted in (("PostSRSd", by_postsrsd), ("Mail::SRS", by_mailsrs)):
        for sender, address in minted.items():
            assert address, f"{minter} did not rewrite {sender!r}"
            assert sites.srsd_reverse(address) == SENDERS[sender], f"{minter}-minted {address!r}"


def test_case_smashed_addresses_reverse_in_srsd(sites: Sites) -> None:
    minted = {}
    for sender in SENDERS:
        minted[("srsd", sender)] = sites.srsd_forward(sender)
        minted[("PostSRSd", sender)] = sites.current.forward(sender)
    for (minter, sender), address in minted.items():
        want = SENDERS[sender]
        for how, variant in smashed(address).items():
            got = sites.srsd_reverse(variant)
            assert got.lower() == want.lower(), f"{how} {minter}-minted {variant!r} -> {got!r}"
            # PostSRSd agrees: it too compares hash and timestamp case-insensitively
            assert (sites.current.reverse(variant) or "").lower() == want.lower(), f"PostSRSd on {variant!r}"


def test_old_secret_still_reverses_and_srsd_signs_with_the_first(sites: Sites) -> None:
    # Minted before the migration by PostSRSd and Mail::SRS, which knew only OLD.
    by_legacy = {sender: sites.legacy.forward(sender) for sender in SENDERS}
    by_mailsrs = dict(zip(SENDERS, mailsrs([OLD_SECRET], [("F", s) for s in SENDERS]), strict=True))
    for minter, minted in (("PostSRSd(old)", by_legacy), ("Mail::SRS(old)", by_mailsrs)):
        for sender, address in minted.items():
            assert address, f"{minter} did not rewrite {sender!r}"
            assert sites.srsd_reverse(address) == SENDERS[sender], f"{minter}-minted {address!r}"

    # srsd signs with the first line only: the old site cannot reverse its
    # addresses, the new one (and anyone holding NEW) can.
    for sender in SENDERS:
        ours, new_only, old_only = same_day(
            lambda s=sender: (
                sites.srsd_forward(s),
                SRS([NEW_SECRET], DOMAIN).forward(s),
                SRS([OLD_SECRET], DOMAIN).forward(s),
            )
        )
        assert ours == new_only != old_only
        assert sites.legacy.reverse(ours) is None, f"{ours!r} verifies with the old secret"
        assert sites.current.reverse(ours) == SENDERS[sender]
    assert mailsrs([OLD_SECRET], [("R", sites.srsd_forward("alice@orig.example"))]) == [None]


def test_forward_is_byte_identical(sites: Sites) -> None:
    """Same secrets, same day: srsd, PostSRSd, Mail::SRS and the srs CLI mint
    the same bytes, so Postfix's re-lookups and duplicate suppression agree."""
    senders = list(SENDERS)

    def mint_all() -> dict[str, list[str | None]]:
        return {
            "srsd": [sites.srsd_forward(s) for s in senders],
            "PostSRSd": [sites.current.forward(s) for s in senders],
            "Mail::SRS": mailsrs([NEW_SECRET, OLD_SECRET], [("F", s) for s in senders]),
            "srs CLI": srs_cli(f"--secret={NEW_SECRET}", f"--secret={OLD_SECRET}", f"--alias={DOMAIN}", *senders),
        }

    results = same_day(mint_all)
    for name, outputs in results.items():
        assert outputs == results["srsd"], f"{name} differs from srsd"
    # and the day stamp is today's
    today = SRS.timestamp(time.time())
    assert f"={today}=" in results["srsd"][0]


def test_postsrsd_2x_base64url_hashes_reverse_in_srsd(sites: Sites) -> None:
    """PostSRSd >= 2.2.6 writes the hash in base64url (`-`, `_` for `+`, `/`).
    Take 1.10-minted addresses whose hash holds `+` or `/`, translate them as
    2.2.6 would have minted them, and reverse them in srsd."""
    found: dict[str, tuple[str, str]] = {}  # char -> (urlsafe address, want)
    for i in range(2000):
        if {"+", "/"} <= found.keys():
            break
        sender = f"user{i}@orig.example" if i % 2 else f"SRS0=ab{i:02d}=AB=orig.example=u{i}@hop1.example"
        address = sites.current.forward(sender)
        assert address
        tag, h, rest = address[:5], *address[5:].split("=", 1)
        for char in "+/":
            if char in h and char not in found:
                urlsafe = tag + h.translate(str.maketrans("+/", "-_")) + "=" + rest
                found[char] = (urlsafe, sender)  # an SRS1 reverses to its SRS0 input
    assert {"+", "/"} <= found.keys(), "no PostSRSd hash with + and / in 2000 tries"
    for urlsafe, want in found.values():
        assert sites.srsd_reverse(urlsafe) == want, urlsafe
        # PostSRSd 1.10 itself predates base64url and rejects it.
        assert sites.current.reverse(urlsafe) is None


def test_long_postsrsd_address_reverses_in_srsd(sites: Sites) -> None:
    """srsd refuses to mint over 512 octets, but reverses anything PostSRSd
    minted (its limit is a 1024-byte buffer), so no bounce is lost."""
    for size in (520, 900):
        sender = "l" * size + "@orig.example"
        address = sites.current.forward(sender)
        assert address and len(address) > 512
        assert sites.srsd_reverse(address) == sender
        assert sites.srsd.forward(sender).status != FOUND  # srsd's own limit


def test_reverse_only_at_the_srs_domain(sites: Sites) -> None:
    """Known difference: PostSRSd and Mail::SRS ignore the domain after '@' when
    reversing; srsd reverses only addresses at its SRS domain."""
    address = sites.srsd_forward("alice@orig.example")
    elsewhere = address.rpartition("@")[0] + "@old-fwd.example"
    assert sites.current.reverse(elsewhere) == "alice@orig.example"
    assert mailsrs([NEW_SECRET], [("R", elsewhere)]) == ["alice@orig.example"]
    assert sites.srsd.reverse(elsewhere).status != FOUND
    assert sites.srsd.srs.reverse(elsewhere) == "alice@orig.example"  # the core ignores it too


def _srsd_from(workdir: Path, secrets_file: Path, extra: str = "") -> Rewriter:
    config = workdir / "srsd-extra.toml"
    config.write_text(f'[srs]\ndomain = "{DOMAIN}"\nsecrets_file = "{secrets_file}"\n{extra}')
    return rewriter_from_config(load_config(str(config)))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"first\nold\n", id="lf"),
        pytest.param(b"first\r\nold\r\n", id="crlf"),
        pytest.param(b"first", id="no-final-newline"),
        pytest.param(b"\n\r\nfirst\n\nold\n", id="blank-lines"),
        pytest.param(b"first \n old\n", id="spaces-kept"),
        pytest.param(b"#first\nold\n", id="hash-is-no-comment"),
        pytest.param(b"fir\rst\nold\n", id="cr-inside"),
        pytest.param("s\u00e9cr\u00e8t\n".encode(), id="utf8"),
        pytest.param(b"a" * 1023 + b"\n", id="1023-bytes"),
        pytest.param(b"fir\x0cst\nold\n", id="form-feed-inside"),
        pytest.param("fir\u2028st\n".encode(), id="u2028-inside"),
        pytest.param("fir\u0085st\n".encode(), id="nel-inside"),
        pytest.param(b"\xff\xfe raw bytes\n", id="not-utf8"),
    ],
)
def test_secrets_file_read_like_postsrsd(content: bytes, tmp_path: Path) -> None:
    """Pointed at PostSRSd's secrets file, srsd signs with the same secret."""
    _require_tools()
    secrets_file = tmp_path / "secrets"
    secrets_file.write_bytes(content)
    rewriter = _srsd_from(tmp_path, secrets_file)
    postsrsd = start_postsrsd(secrets_file, tmp_path, "file")
    try:
        theirs, ours = same_day(
            lambda: (postsrsd.forward("alice@orig.example"), rewriter.forward("alice@orig.example").text)
        )
    finally:
        postsrsd.stop()
    assert ours == theirs


def test_secret_line_over_1023_bytes_is_refused(tmp_path: Path) -> None:
    """PostSRSd 1.10 reads with fgets(1024) and would silently sign with the first
    1023 bytes of such a line; srsd refuses the file instead of guessing."""
    secrets_file = tmp_path / "secrets"
    secrets_file.write_bytes(b"a" * 1100 + b"\n")
    with pytest.raises(ConfigError, match="^srs.secrets_file: .*at most 1023 bytes"):
        _srsd_from(tmp_path, secrets_file)


@pytest.mark.parametrize(
    ("flags", "toml"),
    [
        pytest.param(["-a+", "-n8", "-N8"], 'separator = "+"\nhash_length = 8\nhash_minimum = 8\n', id="plus-hash8"),
        pytest.param(["-a-", "-n6", "-N5"], 'separator = "-"\nhash_length = 6\nhash_minimum = 5\n', id="minus-hash6"),
    ],
)
def test_separator_and_hash_length_match_postsrsd(flags: list[str], toml: str, tmp_path: Path) -> None:
    """srs.separator / hash_length / hash_minimum mean PostSRSd's -a / -n / -N."""
    _require_tools()
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text(f"{NEW_SECRET}\n")
    rewriter = _srsd_from(tmp_path, secrets_file, toml)
    postsrsd = start_postsrsd(secrets_file, tmp_path, "profile", flags)
    try:
        senders = list(SENDERS)
        theirs, ours = same_day(
            lambda: ([postsrsd.forward(s) for s in senders], [rewriter.forward(s).text for s in senders])
        )
        assert ours == theirs
        for sender, address in zip(senders, ours, strict=True):
            assert postsrsd.reverse(address) == SENDERS[sender]
            assert rewriter.reverse(address).text == SENDERS[sender]
    finally:
        postsrsd.stop()
