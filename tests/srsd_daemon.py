"""Run ``srsd serve`` as a subprocess on free loopback ports, and its CLI.

The one harness of tests/daemon and tests/e2e: :class:`SrsdDaemon` writes a config
and a secrets file into its own directory, starts ``srsd serve`` by command, waits for
READY_MARKER (retrying on a port race), reloads on SIGHUP and stops its process by PID
(SIGTERM, then SIGKILL). Every process is started here and stopped by its PID; nothing
else is touched.

The command defaults to ``python -m srsd`` from this checkout; set SRSD_E2E_COMMAND
(split like a shell would) to test an installed ``srsd``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.lookup_clients import IO_TIMEOUT, SocketmapClient, TcpTableClient

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the endpoints with a default port: left out of [listen], they would be enabled
LOOKUP_ENDPOINTS = ("tcp_forward", "tcp_reverse", "socketmap")
ALL_ENDPOINTS = (*LOOKUP_ENDPOINTS, "policy", "milter")
READY_MARKER = "srsd ready"
RELOADED_MARKER = " reloaded "
RELOAD_REFUSED_MARKER = "reload refused"
SRS_DOMAIN = "fwd.example"
LOCAL_DOMAINS = ["local.example"]
START_TIMEOUT = 20.0

#: a plain SRS0 rewrite of ``LOCAL@DOMAIN`` at the test SRS domain
_SRS0 = r"SRS0=[A-Za-z0-9+/_-]{4}=[A-Z2-7]{2}="


def srs0_pattern(address: str, srs_domain: str = SRS_DOMAIN) -> re.Pattern[str]:
    local, _, domain = address.rpartition("@")
    return re.compile(rf"^{_SRS0}{re.escape(domain)}={re.escape(local)}@{re.escape(srs_domain)}$")


def srsd_command() -> list[str]:
    override = os.environ.get("SRSD_E2E_COMMAND")
    return shlex.split(override) if override else [sys.executable, "-m", "srsd"]


def environment() -> dict[str, str]:
    """os.environ with this checkout first on PYTHONPATH, unbuffered output and no
    JOURNAL_STREAM (srsd would log to the journal instead of stderr)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("JOURNAL_STREAM", None)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (starts retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tcp_endpoint(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def accepts(family: int, address: Any, timeout: float) -> bool:
    """Whether a stream socket at *address* accepts a connection within *timeout* s."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            try:
                sock.connect(address)
                return True
            except OSError:
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def wait_for_port(port: int, timeout: float) -> bool:
    return accepts(socket.AF_INET, ("127.0.0.1", port), timeout)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{key} = {toml_value(v)}" for key, v in value.items()) + " }"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # strings and floats are written the same in TOML


def render_config(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        out.append("")
    return "\n".join(out)


def run_cli(
    *args: str, timeout: float = 30, cwd: Path = REPO_ROOT, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``srsd ARGS...`` (a finished process: nothing is left running); *check*: assert
    that it exited 0."""
    done = subprocess.run(
        [*srsd_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment(),
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert done.returncode == 0, f"srsd {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def terminate(process: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM our own *process* (if it still runs), SIGKILL after *grace* s; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


class SrsdError(AssertionError):
    pass


class SrsdDaemon:
    """One ``srsd serve`` with its own config, secrets file and log in *workdir*.

    :param srs: keys of ``[srs]`` on top of the test defaults (SRS_DOMAIN, LOCAL_DOMAINS).
    :param endpoints: ``[listen]`` keys given a free loopback TCP port each (picked
        again on every start attempt); ``ports`` maps them to it.
    :param listen: ``[listen]`` keys with a fixed endpoint string (``tcp:PORT:...``,
        ``unix:PATH:...``), or None for a free TCP port; they win over *endpoints*.
        Every other endpoint is disabled.
    :param sections: further config sections (``limits``, ``log``, ``dns``, ...).
    :param probe: after READY_MARKER, every endpoint must accept a connection.
    :param wrapper: a command that execs ``srsd serve ...`` (its arguments follow), e.g.
        one that hands over listening sockets as systemd does; *pass_fds* stay open for it.
    :param open_files: srsd's soft RLIMIT_NOFILE when it starts (a login shell's 1024,
        say); None: this process's own.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        srs: dict[str, Any] | None = None,
        secrets_lines: list[str] | None = None,
        endpoints: Iterable[str] = LOOKUP_ENDPOINTS,
        listen: dict[str, str | None] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
        workers: int | None = 1,
        probe: bool = False,
        wrapper: Iterable[str] = (),
        pass_fds: Iterable[int] = (),
        open_files: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "srsd.toml"
        self.secrets_path = workdir / "secrets"
        self.log_path = workdir / "srsd.log"
        self.srs = {"domain": SRS_DOMAIN, "local_domains": LOCAL_DOMAINS} | (srs or {})
        self.listen_spec: dict[str, str | None] = dict.fromkeys(endpoints) | (listen or {})
        self.sections = sections or {}
        self.workers = workers
        self.probe = probe
        self.wrapper = list(wrapper)
        self.pass_fds = tuple(pass_fds)
        self.open_files = open_files
        self.endpoints: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.unix_paths: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._stopped = False
        self.write_secrets(secrets_lines or [secrets.token_urlsafe(32)])

    # -- files ------------------------------------------------------------------

    def write_secrets(self, lines: list[str]) -> None:
        self.secrets_path.write_text("".join(line + "\n" for line in lines))
        self.secrets_path.chmod(0o600)

    def config_sections(self) -> dict[str, dict[str, Any]]:
        # Endpoints not asked for are disabled: left out, some would take their default
        # (fixed) ports.
        listen = dict.fromkeys(ALL_ENDPOINTS, "") | self.endpoints
        # Run as the test's own user: a host with a "srsd" user would otherwise see a
        # root-started srsd switch to it (srsd.privileges) and lose its test files.
        daemon = {"user": pwd.getpwuid(os.geteuid()).pw_name}
        # The alias store's SQLite file in the workdir, not the state directory (/var/lib/srsd).
        store = {"sqlite_path": str(self.workdir / "aliases.sqlite")} | self.sections.get("store", {})
        return {
            "srs": self.srs | {"secrets_file": str(self.secrets_path)},
            "listen": listen,
            "daemon": daemon,
            **self.sections,
            "store": store,
        }

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else render_config(self.config_sections()))

    def prepare(self) -> None:
        """Pick free ports for the endpoints without a fixed one and write the config."""
        self.endpoints, self.ports, self.unix_paths = {}, {}, {}
        for name, spec in self.listen_spec.items():
            if spec is None:
                spec = tcp_endpoint(free_port())
            if spec.startswith("tcp:"):
                self.ports[name] = int(spec.split(":")[1])
            elif spec.startswith("unix:"):
                self.unix_paths[name] = spec.split(":")[1]
            self.endpoints[name] = spec
        self.write_config()

    # -- life cycle ---------------------------------------------------------------

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start ``srsd serve`` without waiting for anything."""
        args = [*self.wrapper, *srsd_command(), "serve", "-c", str(self.config_path)]
        if self.workers is not None:  # None: srsd's own default ([daemon] workers, srsd.workers.default_workers)
            args += ["--workers", str(self.workers)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*args, *extra],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                env=environment(),
                pass_fds=self.pass_fds,
                preexec_fn=None if self.open_files is None else self._limit_open_files,
            )
        self.returncode, self._stopped = None, False
        return self.process

    def _limit_open_files(self) -> None:  # in the child, before exec
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 3) -> SrsdDaemon:
        """Write the config, start, wait for READY_MARKER (and with ``probe`` for every
        endpoint to accept); on a port race, retry with other free ports."""
        free_ports = None in self.listen_spec.values()
        for attempt in range(1, attempts + 1):
            self.prepare()
            self.log_path.write_bytes(b"")
            self.spawn()
            if self.wait_for_log(READY_MARKER, timeout=timeout, fail_on_exit=False):
                self._probe()
                return self
            exited = self.process is not None and self.process.poll() is not None
            self.stop()
            if free_ports and "address already in use" in self.log_text().lower() and attempt < attempts:
                continue
            how = (
                f"exited with code {self.returncode}"
                if exited
                else f"did not log {READY_MARKER!r} within {timeout:.0f} s"
            )
            raise SrsdError(f"srsd {how} (attempt {attempt}/{attempts})\n{self.diagnostics()}")
        raise AssertionError("unreachable")

    def _probe(self) -> None:
        if not self.probe:
            return
        silent = [name for name in self.endpoints if not accepts(*self.address(name), timeout=5)]
        if silent:
            raise SrsdError(
                f"srsd logged {READY_MARKER!r} but does not accept connections on {silent}\n{self.diagnostics()}"
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def assert_running(self) -> None:
        if not self.running():
            raise SrsdError(f"srsd is not running\n{self.diagnostics()}")

    def signal(self, signum: int) -> None:
        self.assert_running()
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float) -> int | None:
        """Exit status within *timeout* s, or None when still running."""
        assert self.process is not None
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self) -> int | None:
        """SIGTERM our process by PID, SIGKILL after 10 s; returns its exit code, or None
        when there was nothing to stop (never started, already stopped or killed)."""
        process = self.process
        if process is None or self._stopped:
            return None
        terminate(process)
        self.returncode, self._stopped = process.returncode, True
        return self.returncode

    def kill(self) -> None:
        """SIGKILL our own process (by PID): a crash, no goodbye to anyone. Reaped, so
        its stale unix-socket lock is seen as stale by the next start."""
        self.signal(signal.SIGKILL)
        self.wait_exit(10)
        self._stopped = True

    def reload(self, sections: dict[str, dict[str, Any]] | None = None, timeout: float = 10.0) -> None:
        """Rewrite the config (with new extra *sections* if given; ports unchanged),
        SIGHUP, and wait until srsd logs that the new configuration is in force."""
        self.assert_running()
        text = self.log_text()
        before, refused = text.count(RELOADED_MARKER), text.count(RELOAD_REFUSED_MARKER)
        if sections is not None:
            self.sections = sections
        self.write_config()
        self.signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if text.count(RELOADED_MARKER) > before:
                return
            if text.count(RELOAD_REFUSED_MARKER) > refused or not self.running():
                break
            time.sleep(0.02)
        raise SrsdError(f"srsd did not reload the new configuration\n{self.diagnostics()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``srsd ARGS... -c CONFIG``, e.g. cli("reverse", address)."""
        return run_cli(*args, "-c", str(self.config_path), cwd=self.workdir)

    # -- the log ------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(
        self, marker: str | re.Pattern[str], *, count: int = 1, timeout: float = 10.0, fail_on_exit: bool = True
    ) -> bool:
        """Wait until *marker* (substring or regex) occurs *count* times in the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            found = len(marker.findall(text)) if isinstance(marker, re.Pattern) else text.count(marker)
            if found >= count:
                return True
            if self.process is not None and self.process.poll() is not None:
                if fail_on_exit:
                    raise SrsdError(f"srsd exited while waiting for {marker!r}\n{self.diagnostics()}")
                return False
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def diagnostics(self, lines: int = 120) -> str:
        if self.process is None:
            state = "never started"
        elif self.process.poll() is None:
            state = f"running, pid {self.process.pid}"
        else:
            state = f"pid {self.process.pid} exited with code {self.process.returncode}"
        tail = self.log_text().splitlines()[-lines:]
        config = self.config_path.read_text() if self.config_path.exists() else "(none)\n"
        return (
            f"--- srsd ({' '.join(srsd_command())}): {state}; endpoints {self.endpoints} ---\n"
            f"--- {self.config_path} ---\n{config}"
            f"--- last {len(tail)} lines of srsd output ---\n" + "\n".join(tail)
        )

    # -- clients ------------------------------------------------------------------

    def address(self, name: str) -> tuple[int, Any]:
        """(socket family, address) of endpoint *name*."""
        if name in self.unix_paths:
            return socket.AF_UNIX, self.unix_paths[name]
        return socket.AF_INET, ("127.0.0.1", self.ports[name])

    def connect(self, name: str) -> socket.socket:
        family, addr = self.address(name)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        sock.connect(addr)
        return sock

    def tcp_table(self, map_name: str) -> TcpTableClient:
        return TcpTableClient(self.connect(f"tcp_{map_name}"))

    def socketmap(self) -> SocketmapClient:
        return SocketmapClient(self.connect("socketmap"))

    def lookup(self, protocol: str, map_name: str, key: str) -> tuple[str, str]:
        """One lookup on a new connection: (status, text), status found/notfound/temp/perm."""
        client = self.tcp_table(map_name) if protocol == "tcp_table" else self.socketmap()
        with client:
            return client.lookup(map_name, key)


@contextlib.contextmanager
def serving(daemon: SrsdDaemon) -> Iterator[SrsdDaemon]:
    """*daemon* started for the block, stopped after it: it must exit 0 on SIGTERM."""
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
    assert code == 0, f"srsd exited {code} on SIGTERM\n{daemon.diagnostics()}"
