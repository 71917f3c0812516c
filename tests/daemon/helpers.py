"""Run ``srsd serve`` as a subprocess on free loopback ports, and talk to it.

Used by the tests in this directory through the fixtures in ``conftest.py``.
Every process is started here and stopped by its PID; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
ENDPOINTS = ("tcp_forward", "tcp_reverse", "socketmap")
READY_MARKER = "srsd ready"
SRS_DOMAIN = "fwd.example"
LOCAL_DOMAINS = ["local.example"]
START_TIMEOUT = 15.0
IO_TIMEOUT = 5.0

#: a plain SRS0 rewrite of ``LOCAL@DOMAIN`` at the test SRS domain
_SRS0 = r"SRS0=[A-Za-z0-9+/_-]{4}=[A-Z2-7]{2}="


def srs0_pattern(address: str, srs_domain: str = SRS_DOMAIN) -> re.Pattern[str]:
    local, _, domain = address.rpartition("@")
    return re.compile(rf"^{_SRS0}{re.escape(domain)}={re.escape(local)}@{re.escape(srs_domain)}$")


def srsd_command() -> list[str]:
    return [sys.executable, "-m", "srsd"]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("JOURNAL_STREAM", None)
    return env


def free_port() -> int:
    """A loopback port free right now (the daemon start retries on a race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def render_config(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        out.append("")
    return "\n".join(out)


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``srsd ARGS...`` (a finished process: nothing is left running)."""
    return subprocess.run(
        [*srsd_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
    )


class SrsdError(AssertionError):
    pass


class SrsdDaemon:
    """One ``srsd serve`` with its own config, secrets file and log in *workdir*.

    :param listen: endpoint name -> endpoint string; ``None`` values get a free
        TCP port (``tcp:PORT:interface=127.0.0.1``); omitted endpoints too.
    :param srs, limits, log: extra keys of those config sections.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        secrets_lines: list[str] | None = None,
        listen: dict[str, str | None] | None = None,
        srs: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        log: dict[str, Any] | None = None,
        workers: int = 1,
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "srsd.toml"
        self.secrets_path = workdir / "secrets"
        self.log_path = workdir / "srsd.stderr"
        self.listen_spec = dict.fromkeys(ENDPOINTS) | (listen or {})
        self.srs = {"domain": SRS_DOMAIN, "local_domains": LOCAL_DOMAINS} | (srs or {})
        self.limits = limits or {}
        self.log = log or {}
        self.workers = workers
        self.endpoints: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.unix_paths: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.write_secrets(secrets_lines or [secrets.token_urlsafe(24)])

    # -- files ------------------------------------------------------------------

    def write_secrets(self, lines: list[str]) -> None:
        self.secrets_path.write_text("".join(line + "\n" for line in lines))
        self.secrets_path.chmod(0o600)

    def config_sections(self) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = {
            "srs": self.srs | {"secrets_file": str(self.secrets_path)},
            "listen": self.endpoints,
        }
        if self.limits:
            sections["limits"] = self.limits
        if self.log:
            sections["log"] = self.log
        return sections

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else render_config(self.config_sections()))

    def _choose_endpoints(self) -> None:
        self.endpoints, self.ports, self.unix_paths = {}, {}, {}
        for name, spec in self.listen_spec.items():
            if spec is None:
                port = free_port()
                spec = f"tcp:{port}:interface=127.0.0.1"
                self.ports[name] = port
            elif spec.startswith("tcp:"):
                self.ports[name] = int(spec.split(":")[1])
            elif spec.startswith("unix:"):
                self.unix_paths[name] = spec.split(":")[1]
            self.endpoints[name] = spec

    # -- life cycle ---------------------------------------------------------------

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start ``srsd serve`` without waiting for anything."""
        args = [*srsd_command(), "serve", "-c", str(self.config_path)]
        if self.workers != 1:
            args += ["--workers", str(self.workers)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*args, *extra],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO_ROOT,
                env=environment(),
            )
        return self.process

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 3) -> SrsdDaemon:
        """Write the config, start, wait for READY_MARKER; retry on a port race."""
        for attempt in range(1, attempts + 1):
            self._choose_endpoints()
            self.write_config()
            self.log_path.write_bytes(b"")
            self.spawn()
            if self.wait_for_log(READY_MARKER, timeout=timeout, fail_on_exit=False):
                return self
            self.stop()
            if "address already in use" in self.log_text().lower() and attempt < attempts:
                continue
            raise SrsdError(f"srsd did not log {READY_MARKER!r} within {timeout:.0f} s\n{self.diagnostics()}")
        raise AssertionError("unreachable")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.running(), f"srsd is not running\n{self.diagnostics()}"
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
        """SIGTERM our process by PID, SIGKILL after 10 s; returns the exit code."""
        process = self.process
        if process is None:
            return self.returncode
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.returncode = process.returncode
        return self.returncode

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
            f"--- srsd: {state} ---\n--- {self.config_path} ---\n{config}"
            f"--- last {len(tail)} lines of srsd stderr ---\n" + "\n".join(tail)
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


# -- wire clients -------------------------------------------------------------------

_TCP_STATUS = {b"200": "found", b"500": "notfound", b"400": "temp"}
_SM_STATUS = {b"OK": "found", b"NOTFOUND": "notfound", b"TEMP": "temp", b"TIMEOUT": "temp", b"PERM": "perm"}


def tcp_quote(text: str) -> bytes:
    """Postfix's tcp_table key encoding: %XX for whitespace, ``%`` and non-ASCII."""
    return re.sub(rb"[\x00-\x20%\x7f-\xff]", lambda m: b"%%%02X" % m.group()[0], text.encode("utf-8"))


def tcp_unquote(data: bytes) -> bytes:
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes((int(m.group(1), 16),)), data)


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed(f"server closed the connection; unparsed bytes {self.buffer[:200]!r}")
        self.buffer += chunk

    def at_eof(self, timeout: float = IO_TIMEOUT) -> bool:
        """True when the server closed (or reset) the connection within *timeout* s
        and sent nothing more."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        if chunk:
            self.buffer += chunk
            return False
        return True

    def nothing_pending(self, wait: float = 0.2) -> bool:
        """True when no bytes arrive within *wait* s and the connection is open."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return not self.buffer
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        self.buffer += chunk
        return False


