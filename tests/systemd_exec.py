"""Start a program the way systemd starts a socket-activated service (sd_listen_fds(3)):

    python3 -m tests.systemd_exec --fd 7 --fd 9 --names a:b -- srsd serve -c FILE

moves the given inherited descriptors to 3, 4, ... in that order, sets LISTEN_FDS,
LISTEN_FDNAMES and LISTEN_PID (its own pid, which exec keeps), and execs the command.
The caller creates the listening sockets and passes them with ``pass_fds``.
"""

from __future__ import annotations

import argparse
import fcntl
import os

SD_LISTEN_FDS_START = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, action="append", default=[], help="an inherited listening socket")
    parser.add_argument("--names", default="", help="LISTEN_FDNAMES (colon-separated, one per --fd)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    # Out of the way first (above any target), so that moving one never overwrites another.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100 + SD_LISTEN_FDS_START + len(args.fd)) for fd in args.fd]
    for fd in args.fd:
        os.close(fd)
    for index, fd in enumerate(high):
        os.dup2(fd, SD_LISTEN_FDS_START + index)  # inheritable, as systemd leaves them
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(high))
    os.environ["LISTEN_FDNAMES"] = args.names or ":".join("unknown" for _ in high)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
