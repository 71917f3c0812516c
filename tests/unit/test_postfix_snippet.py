"""``srsd postfix-snippet``: Postfix lines from the config's own endpoints (srsd/postfix_snippet.py).

Each mode against a config, the errors that name the key, and postfix-snippets/ as the
command prints it (the shipped files are its output; tests/e2e loads them into Postfix,
tests/e2e/test_forwarded_only.py the command's output for its own config).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from srsd.config import parse_config
from srsd.postfix_snippet import MODES, SnippetError, snippet, split_endpoint
from tests.srsd_daemon import REPO_ROOT, environment, render_config, srsd_command

SNIPPETS = REPO_ROOT / "postfix-snippets"
#: the optional endpoints at the values docs/srsd.example.toml suggests; the shipped
#: main.cf.policy and main.cf.milter are printed for the default config plus these
OPTIONAL_ENDPOINTS = {
    "policy": "tcp:10004:interface=127.0.0.1",
    "milter": "unix:/var/spool/postfix/srsd/milter.sock:mode=660",
}
SHIPPED = {
    "main.cf.tcp_table": ("tcp_table",),
    "main.cf.socketmap": ("socketmap",),
    "main.cf.forwarded-only": ("forwarded-only",),
    "master.cf.forwarded-only": ("forwarded-only", "--master"),
    "main.cf.policy": ("policy",),
    "main.cf.milter": ("milter",),
}


@pytest.fixture
def make_config(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")

    def make(listen: dict[str, str] | None = None, postfix: dict[str, str] | None = None):
        data = {"srs": {"domain": "fwd.example.org", "secrets_file": str(secret)}, "listen": listen or {}}
        if postfix:
            data["postfix"] = postfix
        return parse_config(data)

    return make


def active(text: str) -> list[str]:
    """The lines Postfix reads (no comments, no blank lines)."""
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def run_snippet(*args: str, state_dir) -> subprocess.CompletedProcess[str]:
    """The command itself, with the embedded default's state in *state_dir*."""
    env = environment() | {"SRSD_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [*srsd_command(), "postfix-snippet", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_snippets_are_the_commands_output(name, tmp_path):
    """postfix-snippets/NAME is, byte for byte, what the command prints for the default
    config (policy and milter: with OPTIONAL_ENDPOINTS, off by default)."""
    args = SHIPPED[name]
    if args[0] in OPTIONAL_ENDPOINTS:
        (tmp_path / "secret").write_text("s3cret\n")
        config = tmp_path / "srsd.toml"
        config.write_text(
            render_config(
                {
                    "srs": {"domain": "fwd.example.org", "secrets_file": str(tmp_path / "secret")},
                    "listen": {args[0]: OPTIONAL_ENDPOINTS[args[0]]},
                }
            )
        )
        args = (*args, "-c", str(config))
    printed = run_snippet(*args, state_dir=tmp_path / "state")
    assert printed.returncode == 0, printed
    assert printed.stdout == (SNIPPETS / name).read_text(), (
        f"postfix-snippets/{name} differs from `srsd postfix-snippet {' '.join(args)}`: regenerate it "
        "(postfix-snippets/README.md)"
    )


def test_tcp_table(make_config):
    config = make_config({"tcp_forward": "tcp:2001:interface=127.0.0.1", "tcp_reverse": "tcp:port=2002"})
    assert active(snippet(config, "tcp_table")) == [
        "sender_canonical_maps = tcp:127.0.0.1:2001",
        "sender_canonical_classes = envelope_sender",
        "recipient_canonical_maps = tcp:127.0.0.1:2002",  # all interfaces: Postfix comes over loopback
        "recipient_canonical_classes = envelope_recipient,header_recipient",
    ]


def test_tcp_table_over_a_unix_socket_names_the_key(make_config):
    config = make_config({"tcp_forward": "unix:/run/srsd/fwd.sock", "tcp_reverse": "tcp:2002"})
    with pytest.raises(SnippetError, match=r"^listen\.tcp_forward: .*TCP only"):
        snippet(config, "tcp_table")


def test_socketmap_tcp6_and_unix(make_config):
    config = make_config({"socketmap": r"tcp6:2003:interface=\:\:1"})
    assert "sender_canonical_maps = socketmap:inet:[::1]:2003:forward" in active(snippet(config, "socketmap"))
    config = make_config({"socketmap": "unix:/var/spool/postfix/srsd/srsd.sock:mode=666"})
    lines = active(snippet(config, "socketmap"))
    assert "sender_canonical_maps = socketmap:unix:srsd/srsd.sock:forward" in lines  # relative: chroot-safe
    assert "recipient_canonical_maps = socketmap:unix:srsd/srsd.sock:reverse" in lines


def test_socket_outside_the_queue_directory_is_absolute_with_a_warning(make_config):
    config = make_config({"socketmap": "unix:/run/srsd/srsd.sock"})
    text = snippet(config, "socketmap")
    assert "sender_canonical_maps = socketmap:unix:/run/srsd/srsd.sock:forward" in active(text)
    assert "# NOTE: /run/srsd/srsd.sock is outside postfix.queue_directory (/var/spool/postfix)" in text
    # postfix.queue_directory moves what counts as inside
    config = make_config({"socketmap": "unix:/srv/pf/queue/srsd.sock"}, {"queue_directory": "/srv/pf/queue"})
    assert "sender_canonical_maps = socketmap:unix:srsd.sock:forward" in active(snippet(config, "socketmap"))


def test_policy(make_config):
    config = make_config({"policy": "tcp:2004"})
    assert "    check_policy_service { inet:127.0.0.1:2004, timeout=30s, default_action=DUNNO }" in active(
        snippet(config, "policy")
    )
    config = make_config({"policy": "unix:/var/spool/postfix/private/srsd-policy:mode=660"})
    assert "    check_policy_service { unix:private/srsd-policy, timeout=30s, default_action=DUNNO }" in active(
        snippet(config, "policy")
    )


def test_milter(make_config):
    config = make_config({"milter": "tcp:2005:interface=127.0.0.1"})
    lines = active(snippet(config, "milter"))
    assert "smtpd_milters = inet:127.0.0.1:2005" in lines
    assert "non_smtpd_milters = inet:127.0.0.1:2005" in lines
    assert "milter_default_action = tempfail" in lines
    config = make_config({"milter": "unix:/var/spool/postfix/srsd/milter.sock:mode=660"})
    text = snippet(config, "milter")
    assert "smtpd_milters = unix:srsd/milter.sock" in active(text)
    assert "install -d -o srsd -g postfix -m 2750 /var/spool/postfix/srsd" in text


def test_forwarded_only_prefers_socketmap(make_config):
    config = make_config({"socketmap": "tcp:2003"}, {"forward_pass": "127.0.0.1:2006"})
    main = active(snippet(config, "forwarded-only"))
    assert "recipient_canonical_maps = socketmap:inet:127.0.0.1:2003:reverse" in main
    assert "default_transport = srsd-forward:[127.0.0.1]:2006" in main
    assert not [line for line in main if line.startswith("sender_canonical_maps")]  # never in the first pass
    master = active(snippet(config, "forwarded-only", master=True))
    assert "127.0.0.1:2006 inet n       -       n       -       -       smtpd" in master
    assert "  -o sender_canonical_maps=socketmap:inet:127.0.0.1:2003:forward" in master
    assert "  -o cleanup_service_name=srsd-cleanup" in master
    assert "  -o content_filter=smtp:$relayhost" in master


def test_forwarded_only_over_tcp_table(make_config):
    config = make_config({"socketmap": "", "tcp_forward": "tcp:2001", "tcp_reverse": "tcp:2002"})
    assert "recipient_canonical_maps = tcp:127.0.0.1:2002" in active(snippet(config, "forwarded-only"))
    assert "  -o sender_canonical_maps=tcp:127.0.0.1:2001" in active(snippet(config, "forwarded-only", master=True))


@pytest.mark.parametrize(
    ("mode", "listen", "key"),
    [
        ("tcp_table", {"tcp_forward": ""}, "listen.tcp_forward"),
        ("tcp_table", {"tcp_reverse": ""}, "listen.tcp_reverse"),
        ("socketmap", {"socketmap": ""}, "listen.socketmap"),
        ("policy", {}, "listen.policy"),
        ("milter", {}, "listen.milter"),
        ("forwarded-only", {"socketmap": "", "tcp_forward": ""}, "listen.socketmap"),
    ],
)
def test_a_missing_endpoint_names_its_key(make_config, mode, listen, key):
    with pytest.raises(SnippetError, match="^" + re.escape(key) + ": "):
        snippet(make_config(listen), mode)


def test_an_endpoint_postfix_cannot_reach_names_its_key(make_config):
    config = make_config({"socketmap": "systemd:domain=INET:index=0"})
    with pytest.raises(SnippetError, match=r"^listen\.socketmap: 'systemd:domain=INET:index=0': .*tcp: or unix:"):
        snippet(config, "socketmap")
    with pytest.raises(SnippetError, match=r"^listen\.socketmap: .*absolute path"):
        snippet(make_config({"socketmap": "unix:srsd.sock"}), "socketmap")


def test_master_only_for_forwarded_only(make_config):
    with pytest.raises(ValueError, match="tcp_table needs no master.cf lines"):
        snippet(make_config(), "tcp_table", master=True)


def test_command_errors(tmp_path):
    """Exit 1 naming the key when the config lacks the endpoint; 2 for --master misuse."""
    missing = run_snippet("policy", state_dir=tmp_path)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("srsd: configuration error: listen.policy: disabled"), missing.stderr
    misuse = run_snippet("milter", "--master", state_dir=tmp_path)
    assert misuse.returncode == 2 and "milter needs no master.cf lines" in misuse.stderr, misuse
    assert set(MODES) == {"forwarded-only", "tcp_table", "socketmap", "policy", "milter"}


@pytest.mark.parametrize(
    ("description", "parsed"),
    [
        ("tcp:10001:interface=127.0.0.1", ("tcp", ["10001"], {"interface": "127.0.0.1"})),
        (r"tcp6:port=10003:interface=\:\:1", ("tcp6", [], {"port": "10003", "interface": "::1"})),
        ("unix:/var/spool/postfix/s.sock:mode=666", ("unix", ["/var/spool/postfix/s.sock"], {"mode": "666"})),
        (r"unix:/tmp/a\=b.sock", ("unix", ["/tmp/a=b.sock"], {})),
    ],
)  # fmt: skip
def test_split_endpoint(description, parsed):
    assert split_endpoint(description) == parsed


def test_forward_pass_is_validated(make_config):
    from srsd.config import ConfigError

    for bad in ("10006", "localhost:10006", "192.0.2.1:10006", "127.0.0.1:0", "[::1]:10006", "127.0.0.1:x"):
        with pytest.raises(ConfigError, match=r"^postfix\.forward_pass: "):
            make_config(postfix={"forward_pass": bad})
    with pytest.raises(ConfigError, match=r"^postfix\.queue_directory: "):
        make_config(postfix={"queue_directory": "spool/postfix"})
    assert make_config(postfix={"forward_pass": "127.0.0.2:2525"}).postfix.forward_pass == "127.0.0.2:2525"
    assert os.path.isabs(make_config().postfix.queue_directory)
