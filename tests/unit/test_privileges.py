"""Who srsd runs as (srsd.privileges.target_account), decided for a given euid."""

import os
import pwd

import pytest

from srsd.config import ConfigError, DaemonSettings
from srsd.privileges import DEFAULT_USER, run_as_warnings, target_account

NOBODY = pwd.getpwnam("nobody")


def has_default_user() -> bool:
    try:
        pwd.getpwnam(DEFAULT_USER)
        return True
    except KeyError:
        return False


def test_named_user_started_as_root():
    account = target_account(DaemonSettings(user="nobody"), euid=0)
    assert (account.name, account.uid, account.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert account.groups[0] == NOBODY.pw_gid
    assert run_as_warnings(DaemonSettings(user="nobody"), account, euid=0) == []


def test_already_that_user_changes_nothing():
    assert target_account(DaemonSettings(user="nobody"), euid=NOBODY.pw_uid) is None
    assert target_account(DaemonSettings(user="root"), euid=0) is None
    assert run_as_warnings(DaemonSettings(user="root"), None, euid=0) == []  # root on purpose


def test_no_user_not_root_stays():
    assert target_account(DaemonSettings(), euid=NOBODY.pw_uid) is None
    assert run_as_warnings(DaemonSettings(), None, euid=NOBODY.pw_uid) == []


def test_no_user_as_root_takes_srsd_if_it_exists():
    account = target_account(DaemonSettings(), euid=0)
    if has_default_user():
        assert account is not None and account.name == DEFAULT_USER
    else:
        assert account is None
        (warning,) = run_as_warnings(DaemonSettings(), None, euid=0)
        assert warning.startswith("daemon.user: started as root and no user 'srsd' exists")


@pytest.mark.parametrize(
    ("settings", "euid", "message"),
    [
        (DaemonSettings(user="no-such-user-srsd"), 0, "daemon.user: no such user"),
        (DaemonSettings(user="nobody", group="no-such-group-srsd"), 0, "daemon.group: no such group"),
        (DaemonSettings(user="root"), NOBODY.pw_uid, "daemon.user: srsd runs as nobody"),
    ],
)
def test_errors_name_the_key(settings, euid, message):
    with pytest.raises(ConfigError, match="^" + message):
        target_account(settings, euid=euid)


def test_group_without_user_is_refused(tmp_path):
    from srsd.config import parse_config

    (tmp_path / "s").write_text("x\n")
    os.chmod(tmp_path / "s", 0o600)
    with pytest.raises(ConfigError, match="^daemon.group: needs daemon.user"):
        parse_config({"srs": {"domain": "fwd.example", "secrets_file": str(tmp_path / "s")}, "daemon": {"group": "x"}})
