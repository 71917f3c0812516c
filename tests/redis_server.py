"""A private ``redis-server`` (Debian's package) for the tests, on a free loopback port.

Never the system service: each :class:`RedisServer` writes its own redis.conf into its own
directory (data, log, optional unix socket, TLS files), starts ``redis-server`` by command
and stops it by PID (SIGTERM, which saves the data; SIGKILL after 10 s). :meth:`restart`
brings it back on the same port with the same data, as an admin's restart would.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.srsd_daemon import free_port, terminate

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class TLSFiles:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """Write a CA and two certificates it signed into *directory* (``cryptography``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write_key(key: Any, path: Path) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.write_bytes(pem)
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("srsd test CA"))
        .issuer_name(name("srsd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common_name: str, sans: list[x509.GeneralName]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return key, cert

    server_key, server_cert = issue(
        "127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    client_key, client_cert = issue("srsd", [x509.DNSName("srsd.test")])
    files = TLSFiles(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, files.server_key)
    write_key(client_key, files.client_key)
    return files


class RedisServer:
    """One ``redis-server`` process with its own config and data in *workdir*.

    :param password: ``requirepass`` (AUTH), or None.
    :param unix_socket: also listen on this path (``unixsocket``).
    :param tls: serve TLS only (``tls-port``; clients must show a certificate of the CA).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = None,
        unix_socket: Path | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        if not Path(REDIS_SERVER).exists():
            raise AssertionError("redis-server not found: the tests need Debian's redis-server package (.ci/install)")
        self.workdir = workdir
        self.password = password
        self.unix_socket = unix_socket
        self.tls = tls
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "redis.log"

    def _config(self) -> str:
        lines = [
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            f"logfile {self.log_path}",
            "daemonize no",
            "save ''",
            # Every write reaches the disk before its reply: a restart keeps every alias.
            "appendonly yes",
            "appendfsync always",
        ]
        if self.tls is None:
            lines.append(f"port {self.port}")
        else:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca}",
                "tls-auth-clients yes",
            ]
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        if self.unix_socket is not None:
            lines += [f"unixsocket {self.unix_socket}", "unixsocketperm 700"]
        return "\n".join(lines) + "\n"

    def start(self, attempts: int = 3) -> RedisServer:
        """Start on a free port (the same port again after :meth:`stop`)."""
        keep_port = self.port != 0
        for _attempt in range(attempts):
            if not keep_port:
                self.port = free_port()
            conf = self.workdir / "redis.conf"
            conf.write_text(self._config())
            seen = len(self.log_text())
            self.process = subprocess.Popen(
                [REDIS_SERVER, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
            if self._wait_ready(seen):
                return self
            self.stop()
            if keep_port:
                break
        raise AssertionError(f"redis-server did not start\n{self.diagnostics()}")

    def _wait_ready(self, seen: int) -> bool:
        """Whether this start logged readiness (the log before offset *seen* is an earlier run's)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process is not None and self.process.poll() is None:
            if "Ready to accept connections" in self.log_text()[seen:]:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGTERM by PID (Redis writes its data and exits), SIGKILL after 10 s."""
        process, self.process = self.process, None
        if process is not None:
            terminate(process)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **options: Any) -> Any:
        """A redis-py client for this server (password, TLS as configured)."""
        import redis

        kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "password": self.password}
        if self.tls is not None:
            kwargs |= {
                "ssl": True,
                "ssl_ca_certs": str(self.tls.ca),
                "ssl_certfile": str(self.tls.client_cert),
                "ssl_keyfile": str(self.tls.client_key),
            }
        return redis.Redis(**(kwargs | options))

    def store_settings(self) -> dict[str, Any]:
        """``[store]`` keys pointing srsd at this server (the password file is written here)."""
        settings: dict[str, Any] = {"backend": "redis", "redis_host": "127.0.0.1", "redis_port": self.port}
        if self.password is not None:
            path = self.workdir / "password"
            path.write_text(self.password + "\n")
            path.chmod(0o600)
            settings["redis_password_file"] = str(path)
        if self.tls is not None:
            settings |= {
                "redis_tls": True,
                "redis_tls_ca_file": str(self.tls.ca),
                "redis_tls_cert_file": str(self.tls.client_cert),
                "redis_tls_key_file": str(self.tls.client_key),
            }
        return settings

    def accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines: int = 40) -> str:
        state = "running" if self.running() else "stopped"
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- redis-server 127.0.0.1:{self.port} ({state}) in {self.workdir} ---\n{tail}"
