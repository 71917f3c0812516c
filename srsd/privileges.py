"""Who ``srsd serve`` runs as: started as root, it switches to an unprivileged account
once every endpoint is bound (PostSRSd's ``unprivileged-user``, Postfix's ``mail_owner``).

The decision (:func:`target_account`) is pure over the password and group databases;
:func:`switch_to` is the one place that changes the process's credentials. After the
switch srsd re-reads its configuration as the new user (see :func:`srsd.service.serve`),
so a secrets or key file the user cannot read stops the start with a clear error
instead of breaking the first SIGHUP reload. Policy and reasons: docs/operations.md.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from typing import Any

from srsd.config import ConfigError, DaemonSettings

__all__ = [
    "DEFAULT_USER",
    "Account",
    "target_account",
    "run_as_warnings",
    "process_groups",
    "switch_to",
    "hand_over_state_directory",
    "stranded_sockets",
]

#: the account a root-started srsd switches to when daemon.user is not set and it exists
#: (systemd/srsd.sysusers creates it)
DEFAULT_USER = "srsd"


@dataclass(frozen=True)
class Account:
    """An account to run as: user name, uid, primary gid, every group id (with gid)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"daemon.group: no such group {name!r}") from None


def target_account(settings: DaemonSettings, euid: int | None = None) -> Account | None:
    """The account to switch to after binding, or None to keep running as started.

    * ``daemon.user`` set: that user (and ``daemon.group``, else the user's primary
      group; supplementary groups from the group database, as initgroups(3)); None
      when the process already runs as that uid.
    * not set: ``srsd`` when started as root and that user exists, else None.

    :param euid: the effective uid to decide for (default: this process's).
    :raises ConfigError: naming ``daemon.user`` / ``daemon.group``: no such user or
        group, or a switch that needs root while not running as root.
    """
    euid = os.geteuid() if euid is None else euid
    name = settings.user
    if not name:
        if euid != 0:
            return None
        try:
            entry = pwd.getpwnam(DEFAULT_USER)
        except KeyError:
            return None
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"daemon.user: no such user {name!r}") from None
    gid = _group_id(settings.group) if settings.group else entry.pw_gid
    if entry.pw_uid == euid and (not settings.group or gid == os.getegid()):
        return None
    if euid != 0:
        current = _user_name(euid)
        raise ConfigError(
            f"daemon.user: srsd runs as {current} and only root can switch to {entry.pw_name!r}; "
            f"start it as root or as {entry.pw_name!r}"
        )
    groups = tuple(dict.fromkeys([gid, *os.getgrouplist(entry.pw_name, gid)]))
    return Account(entry.pw_name, entry.pw_uid, gid, groups)


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def run_as_warnings(settings: DaemonSettings, account: Account | None, euid: int | None = None) -> list[str]:
    """A warning when srsd would stay root: started as root, no daemon.user and no
    ``srsd`` user (``daemon.user = "root"`` says so on purpose and draws none)."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0 and account is None and not settings.user:
        return [
            f"daemon.user: started as root and no user {DEFAULT_USER!r} exists, so srsd keeps running "
            "as root; create it (systemd/srsd.sysusers) or set daemon.user"
        ]
    return []


def process_groups() -> frozenset[int]:
    """Every group id this process has (effective and supplementary)."""
    return frozenset([os.getegid(), *os.getgroups()])


def switch_to(account: Account) -> None:
    """Set this process's groups, gid and uid (real, effective and saved) to *account*.

    :raises OSError: a step failed, or root could be regained afterwards; the caller
        must stop: the process may be half switched.
    """
    os.setgroups(list(account.groups))
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    if account.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise OSError(f"switched to {account.name} but could regain root")


def hand_over_state_directory(account: Account) -> None:
    """The embedded default's state directory (its generated secret) stays where root
    made it and becomes *account*'s, as systemd's ``StateDirectory=`` does."""
    from srsd.config import state_directory

    directory = state_directory()
    os.environ["SRSD_STATE_DIR"] = str(directory)  # state_directory() depends on the euid
    for path in (directory, directory / "secrets"):
        if path.exists():
            os.chown(path, account.uid, account.gid)


def stranded_sockets(ports: dict[str, Any]) -> list[tuple[str, str]]:
    """(endpoint, path) of the unix sockets among *ports* (Twisted listening ports) whose
    directory this process cannot write to: it cannot remove them when it stops."""
    out = []
    for name, port in ports.items():
        path = getattr(port.getHost(), "name", None)  # unix sockets only
        if isinstance(path, bytes | str):
            path = os.fsdecode(path)
            if not os.access(os.path.dirname(path) or ".", os.W_OK):
                out.append((name, path))
    return out