class ConnectionClosed(AssertionError):
    pass


class TcpTableClient(_Client):
    def read_raw(self) -> bytes:
        """One reply line including its newline."""
        while b"\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def read(self) -> tuple[str, str]:
        raw = self.read_raw()
        m = re.fullmatch(rb"(200|400|500) (\S*)\n", raw)
        assert m, f"malformed tcp_table reply {raw!r}"
        return _TCP_STATUS[m.group(1)], tcp_unquote(m.group(2)).decode("utf-8", "surrogateescape")

    def request(self, key: str) -> None:
        self.send(b"get " + tcp_quote(key) + b"\n")

    def lookup(self, map_name: str, key: str) -> tuple[str, str]:  # map_name: fixed by the endpoint
        self.request(key)
        return self.read()


class SocketmapClient(_Client):
    def read_raw(self) -> bytes:
        """One reply netstring's payload."""
        while True:
            m = re.match(rb"(\d{1,9}):", self.buffer)
            if m:
                end = m.end() + int(m.group(1))
                if len(self.buffer) > end:
                    assert self.buffer[end : end + 1] == b",", f"netstring without comma: {self.buffer[:200]!r}"
                    payload, self.buffer = self.buffer[m.end() : end], self.buffer[end + 1 :]
                    return payload
            elif self.buffer and not re.fullmatch(rb"\d{1,9}", self.buffer):
                raise AssertionError(f"malformed netstring from server: {self.buffer[:200]!r}")
            self._fill()

    def read(self) -> tuple[str, str]:
        payload = self.read_raw()
        status, sep, text = payload.partition(b" ")
        assert status in _SM_STATUS and sep, f"malformed socketmap reply {payload!r}"
        if status == b"NOTFOUND":
            assert text == b"", f"NOTFOUND with text {payload!r}"
        return _SM_STATUS[status], text.decode("utf-8", "surrogateescape")

    def request(self, map_name: str, key: str) -> None:
        self.send(netstring(f"{map_name} {key}".encode()))

    def lookup(self, map_name: str, key: str) -> tuple[str, str]:
        self.request(map_name, key)
        return self.read()
