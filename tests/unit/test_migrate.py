"""PostSRSd settings -> srsd config (srsd.migrate): both formats, every option either
carried over or named in a comment, and the output accepted by srsd's config loader."""

from __future__ import annotations

import re
import tomllib

import pytest

from srsd.config import parse_config
from srsd.migrate import MigrationError, import_postsrsd, render
from tests.srsd_daemon import run_cli

# Debian's /etc/default/postsrsd as an admin edits it (PostSRSd 1.10).
V1 = """\
# Default settings for PostSRSd
SRS_DOMAIN=fwd.example.org
SRS_EXCLUDE_DOMAINS=.example.org,example.net  example.com
SRS_SEPARATOR=+
SRS_SECRET="/etc/postsrsd.secret"   # the generated one
SRS_HASHLENGTH=8
SRS_HASHMIN=6
SRS_FORWARD_PORT=20001
export SRS_REVERSE_PORT='20002'
RUN_AS=postsrsd
SRS_LISTEN_ADDR=::1
CHROOT=/var/lib/postsrsd
SRS_EXTRA_OPTIONS="-A -t60 -D"
"""

# PostSRSd 2.x postsrsd.conf in libconfuse syntax, every option set.
V2 = """\
# PostSRSd example configuration file
domains = { "example.org", ".example.org", // subdomains too
            "example.net" }
domains-file = "/etc/postsrsd.domains"
domains-file-watch = on
/* a dedicated domain
   for SRS */
srs-domain = "srs.example.org"
socketmap = inet:localhost:10003
keep-alive = 45
connection-limit = 300
secrets-file = "/etc/postsrsd.secret"
milter = unix:/var/spool/postfix/srs_milter
original-envelope = embedded
milter-rewrite-local = off
milter-recipient-limit = 1000
separator = "-"
hash-length = 5
hash-minimum = 4
always-rewrite = yes
unprivileged-user = "nobody"
chroot-dir = "/var/lib/postsrsd"
syslog = on
debug = off
seccomp = on
"""


def load(text: str, tmp_path, **kw):
    """The imported config as srsd loads it, with the secrets file it names made here."""
    out = render(import_postsrsd(text, **kw), "test")
    data = tomllib.loads(out)
    secrets = tmp_path / "secret"
    secrets.write_text("s3cret\n")
    secrets.chmod(0o600)
    data["srs"]["secrets_file"] = str(secrets)
    data["srs"].pop("local_domains_file", None)
    return out, parse_config(data)


def comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("#"))


def test_v1_every_variable(tmp_path):
    out, config = load(V1, tmp_path)
    assert "PostSRSd 1.x" in out
    assert config.srs.domain == "fwd.example.org"
    assert config.srs.local_domains == (".example.org", "example.net", "example.com")
    assert (config.srs.separator, config.srs.hash_length, config.srs.hash_minimum) == ("+", 8, 6)
    assert config.listen.tcp_forward == r"tcp:20001:interface=\:\:1"
    assert config.listen.tcp_reverse == r"tcp:20002:interface=\:\:1"
    assert config.listen.socketmap == ""
    assert config.srs.always_rewrite is True  # -A
    assert config.limits.idle_timeout == 60  # -t60
    assert 'secrets_file = "/etc/postsrsd.secret"' in out
    notes = comments(out)
    for option in ("RUN_AS=postsrsd", "CHROOT=/var/lib/postsrsd", "SRS_EXTRA_OPTIONS -D", "reverse_domains"):
        assert option in notes, option


def test_v1_defaults_are_debians_launcher(tmp_path):
    out, config = load("SRS_SECRET=/etc/postsrsd.secret\n", tmp_path, mydomain=lambda: "mx.example.org")
    assert config.srs.domain == "mx.example.org" and "postconf -h mydomain" in out
    assert config.listen.tcp_forward == "tcp:10001:interface=127.0.0.1"
    assert config.listen.tcp_reverse == "tcp:10002:interface=127.0.0.1"
    assert (config.srs.separator, config.srs.hash_length, config.srs.hash_minimum) == ("=", 4, 4)
    assert "RUN_AS=postsrsd" in comments(out)


