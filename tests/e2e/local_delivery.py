"""Local mailboxes for the end-to-end tests: Unix accounts for local(8), mbox files.

local(8) delivers to a mailbox and reads ``.forward`` only for a recipient that is a
real account (getpwnam), so :class:`LocalAccounts` creates system accounts with unique
names (``useradd --system``), each with its home in the test's directory, and removes
them again (``userdel``). Nothing else in /etc/passwd is touched.

Mailboxes are mbox files (local(8) ``home_mailbox = Mailbox``; virtual(8) maps to a
file): :func:`wait_for_mail` polls one for a marker with a deadline.
"""

from __future__ import annotations

import email.message
import email.policy
import mailbox
import os
import pwd
import secrets
import subprocess
import time
from pathlib import Path

from .postfix_instance import find_tool

#: useradd/userdel retry this long when another process holds /etc/passwd's lock
_LOCK_RETRY_SECONDS = 10.0


def _run_account_tool(*argv: str) -> None:
    deadline = time.monotonic() + _LOCK_RETRY_SECONDS
    while True:
        result = subprocess.run([find_tool(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=30)
        if result.returncode == 0:
            return
        # "cannot lock /etc/passwd; try again later" (exit 1 or 10): another process edits it
        if "lock" not in result.stderr or time.monotonic() > deadline:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        time.sleep(0.2)


class LocalAccounts:
    """System accounts for local(8), homes below *root*; ``remove()`` deletes them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []
        self.suffix = secrets.token_hex(3)

    def add(self, role: str, forward: str | None = None) -> str:
        """A new account ``srsd<role><hex>`` (home ``root/NAME``, owned by it), with a
        ``.forward`` of *forward* if given (``{name}`` in it: the account's name, as in
        ``\\{name}, elsewhere@remote.example``). Returns the account name."""
        name = f"srsd{role}{self.suffix}"
        home = self.root / name
        home.mkdir(parents=True)
        _run_account_tool(
            "useradd", "--system", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
            "--user-group", name,
        )  # fmt: skip
        self.names.append(name)
        account = pwd.getpwnam(name)
        os.chown(home, account.pw_uid, account.pw_gid)
        home.chmod(0o755)
        if forward is not None:
            dot_forward = home / ".forward"
            dot_forward.write_text(forward.format(name=name))
            os.chown(dot_forward, account.pw_uid, account.pw_gid)  # local(8) insists on the owner
            dot_forward.chmod(0o644)
        return name

    def uid_gid(self, name: str) -> tuple[int, int]:
        account = pwd.getpwnam(name)
        return account.pw_uid, account.pw_gid

    def home(self, name: str) -> Path:
        return Path(pwd.getpwnam(name).pw_dir)

    def remove(self) -> None:
        for name in reversed(self.names):
            _run_account_tool("userdel", name)
        self.names.clear()


def messages(path: Path) -> list[email.message.EmailMessage]:
    """The messages in the mbox file *path* (none when it does not exist yet)."""
    if not path.exists():
        return []
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        return [
            email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)  # type: ignore[misc]
            for key in box.keys()
        ]
    finally:
        box.close()


def matching(path: Path, marker: str) -> list[email.message.EmailMessage]:
    """The messages in *path* whose Subject is *marker*."""
    return [m for m in messages(path) if m.get("Subject") == marker]


def wait_for_mail(path: Path, marker: str, timeout: float = 15.0) -> email.message.EmailMessage:
    """The first message in mbox *path* with Subject *marker*; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = matching(path, marker)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            subjects = [m.get("Subject") for m in messages(path)]
            raise AssertionError(f"no message {marker!r} in {path} after {timeout} s; it holds {subjects}")
        time.sleep(0.05)
