"""Busy processes beside a bench: a loaded machine on demand.

    with Busy(1): ...   # one process spinning on a core while the bench runs

The issue asks for results that hold on a busy machine, not only on a quiet one. Each
spinner is a Python loop at the default priority (the scheduler shares the cores between
it and both sides of the bench alike), stopped when the block ends, and by SIGTERM if the
bench itself dies (PR_SET_PDEATHSIG, as bench/nsd_server.py's NSD).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from nsd_server import _stop_with_parent

__all__ = ["Busy"]


class Busy:
    """*count* spinning processes for the life of the ``with`` block (0: none)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> Busy:
        for _ in range(self.count):
            self.processes.append(
                subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_stop_with_parent)
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)
        self.processes.clear()
