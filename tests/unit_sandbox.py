"""Run a command under the system call sandbox a systemd unit file asks for, without
systemd as PID 1:

    /usr/bin/python3 tests/unit_sandbox.py systemd/srsd.service -- srsd serve -c FILE

reads the unit's ``SystemCallFilter=`` lines (groups expanded by ``systemd-analyze
syscall-filter``, combined as systemd.exec(5) says: the first line decides allow- or
deny-list, later lines add or remove), ``SystemCallErrorNumber=`` and
``MemoryDenyWriteExecute=`` (systemd 252's own seccomp rules: no mmap that is both
writable and executable, no mprotect/pkey_mprotect to executable, no shmat with SHM_EXEC),
loads them as seccomp filters with libseccomp (Debian's python3-seccomp, hence Debian's
/usr/bin/python3) and execs the command, which keeps them.
"""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys

import seccomp

SHM_EXEC = 0o100000


def unit_settings(path: str) -> tuple[list[str], str, bool]:
    """(SystemCallFilter= values in order, SystemCallErrorNumber=, MemoryDenyWriteExecute=)."""
    filters, error, mdwe = [], "", False
    section = ""
    for line in open(path, encoding="utf-8").read().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            if key == "SystemCallFilter":
                filters.append(value)
            elif key == "SystemCallErrorNumber":
                error = value
            elif key == "MemoryDenyWriteExecute":
                mdwe = value.lower() in ("yes", "true", "1", "on")
    return filters, error, mdwe


def expand(name: str, seen: set[str] | None = None) -> set[str]:
    """A system call or @group, as a set of system call names (groups nest)."""
    if not name.startswith("@"):
        return {name}
    seen = seen or set()
    if name in seen:
        return set()
    seen.add(name)
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    out: set[str] = set()
    for line in listing.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            out |= expand(word, seen)
    return out


def allowed_set(filters: list[str]) -> tuple[bool, set[str]]:
    """(allow-list?, names): the first value decides the kind, later ones add or remove."""
    allow_list = not filters[0].startswith("~")
    names: set[str] = set()
    for value in filters:
        invert = value.startswith("~")
        words = {n for w in value.lstrip("~").split() for n in expand(w)}
        if invert == (not allow_list):  # same kind as the first line: add
            names |= words
        else:
            names -= words
    return allow_list, names


def _add(flt: seccomp.SyscallFilter, action: int, name: str, *args: seccomp.Arg) -> None:
    try:
        flt.add_rule(action, name, *args)
    except (RuntimeError, ValueError, OSError):
        pass  # a name this libseccomp or architecture does not know


def main() -> None:
    unit, command = sys.argv[1], sys.argv[2:]
    if command[:1] == ["--"]:
        command = command[1:]
    filters, error, mdwe = unit_settings(unit)
    deny = seccomp.ERRNO(getattr(errno, error)) if error else seccomp.KILL_PROCESS
    # The memory rules first: the system call filter may not allow seccomp(2) itself.
    if mdwe:
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        refuse = seccomp.ERRNO(errno.EPERM)
        _add(flt, refuse, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        for name in ("mprotect", "pkey_mprotect"):
            _add(flt, refuse, name, seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
        _add(flt, refuse, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
        flt.load()
    if filters:
        allow_list, names = allowed_set(filters)
        flt = seccomp.SyscallFilter(defaction=deny if allow_list else seccomp.ALLOW)
        for name in sorted(names):
            _add(flt, seccomp.ALLOW if allow_list else deny, name)
        flt.load()
    print(f"unit_sandbox: {unit}: filter {' | '.join(filters) or '-'}, errno {error or 'kill'}, "
          f"MemoryDenyWriteExecute={'yes' if mdwe else 'no'}", file=sys.stderr, flush=True)  # fmt: skip
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
