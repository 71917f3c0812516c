"""Configuration: validation errors name the key; defaults match PostSRSd."""

import os
import stat

import pytest

from srsd.config import ConfigError, default_config, is_domain, load_config, parse_config


@pytest.fixture
def secrets(tmp_path):
    path = tmp_path / "secrets"
    path.write_text("first\n\nsecond\r\n")
    return str(path)


def cfg(secrets, **srs):
    return {"srs": {"domain": "fwd.example", "secrets_file": secrets, **srs}}


def test_minimal_config_and_defaults(secrets):
    c = parse_config(cfg(secrets))
    assert c.secrets == (b"first", b"second")
    assert c.listen.tcp_forward == "tcp:10001:interface=127.0.0.1"
    assert c.listen.tcp_reverse == "tcp:10002:interface=127.0.0.1"
    assert c.listen.socketmap == "tcp:10003:interface=127.0.0.1"
    assert (c.srs.hash_length, c.srs.hash_minimum, c.srs.max_age_days, c.srs.separator) == (4, 4, 21, "=")
    assert "first" not in repr(c)  # secrets never printed


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"domain": "$myhostname"}, "srs.domain"),
        ({"domain": "net"}, "srs.domain"),
        ({"domain": ""}, "srs.domain"),
        ({"domain": "bad_label.example"}, "srs.domain"),
        ({"hash_length": "4"}, "srs.hash_length"),
        ({"hash_length": 30}, "srs.hash_length"),
        ({"hash_minimum": 3, "hash_length": 3}, "srs.hash_minimum"),
        ({"separator": "/"}, "srs.separator"),
        ({"alphabet": "base32"}, "srs.alphabet"),
        ({"always_rewrite": "yes"}, "srs.always_rewrite"),
        ({"local_domains": "example.org"}, "srs.local_domains"),
        ({"local_domains": ["not a domain"]}, "srs.local_domains"),
        ({"secrets_file": "/nonexistent/secrets"}, "srs.secrets_file"),
        ({"local_domains_file": "/nonexistent/domains"}, "srs.local_domains_file"),
        ({"colour": "blue"}, "srs.colour"),
        ({"reverse_domains": [".old.example"]}, "srs.reverse_domains"),
    ],
)
def test_errors_name_the_key(secrets, change, key):
    with pytest.raises(ConfigError) as info:
        parse_config(cfg(secrets, **change))
    assert str(info.value).startswith(key + ":")


def test_unknown_section(secrets):
    with pytest.raises(ConfigError, match="^spam: unknown section"):
        parse_config({**cfg(secrets), "spam": {}})


def test_every_endpoint_disabled(secrets):
    with pytest.raises(ConfigError, match="^listen:"):
        parse_config({**cfg(secrets), "listen": {"tcp_forward": "", "tcp_reverse": "", "socketmap": ""}})
    with pytest.raises(ConfigError, match="^listen:"):  # metrics of nothing
        off = {"tcp_forward": "", "tcp_reverse": "", "socketmap": "", "metrics": "tcp:9129"}
        parse_config({**cfg(secrets), "listen": off})


@pytest.mark.parametrize(
    ("log", "key"),
    [
        ({"level": "verbose"}, "log.level"),
        ({"target": "file"}, "log.target"),
        ({"syslog_socket": "dev/log"}, "log.syslog_socket"),
        ({"facility": "kern"}, "log.facility"),
        ({"rate_limit": -1}, "log.rate_limit"),
        ({"rate_limit": "fast"}, "log.rate_limit"),
        ({"burst": 0}, "log.burst"),
    ],
)
def test_log_errors_name_the_key(secrets, log, key):
    with pytest.raises(ConfigError) as info:
        parse_config({**cfg(secrets), "log": log})
    assert str(info.value).startswith(key + ":")


def test_secrets_read_like_postsrsd(tmp_path):
    (tmp_path / "s").write_bytes(b"\xff\xfebinary\r\n\rsecond\rjunk\nfir\x0cst\n")
    assert parse_config(cfg(str(tmp_path / "s"))).secrets == (b"\xff\xfebinary", b"second", b"fir\x0cst")
    (tmp_path / "s").write_bytes(b"a" * 1024 + b"\n")
    with pytest.raises(ConfigError, match="^srs.secrets_file: .* line 1: a secret is at most 1023 bytes"):
        parse_config(cfg(str(tmp_path / "s")))


def test_empty_secrets_file(tmp_path):
    (tmp_path / "s").write_text("\n\n")
    with pytest.raises(ConfigError, match="^srs.secrets_file: .* holds no secret"):
        parse_config(cfg(str(tmp_path / "s")))


def test_local_domains_file(tmp_path, secrets):
    (tmp_path / "d").write_text("# comment\nlocal.example\n\n.sub.example\n")
    c = parse_config(cfg(secrets, local_domains=["a.example"], local_domains_file=str(tmp_path / "d")))
    assert c.local_domains == ("a.example", "local.example", ".sub.example")


