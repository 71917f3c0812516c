"""Each ``srsd`` command accepts the smallest configuration that makes sense for it
(srsd.config.Needs): ``spf`` needs only [dns] and [spf], ``forward``/``reverse`` only
[srs], ``dns-records`` only the SRS domain; ``serve`` and ``check-config`` keep
validating everything. Keys present are checked whatever the command."""

from __future__ import annotations

import re

import pytest

from tests.srsd_daemon import render_config, run_cli

DISABLED = {"tcp_forward": "", "tcp_reverse": "", "socketmap": "", "policy": "", "milter": ""}


def write(tmp_path, sections, name="srsd.toml"):
    path = tmp_path / name
    path.write_text(render_config(sections))
    return str(path)


@pytest.fixture
def spf_only(tmp_path, dns_server):
    dns_server.add("orig.example", {"TXT": "v=spf1 ip4:192.0.2.1 -all"})
    return write(tmp_path, {"dns": {"nameservers": [dns_server.address], "timeout": 2.0}, "spf": {"check_budget": 5}})


def test_spf_needs_no_srs_section(spf_only):
    passed = run_cli("spf", "192.0.2.1", "alice@orig.example", "-c", spf_only, check=True)
    assert passed.stdout.splitlines()[0] == "pass", passed.stdout
    failed = run_cli("spf", "192.0.2.9", "alice@orig.example", "-c", spf_only, check=True)
    assert failed.stdout.splitlines()[0] == "fail", failed.stdout
    assert "Received-SPF: Fail (" in failed.stdout


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_serve_and_check_config_still_need_everything(spf_only, command):
    done = run_cli(command, "-c", spf_only)
    assert done.returncode == 1
    assert "srs.domain: required" in done.stderr


def test_forward_and_reverse_with_every_endpoint_disabled(tmp_path):
    (tmp_path / "secrets").write_text("s3cret\n")
    (tmp_path / "secrets").chmod(0o600)
    config = write(
        tmp_path, {"srs": {"domain": "fwd.example", "secrets_file": str(tmp_path / "secrets")}, "listen": DISABLED}
    )
    srs0 = run_cli("forward", "alice@orig.example", "-c", config, check=True).stdout.strip()
    assert re.fullmatch(r"SRS0=[^=]{4}=[A-Z2-7]{2}=orig\.example=alice@fwd\.example", srs0), srs0
    assert run_cli("reverse", srs0, "-c", config, check=True).stdout.strip() == "alice@orig.example"
    refused = run_cli("check-config", "-c", config)
    assert refused.returncode == 1 and "listen: every endpoint is disabled" in refused.stderr


def test_forward_still_needs_the_secret(tmp_path):
    config = write(tmp_path, {"srs": {"domain": "fwd.example"}, "listen": DISABLED})
    done = run_cli("forward", "alice@orig.example", "-c", config)
    assert done.returncode == 1 and "srs.secrets_file: required" in done.stderr


def test_dns_records_needs_only_the_domain(tmp_path):
    config = write(tmp_path, {"srs": {"domain": "fwd.example"}, "spf": {"egress_ips": ["192.0.2.25"]}})
    out = run_cli("dns-records", "-c", config, check=True).stdout
    assert 'fwd.example. IN TXT "v=spf1 ip4:192.0.2.25 -all"' in out
    # The keys are what dns-records prints records for: an unreadable one is named, exit 1.
    broken = write(
        tmp_path,
        {"srs": {"domain": "fwd.example"}, "dkim": {"selector": "s1", "key_file": str(tmp_path / "missing")}},
        "broken.toml",
    )
    done = run_cli("dns-records", "-c", broken)
    assert done.returncode == 1 and "dkim.key_file:" in done.stderr and "missing" in done.stderr


def test_dkim_keygen_reads_no_configuration(tmp_path):
    done = run_cli("dkim-keygen", "--domain", "fwd.example", "--selector", "s1", "--out", str(tmp_path / "k"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("s1._domainkey.fwd.example. IN TXT")


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"srs": {"hash_length": 99}}, "srs.hash_length"),
        ({"srs": {"domain": "not a domain"}}, "srs.domain"),
        ({"listen": {"tcp_forward": 5}}, "listen.tcp_forward"),
        ({"daemon": {"colour": "blue"}}, "daemon.colour"),
    ],
)
def test_keys_present_are_checked_by_every_command(spf_only, tmp_path, sections, key):
    config = write(tmp_path, {**sections, "dns": {"nameservers": ["127.0.0.1:1"]}}, "bad.toml")
    done = run_cli("spf", "192.0.2.1", "alice@orig.example", "-c", config)
    assert done.returncode == 1
    assert f"configuration error: {key}:" in done.stderr


def test_loose_secrets_file_is_a_warning_at_start_reload_and_check_config(srsd_factory):
    daemon = srsd_factory(start=False)
    daemon.secrets_path.chmod(0o644)
    daemon.start()
    warning = "warn: srs.secrets_file: " + str(daemon.secrets_path) + " is readable or writable by every user"
    assert daemon.wait_for_log(warning)
    daemon.reload()
    assert daemon.wait_for_log(warning, count=2)
    checked = daemon.cli("check-config")
    assert checked.returncode == 0, checked.stderr
    assert "srsd: warning: srs.secrets_file:" in checked.stderr and "(mode 0644)" in checked.stderr
    assert "keeps the user it is started as" in checked.stdout
    daemon.secrets_path.chmod(0o600)
    daemon.reload()
    assert daemon.log_text().count(warning) == 2  # fixed: no warning on this reload