def test_v1_short_hash_minimum_is_raised_with_a_note(tmp_path):
    out, config = load("SRS_DOMAIN=fwd.example\nSRS_HASHLENGTH=3\nSRS_HASHMIN=2\n", tmp_path)
    assert (config.srs.hash_length, config.srs.hash_minimum) == (4, 4)
    assert "SRS_HASHMIN=2: srsd accepts no hash shorter than 4" in comments(out).replace("\n#   ", " ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SRS_DOMAIN=$(hostname -f)\n", "SRS_DOMAIN: .* needs the shell to expand it"),
        ("SRS_DOMAIN=`hostname`\n", "SRS_DOMAIN: .* needs the shell"),
        ("SRS_DOMAIN=a.example\nSRS_SEPARATOR=/\n", "separator: '/'"),
        ("SRS_DOMAIN=a.example\nSRS_FORWARD_PORT=http\n", "SRS_FORWARD_PORT: 'http' is not a port"),
        ("SRS_DOMAIN=a.example\nif true; then\n", "line 2: not a NAME=value"),
        ("SRS_SECRET=/etc/postsrsd.secret\n", "SRS_DOMAIN: not set"),
    ],
)
def test_v1_errors_name_the_variable(text, message):
    with pytest.raises(MigrationError, match=message):
        import_postsrsd(text, mydomain=lambda: "")


def test_v2_every_option(tmp_path):
    out, config = load(V2, tmp_path)
    assert "PostSRSd 2.x" in out
    assert config.srs.domain == "srs.example.org"
    assert config.srs.local_domains == ("example.org", ".example.org", "example.net")
    assert 'local_domains_file = "/etc/postsrsd.domains"' in out
    assert (config.srs.separator, config.srs.hash_length, config.srs.hash_minimum) == ("-", 5, 4)
    assert config.srs.always_rewrite is True
    assert config.listen.socketmap == "tcp:10003:interface=127.0.0.1"
    assert config.listen.tcp_forward == config.listen.tcp_reverse == ""
    assert (config.limits.idle_timeout, config.limits.max_connections) == (45, 300)
    assert config.log.level == "info"
    notes = comments(out)
    carried = {"domains", "domains-file", "srs-domain", "socketmap", "keep-alive", "secrets-file", "separator",
               "hash-length", "hash-minimum", "always-rewrite", "debug", "original-envelope"}  # fmt: skip
    for option in re.findall(r"^([a-z-]+) (?:\+?=)", V2, re.M):
        if option not in carried:
            assert re.search(rf"Not carried over: {option}\b", notes), f"no comment for {option}"


def test_v2_defaults_and_the_first_domain(tmp_path):
    out, config = load('domains = {".example.org", "example.org"}\n', tmp_path)
    assert config.srs.domain == "example.org"  # the first domain, its leading dot dropped
    assert config.listen.socketmap == "unix:/var/spool/postfix/srs:mode=666"
    assert 'secrets_file = "/usr/local/etc/postsrsd.secret"' in out
    assert (config.limits.idle_timeout, config.limits.max_connections) == (30, 200)
    assert "unprivileged-user = nobody" in comments(out)


def test_v2_database_envelopes_are_called_out(tmp_path):
    text = 'srs-domain = "a.example"\noriginal-envelope = database\nenvelope-database = "sqlite:x.db"\n'
    out, _ = load(text, tmp_path)
    notes = comments(out).replace("\n#   ", " ")
    assert "original-envelope = database" in notes and "do not reverse in srsd" in notes
    assert "envelope-database = sqlite:x.db" in notes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("domains = {}\n", "srs-domain: not set and domains is empty"),
        ('domains = {"a.example"\n', "list not closed"),
        ("srs-domain\n", "line 1: expected `name = value`"),
        ('srs-domain = "a.example"\nhash-length = four\n', "hash-length"),
        ('srs-domain = "a.example"\nsocketmap = tcp:1\n', "socketmap: 'tcp:1'"),
        ('srs-domain = "a.example"\nsyslog = maybe\n', "syslog: 'maybe' is not a boolean"),
        ('srs-domain = "not a domain"\n', "srs.domain"),
    ],
)
def test_v2_errors(text, message):
    with pytest.raises(MigrationError, match=message):
        render(import_postsrsd(text), "test")


def test_cli_prints_and_writes(tmp_path):
    source = tmp_path / "postsrsd"
    source.write_text(V1)
    printed = run_cli("import-postsrsd", str(source), check=True).stdout
    assert printed.startswith("# srsd configuration imported from PostSRSd 1.x settings in " + str(source))
    target = tmp_path / "srsd.toml"
    run_cli("import-postsrsd", str(source), "-o", str(target), check=True)
    assert target.read_text() == printed
    again = run_cli("import-postsrsd", str(source), "-o", str(target))
    assert again.returncode == 1 and "File exists" in again.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text("domains = {\n")
    done = run_cli("import-postsrsd", str(bad))
    assert done.returncode == 1 and done.stderr.startswith(f"srsd: import-postsrsd: {bad}: ")