def test_load_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[srs\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    with pytest.raises(ConfigError):
        load_config(str(tmp_path / "missing.toml"))


def test_default_config_generates_a_private_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("SRSD_STATE_DIR", str(tmp_path / "state"))
    first = default_config()
    path = tmp_path / "state" / "secrets"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first.secrets) == 1 and len(first.secrets[0]) >= 32
    assert default_config().secrets == first.secrets  # kept, not regenerated
    assert "127.0.0.1" in first.listen.tcp_forward
    assert is_domain(first.srs.domain)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("fwd.example", True),
        ("a-b.c", True),
        ("xn--bcher-kva.example", True),
        ("net", False),
        ("-a.example", False),
        ("a..example", False),
        ("$myhostname", False),
        ("a" * 64 + ".example", False),
    ],
)
def test_is_domain(name, ok):
    assert is_domain(name) is ok


def test_documented_example_is_the_defaults(tmp_path):
    """docs/srsd.example.toml loads and states every default truthfully."""
    import dataclasses
    import tomllib
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "docs" / "srsd.example.toml"
    data = tomllib.loads(example.read_text())
    (tmp_path / "s").write_text("x\n")
    data["srs"]["secrets_file"] = str(tmp_path / "s")
    from srsd.config import _SECTIONS

    for section, cls in _SECTIONS.items():  # every key documented
        assert set(data[section]) == {f.name for f in dataclasses.fields(cls)}, section
    loaded = parse_config(data)
    minimal = parse_config({"srs": {"domain": "fwd.example.org", "secrets_file": str(tmp_path / "s")}})
    assert dataclasses.astuple(loaded) == dataclasses.astuple(minimal)


