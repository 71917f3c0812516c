"""Run `srsd serve` as a subprocess on free loopback ports, and its CLI.

The command defaults to `python -m srsd` from this checkout; set
SRSD_E2E_COMMAND (split like a shell would) to test an installed `srsd`.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from .postfix_instance import REPO_ROOT, free_port, wait_for_port

ENDPOINTS = ("tcp_forward", "tcp_reverse", "socketmap")
ALL_ENDPOINTS = (*ENDPOINTS, "policy")
READY_MARKER = "srsd ready"
RELOADED_MARKER = " reloaded "
RELOAD_REFUSED_MARKER = "reload refused"


def srsd_command() -> list[str]:
    override = os.environ.get("SRSD_E2E_COMMAND")
    return shlex.split(override) if override else [sys.executable, "-m", "srsd"]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class SrsdError(AssertionError):
    pass


class SrsdProcess:
    """`srsd serve` with a generated config and secrets file in `workdir`.

    `endpoints` are the `[listen]` keys given a free loopback TCP port each
    (`ports` maps them to it; the others are disabled); `extra_config` is TOML appended after `[listen]`
    (further sections: `[dns]`, `[spf]`, `[policy]`, ...). `reload()` rewrites the
    config with new extra sections, same ports, and sends SIGHUP.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        domain: str,
        local_domains: list[str],
        endpoints: tuple[str, ...] = ENDPOINTS,
        extra_config: str = "",
    ) -> None:
        self.workdir = workdir
        self.domain = domain
        self.local_domains = local_domains
        self.endpoints = endpoints
        self.extra_config = extra_config
        self.config_path = workdir / "srsd.toml"
        self.secrets_path = workdir / "secrets"
        self.log_path = workdir / "srsd.log"
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.last_returncode: int | None = None
        self.secrets_path.write_text(f"{secrets.token_urlsafe(32)}\n")
        self.secrets_path.chmod(0o600)

    def _write_config(self) -> None:
        self.ports = {name: free_port() for name in self.endpoints}
        self._render_config()

    def _render_config(self) -> None:
        # Endpoints not asked for are disabled: left out, they would take their default
        # (fixed) ports.
        listen = "\n".join(
            f"{name} = {json.dumps(f'tcp:{self.ports[name]}:interface=127.0.0.1' if name in self.ports else '')}"
            for name in dict.fromkeys((*self.endpoints, *ALL_ENDPOINTS))
        )
        self.config_path.write_text(
            "[srs]\n"
            f"domain = {json.dumps(self.domain)}\n"
            f"secrets_file = {json.dumps(str(self.secrets_path))}\n"
            f"local_domains = {json.dumps(self.local_domains)}\n"
            "\n[listen]\n"
            f"{listen}\n"
            f"\n{self.extra_config}\n"
        )

    def start(self, timeout: float = 20.0, attempts: int = 3) -> SrsdProcess:
        """Start and wait for READY_MARKER; retry on a port-in-use race."""
        for attempt in range(1, attempts + 1):
            self._write_config()
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [*srsd_command(), "serve", "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=_environment(),
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if READY_MARKER in self.log_text():
                    break
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
            if self.process.poll() is None and READY_MARKER in self.log_text():
                not_listening = [
                    f"{name}={port}" for name, port in self.ports.items() if not wait_for_port(port, timeout=5)
                ]
                if not_listening:
                    raise SrsdError(
                        f"srsd logged {READY_MARKER!r} but does not accept "
                        f"connections on {not_listening}\n{self.diagnostics()}"
                    )
                return self
            exited = self.process.poll() is not None
            self.stop()
            if "address already in use" in self.log_text().lower() and attempt < attempts:
                continue
            how = f"exited with code {self.last_returncode}" if exited else f"was not ready after {timeout:.0f} s"
            raise SrsdError(f"srsd {how} (attempt {attempt}/{attempts})\n{self.diagnostics()}")
        raise AssertionError("unreachable")

    def reload(self, extra_config: str, timeout: float = 10.0) -> None:
        """Replace the extra config sections (ports unchanged), SIGHUP, and wait until
        srsd logs that the new configuration is in force."""
        self.assert_running()
        assert self.process is not None
        text = self.log_text()
        before, refused = text.count(RELOADED_MARKER), text.count(RELOAD_REFUSED_MARKER)
        self.extra_config = extra_config
        self._render_config()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if text.count(RELOADED_MARKER) > before:
                return
            if text.count(RELOAD_REFUSED_MARKER) > refused or self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise SrsdError(f"srsd did not reload the new configuration\n{self.diagnostics()}")

    def assert_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise SrsdError(f"srsd is not running\n{self.diagnostics()}")

    def stop(self) -> int | None:
        """SIGTERM our process (by PID), SIGKILL after 10 s; returns its exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.last_returncode = process.returncode
        return process.returncode

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`srsd ARGS... -c CONFIG`, e.g. cli("reverse", address)."""
        return subprocess.run(
            [*srsd_command(), *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.workdir,
            env=_environment(),
            stdin=subprocess.DEVNULL,
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines: int = 80) -> str:
        if self.process is None:
            state = f"not running (last exit code {self.last_returncode})"
        elif self.process.poll() is None:
            state = f"running, pid {self.process.pid}"
        else:
            state = f"exited with code {self.process.returncode}"
        log = self.log_text().splitlines()[-lines:]
        return (
            f"--- srsd ({' '.join(srsd_command())}): {state}; ports {self.ports} ---\n"
            f"--- config {self.config_path} ---\n{_read(self.config_path)}"
            f"--- last {len(log)} lines of srsd output ---\n" + "\n".join(log)
        )


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return "(missing)\n"