def test_migration_guide_config_is_valid(tmp_path):
    """The whole-host example in docs/migration.md loads, with its files made here."""
    import re
    import tomllib
    from pathlib import Path

    from srsd.mailauth.keys import generate_key

    text = (Path(__file__).resolve().parents[2] / "docs" / "migration.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    data = tomllib.loads(block)
    (tmp_path / "secret").write_text("x\n")
    generate_key(str(tmp_path / "s.private"), "rsa-sha256", 2048)
    data["srs"]["secrets_file"] = str(tmp_path / "secret")
    data["dkim"]["key_file"] = str(tmp_path / "s.private")
    config = parse_config(data)
    assert config.spf.aware and config.listen.milter and config.policy.mail_from_reject == "fail"


# -- what each command needs (srsd.config.Needs) ----------------------------------


def test_needs_nothing_reads_no_file_and_requires_no_key(tmp_path):
    from srsd.config import Needs

    data = {
        "srs": {"secrets_file": str(tmp_path / "missing"), "local_domains_file": str(tmp_path / "missing")},
        "listen": {"tcp_forward": "", "tcp_reverse": "", "socketmap": ""},
        "dkim": {"selector": "s1", "key_file": str(tmp_path / "missing.private"), "arc": False},
    }
    config = parse_config(data, needs=Needs.NOTHING)
    assert config.secrets == () and config.srs.domain == ""
    for needs, key in [
        (Needs.SRS_DOMAIN, "srs.domain"),
        (Needs.SECRETS, "srs.secrets_file"),
        (Needs.LISTEN, "listen"),
        (Needs.DKIM_KEY, "dkim.key_file"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config(data, needs=needs)
        assert str(info.value).startswith(key + ":"), (needs, info.value)


def test_needs_still_checks_every_key_present(tmp_path):
    from srsd.config import Needs

    with pytest.raises(ConfigError, match="^srs.separator:"):
        parse_config({"srs": {"separator": "/"}}, needs=Needs.NOTHING)
    with pytest.raises(ConfigError, match="^spf.egress_ips:"):
        parse_config({"spf": {"aware": True}}, needs=Needs.NOTHING)


def test_default_config_without_secrets_creates_no_state(tmp_path, monkeypatch):
    from srsd.config import Needs

    monkeypatch.setenv("SRSD_STATE_DIR", str(tmp_path / "state"))
    assert default_config(Needs.NOTHING).secrets == ()
    assert not (tmp_path / "state").exists()


# -- files holding secrets: modes (warnings, see docs/operations.md) ---------------


@pytest.mark.parametrize(
    ("mode", "warned"),
    [
        (0o600, None),
        (0o400, None),
        (0o640, None),  # group read, and this process runs in the file's group
        (0o644, "readable or writable by every user"),
        (0o602, "readable or writable by every user"),
        (0o620, "writable by its group"),
    ],
)
def test_secrets_file_mode_warnings(secrets, mode, warned):
    os.chmod(secrets, mode)
    warnings = [w for w in parse_config(cfg(secrets)).warnings if w.startswith("srs.secrets_file:")]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0] and f"mode {mode:04o}" in warnings[0], warnings


def test_secrets_file_readable_by_a_foreign_group_warns(secrets):
    foreign = next(g for g in range(60000, 60100) if g not in os.getgroups() and g != os.getegid())
    os.chown(secrets, -1, foreign)
    os.chmod(secrets, 0o640)
    (warning,) = [w for w in parse_config(cfg(secrets)).warnings if w.startswith("srs.secrets_file:")]
    assert f"readable by group {foreign}" in warning


def test_dkim_key_mode_warns_too(tmp_path, secrets):
    from srsd.mailauth.keys import generate_key

    key = tmp_path / "s1.private"
    generate_key(str(key), "rsa-sha256", 2048)
    data = {**cfg(secrets), "dkim": {"selector": "s1", "key_file": str(key)}}
    assert not [w for w in parse_config(data).warnings if w.startswith("dkim.key_file:")]
    key.chmod(0o644)
    (warning,) = [w for w in parse_config(data).warnings if w.startswith("dkim.key_file:")]
    assert "can sign mail as your domain" in warning


@pytest.mark.parametrize(
    ("store", "key"),
    [
        ({"backend": "memcached"}, "store.backend"),
        ({"max_local_part": 29}, "store.max_local_part"),  # an alias itself is 30 octets
        ({"max_local_part": 513}, "store.max_local_part"),
        ({"max_new_per_day": 0}, "store.max_new_per_day"),
        ({"timeout": 0}, "store.timeout"),
        ({"threads": 0}, "store.threads"),
        ({"redis_port": 70000}, "store.redis_port"),
        ({"redis_db": -1}, "store.redis_db"),
        ({"redis_tls": True, "redis_unix_socket": "/run/redis.sock"}, "store.redis_tls"),
        ({"redis_tls_ca_file": "/etc/hostname"}, "store.redis_tls_ca_file"),
        ({"redis_tls": True, "redis_tls_ca_file": "/nonexistent/ca.pem"}, "store.redis_tls_ca_file"),
        ({"redis_tls": True, "redis_tls_cert_file": "/etc/hostname"}, "store.redis_tls_key_file"),
        ({"redis_password_file": "/nonexistent/pw"}, "store.redis_password_file"),
        ({"redis_host": 1}, "store.redis_host"),
        ({"sqlite": "x"}, "store.sqlite"),
    ],
)
def test_store_errors_name_the_key(secrets, store, key):
    with pytest.raises(ConfigError) as info:
        parse_config({**cfg(secrets), "store": store})
    assert str(info.value).startswith(key + ":"), info.value


def test_store_defaults_and_password(secrets, tmp_path, monkeypatch):
    monkeypatch.setenv("SRSD_STATE_DIR", str(tmp_path / "state"))
    c = parse_config(cfg(secrets))
    assert (c.store.backend, c.store.max_local_part) == ("sqlite", 64)
    assert c.store.sqlite_path == str(tmp_path / "state" / "aliases.sqlite")
    assert not (tmp_path / "state").exists()  # validating creates nothing
    (tmp_path / "pw").write_text("p4ss word\nignored\n")
    c = parse_config({**cfg(secrets), "store": {"backend": "redis", "redis_password_file": str(tmp_path / "pw")}})
    assert c.store_password == "p4ss word"
    assert "p4ss" not in repr(c)
    # A longer hash makes the alias longer: the floor follows srs.hash_length.
    with pytest.raises(ConfigError, match=r"^store.max_local_part: must be 34\.\.512"):
        parse_config({**cfg(secrets, hash_length=8), "store": {"max_local_part": 33}})


@pytest.mark.parametrize("workers", [-1, 65, "2"])
def test_daemon_workers_range(secrets, workers):
    with pytest.raises(ConfigError, match="^daemon.workers"):
        parse_config({**cfg(secrets), "daemon": {"workers": workers}})


def test_daemon_workers_default_leaves_the_count_to_srsd_serve(secrets):
    assert parse_config(cfg(secrets)).daemon.workers == 0
    assert parse_config({**cfg(secrets), "daemon": {"workers": 3}}).daemon.workers == 3


@pytest.mark.parametrize("processes", [-1, 65, "2"])
def test_dkim_processes_is_checked(secrets, processes):
    with pytest.raises(ConfigError, match="dkim.processes"):
        parse_config({**cfg(secrets), "dkim": {"processes": processes}})


def test_dkim_processes_default_and_zero(secrets):
    assert parse_config(cfg(secrets)).dkim.processes == 2  # the jobs in two processes of their own
    assert parse_config({**cfg(secrets), "dkim": {"processes": 0}}).dkim.processes == 0  # the thread pool


@pytest.mark.parametrize(
    ("daemon", "milter", "warned"),
    [
        ({"workers": 4}, "", True),  # a config from before policy_processes
        ({"workers": 4}, "tcp:10004:interface=127.0.0.1", False),  # the workers serve the milter
        ({"workers": 4, "policy_processes": 0}, "", False),  # ... or the policy endpoint
        ({"workers": 4, "lookup_processes": 0}, "", False),  # ... or the lookups
        ({"workers": 1}, "", False),
    ],
)
def test_workers_with_nothing_to_serve_are_warned_of(secrets, daemon, milter, warned):
    data = cfg(secrets) | {"daemon": daemon, "listen": {"policy": "tcp:10005:interface=127.0.0.1", "milter": milter}}
    found = [w for w in parse_config(data).warnings if w.startswith("daemon.workers:")]
    assert bool(found) == warned, found
