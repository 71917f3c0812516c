"""PostSRSd's configuration -> an equivalent srsd configuration (``srsd import-postsrsd``).

Two formats are read:

* PostSRSd 1.x: the shell variables of ``/etc/default/postsrsd`` (``SRS_DOMAIN``,
  ``SRS_SECRET``, ``SRS_SEPARATOR``, ``SRS_FORWARD_PORT``...), with the defaults of
  Debian's ``postsrsd-systemd-launcher`` for what is not set (SRS_DOMAIN from
  ``postconf -h mydomain``, as the launcher does);
* PostSRSd 2.x: ``postsrsd.conf`` in libconfuse syntax (``domains = {...}``,
  ``secrets-file``, ``socketmap = inet:localhost:10003``...), as documented in its
  ``doc/postsrsd.conf``.

The result keeps PostSRSd's secrets file (srsd reads it as PostSRSd does), domain,
separator, hash lengths and ports, so addresses PostSRSd minted keep reversing and
Postfix's ``main.cf`` does not change. Every PostSRSd option srsd cannot carry over
becomes a comment in the output saying why and what to do instead.

No library parses libconfuse files from Python; its syntax (``name = value``, quoted
strings, ``{a, b}`` lists, ``#``/``//``/``/* */`` comments) is small enough to read here.
TOML is written here too: tomllib only reads, and tomli-w writes no comments; the
output is read back with tomllib and checked by srsd.config before it is returned.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import textwrap
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from srsd.config import ConfigError, Needs, parse_config

__all__ = ["MigrationError", "Imported", "import_postsrsd", "render", "postconf_mydomain"]


class MigrationError(ValueError):
    """PostSRSd settings that cannot be turned into a config; the message names the option."""


@dataclass
class Imported:
    """srsd settings by section (``{"srs": {"domain": ...}}``), a comment per key saying
    where it came from, and notes on what could not be carried over, by section."""

    format: str  # "PostSRSd 1.x" or "PostSRSd 2.x"
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def set(self, section: str, key: str, value: Any, origin: str) -> None:
        self.sections.setdefault(section, {})[key] = value
        self.origins[(section, key)] = origin

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)


def postconf_mydomain() -> str:
    """``postconf -h mydomain``, where PostSRSd 1.x's Debian launcher takes SRS_DOMAIN
    from when it is not set; "" when Postfix is not there."""
    try:
        done = subprocess.run(["postconf", "-h", "mydomain"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def import_postsrsd(text: str, mydomain: Callable[[], str] = postconf_mydomain) -> Imported:
    """Translate PostSRSd settings (either format, told apart by their syntax).

    :param text: the contents of ``/etc/default/postsrsd`` or ``postsrsd.conf``.
    :param mydomain: where an unset SRS_DOMAIN comes from (1.x).
    :raises MigrationError: unparsable text, or no SRS domain to be found.
    """
    if re.search(r"^\s*(export\s+)?[A-Z][A-Z0-9_]*=", text, re.M):
        return _from_v1(_shell_assignments(text), mydomain)
    return _from_v2(_confuse(text))


# -- PostSRSd 1.x: /etc/default/postsrsd ---------------------------------------------

#: Debian's postsrsd-systemd-launcher (and init script) defaults
_V1_DEFAULTS = {
    "SRS_FORWARD_PORT": "10001",
    "SRS_REVERSE_PORT": "10002",
    "SRS_DOMAIN": "",
    "SRS_SECRET": "/etc/postsrsd.secret",
    "SRS_SEPARATOR": "=",
    "SRS_HASHLENGTH": "4",
    "SRS_HASHMIN": "4",
    "SRS_EXTRA_OPTIONS": "",
    "RUN_AS": "postsrsd",
    "SRS_LISTEN_ADDR": "127.0.0.1",
    "CHROOT": "/var/lib/postsrsd",
    "SRS_EXCLUDE_DOMAINS": "",
}


def _shell_assignments(text: str) -> dict[str, str]:
    """``NAME=value`` lines as the shell reads them (quotes, comments); an assignment
    that needs the shell to expand something is refused."""
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not m:
            if line.strip() and not line.lstrip().startswith("#"):
                raise MigrationError(f"line {number}: not a NAME=value assignment: {line.strip()!r}")
            continue
        name, raw = m.groups()
        if "$" in raw or "`" in raw:
            raise MigrationError(f"{name}: {raw.strip()!r} needs the shell to expand it; write the value itself")
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise MigrationError(f"{name}: {exc}") from None
        values[name] = " ".join(words)
    return values


def _tcp(port: str, address: str, option: str) -> str:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MigrationError(f"{option}: {port!r} is not a port number")
    if not address:
        return f"tcp:{port}"
    return f"tcp:{port}:interface={address.replace(':', chr(92) + ':')}"


def _from_v1(values: dict[str, str], mydomain: Callable[[], str]) -> Imported:
    out = Imported("PostSRSd 1.x")
    v = _V1_DEFAULTS | values
    domain = v["SRS_DOMAIN"] or mydomain()
    if not domain:
        raise MigrationError("SRS_DOMAIN: not set, and `postconf -h mydomain` gave nothing; set SRS_DOMAIN")
    origin = "SRS_DOMAIN" if v["SRS_DOMAIN"] else "SRS_DOMAIN unset: postconf -h mydomain, as PostSRSd's launcher"
    out.set("srs", "domain", domain, origin)
    out.set("srs", "secrets_file", v["SRS_SECRET"], "SRS_SECRET: the same file, read as PostSRSd reads it")
    excluded = [d for d in re.split(r"[\s,]+", v["SRS_EXCLUDE_DOMAINS"]) if d]
    out.set("srs", "local_domains", excluded, "SRS_EXCLUDE_DOMAINS (same .parent notation)")
    _srs_shape(out, v["SRS_SEPARATOR"], v["SRS_HASHLENGTH"], v["SRS_HASHMIN"], "SRS_HASHLENGTH", "SRS_HASHMIN")
    out.note(
        "srs",
        "PostSRSd 1.x reversed SRS addresses at any domain after the @; srsd reverses them only at "
        "srs.domain: list an earlier SRS domain in srs.reverse_domains for 21 days.",
    )
    listen_on = v["SRS_LISTEN_ADDR"]
    origin = f"SRS_FORWARD_PORT on SRS_LISTEN_ADDR {listen_on or '(every address)'}"
    out.set("listen", "tcp_forward", _tcp(v["SRS_FORWARD_PORT"], listen_on, "SRS_FORWARD_PORT"), origin)
    origin = origin.replace("SRS_FORWARD_PORT", "SRS_REVERSE_PORT")
    out.set("listen", "tcp_reverse", _tcp(v["SRS_REVERSE_PORT"], listen_on, "SRS_REVERSE_PORT"), origin)
    out.set("listen", "socketmap", "", "PostSRSd 1.x has no socketmap")
    if not listen_on:
        out.note("listen", "SRS_LISTEN_ADDR is empty: PostSRSd listened on every address; so does this (IPv4).")
    _run_as_note(out, f"RUN_AS={v['RUN_AS']}" if v["RUN_AS"] else "")
    if v["CHROOT"]:
        out.note("daemon", f"CHROOT={v['CHROOT']}: srsd does not chroot (systemd/srsd.service confines it instead).")
    _extra_options(out, v["SRS_EXTRA_OPTIONS"])
    for name in sorted(set(values) - set(_V1_DEFAULTS)):
        out.note("srs", f"{name}={values[name]}: not a PostSRSd setting srsd knows; ignored.")
    return out


def _extra_options(out: Imported, options: str) -> None:
    for option in options.split():
        if option == "-A":
            out.set("srs", "always_rewrite", True, "SRS_EXTRA_OPTIONS -A")
        elif re.fullmatch(r"-t\d+", option):
            out.set("limits", "idle_timeout", int(option[2:]), f"SRS_EXTRA_OPTIONS {option}")
        elif option in ("-4", "-6"):
            out.note("listen", f"SRS_EXTRA_OPTIONS {option}: the address family follows the endpoints above.")
        elif option == "-D" or option.startswith("-p"):
            out.note("daemon", f"SRS_EXTRA_OPTIONS {option}: srsd runs in the foreground under its service manager.")
        else:
            out.note("srs", f"SRS_EXTRA_OPTIONS {option}: no srsd equivalent; ignored.")


def _srs_shape(out: Imported, separator: str, length: str, minimum: str, length_name: str, min_name: str) -> None:
    if separator not in ("=", "+", "-"):
        raise MigrationError(f"separator: {separator!r} is not one of = + -")
    out.set("srs", "separator", separator, "the same first separator")
    try:
        hash_length, hash_minimum = int(length), int(minimum)
    except ValueError:
        raise MigrationError(f"{length_name}/{min_name}: not numbers: {length!r}, {minimum!r}") from None
    if hash_minimum < 4:
        out.note(
            "srs",
            f"{min_name}={hash_minimum}: srsd accepts no hash shorter than 4 characters (shorter ones are "
            "forgeable), so addresses PostSRSd minted with a shorter hash do not reverse.",
        )
    hash_minimum = max(hash_minimum, 4)
    hash_length = max(hash_length, hash_minimum)
    out.set("srs", "hash_length", hash_length, length_name)
    out.set("srs", "hash_minimum", hash_minimum, min_name)


def _run_as_note(out: Imported, setting: str) -> None:
    if setting:
        out.note(
            "daemon",
            f"{setting}: started as root, srsd runs as the user `srsd` once bound when that user exists "
            "(daemon.user; systemd/srsd.sysusers creates it), and reads its files again as that user on "
            "every reload: make the secrets file readable by it (chgrp srsd, chmod 0640); docs/operations.md.",
        )


# -- PostSRSd 2.x: postsrsd.conf (libconfuse) -----------------------------------------------

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/          # blanks and comments
    |(?P<string>"(?:[^"\\]|\\.)*")|(?P<punct>\+=|[={},])
    |(?P<word>[^\s"={},\#]+)""",
    re.S | re.X,
)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise MigrationError(f"line {line}: cannot read {text[pos : pos + 20]!r}")
        line = text.count("\n", 0, pos) + 1
        if m.group("string") is not None:
            out.append(("value", json.loads(m.group("string").replace("\\'", "'")), line))
        elif m.group("punct") is not None:
            out.append((m.group("punct"), m.group("punct"), line))
        elif m.group("word") is not None:
            out.append(("value", m.group("word"), line))
        pos = m.end()
    return out


def _confuse(text: str) -> dict[str, Any]:
    """``name = value`` / ``name = {a, "b"}`` / ``name += {...}`` pairs of a libconfuse file."""
    tokens = _tokens(text)
    values: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        kind, name, line = tokens[i]
        if kind != "value" or i + 1 >= len(tokens) or tokens[i + 1][0] not in ("=", "+="):
            raise MigrationError(f"line {line}: expected `name = value`")
        append = tokens[i + 1][0] == "+="
        i += 2
        if i < len(tokens) and tokens[i][0] == "{":
            items, i = [], i + 1
            while i < len(tokens) and tokens[i][0] != "}":
                if tokens[i][0] == "value":
                    items.append(tokens[i][1])
                elif tokens[i][0] != ",":
                    raise MigrationError(f"line {tokens[i][2]}: unexpected {tokens[i][1]!r} in the list {name}")
                i += 1
            if i >= len(tokens):
                raise MigrationError(f"{name}: list not closed with }}")
            values[name] = [*(values.get(name, []) if append else []), *items]
            i += 1
        elif i < len(tokens) and tokens[i][0] == "value":
            values[name] = tokens[i][1]
            i += 1
        else:
            raise MigrationError(f"line {line}: {name} has no value")
    return values


def _bool(values: dict[str, Any], name: str, default: bool) -> bool:
    if name not in values:
        return default
    word = str(values[name]).lower()
    if word in ("true", "yes", "on"):
        return True
    if word in ("false", "no", "off"):
        return False
    raise MigrationError(f"{name}: {values[name]!r} is not a boolean")


def _int(values: dict[str, Any], name: str, default: int) -> int:
    try:
        return int(values.get(name, default))
    except ValueError:
        raise MigrationError(f"{name}: {values[name]!r} is not a number") from None


def _endpoint_v2(value: str) -> str:
    """PostSRSd 2.x's ``unix:PATH`` / ``inet:HOST:PORT`` as a Twisted endpoint string."""
    kind, _, rest = value.partition(":")
    if kind in ("unix", "local"):
        return f"unix:{rest}:mode=666"  # PostSRSd creates it with umask 0
    if kind in ("inet", "inet4", "inet6"):
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host in ("", "*"):
            return _tcp(port, "" if kind != "inet6" else "::", "socketmap")
        if host == "localhost":
            host = "::1" if kind == "inet6" else "127.0.0.1"
        return _tcp(port, host, "socketmap")
    raise MigrationError(f"socketmap: {value!r} is not unix:PATH or inet:HOST:PORT")


_V2_KNOWN = {
    "srs-domain", "domains", "domains-file", "domains-file-watch", "original-envelope", "separator",
    "hash-length", "hash-minimum", "always-rewrite", "socketmap", "keep-alive", "connection-limit", "milter",
    "milter-rewrite-local", "milter-recipient-limit", "secrets-file", "envelope-database", "pid-file",
    "unprivileged-user", "chroot-dir", "seccomp", "daemonize", "syslog", "debug",
}  # fmt: skip


def _from_v2(values: dict[str, Any]) -> Imported:
    out = Imported("PostSRSd 2.x")
    domains = values.get("domains", [])
    if isinstance(domains, str):
        domains = [domains]
    srs_domain = values.get("srs-domain", "")
    if srs_domain:
        out.set("srs", "domain", srs_domain.lstrip("."), "srs-domain")
    elif domains:
        out.set("srs", "domain", domains[0].lstrip("."), "srs-domain unset: the first of domains, as PostSRSd")
    else:
        raise MigrationError("srs-domain: not set and domains is empty: PostSRSd would have no SRS domain either")
    out.set("srs", "secrets_file", values.get("secrets-file", "/usr/local/etc/postsrsd.secret"), "secrets-file")
    out.set("srs", "local_domains", list(domains), "domains (same .parent notation)")
    if values.get("domains-file"):
        out.set("srs", "local_domains_file", values["domains-file"], "domains-file (re-read on SIGHUP)")
        out.note("srs", "domains-file: srsd allows whole-line # comments only, not after a domain.")
    if _bool(values, "domains-file-watch", False):
        out.note("srs", "domains-file-watch: srsd re-reads the file on SIGHUP (systemctl reload srsd), not on change.")
    _srs_shape(
        out,
        values.get("separator", "="),
        str(values.get("hash-length", 4)),
        str(values.get("hash-minimum", 4)),
        "hash-length",
        "hash-minimum",
    )
    out.set("srs", "always_rewrite", _bool(values, "always-rewrite", False), "always-rewrite")
    if str(values.get("original-envelope", "embedded")).lower() == "database":
        out.note(
            "srs",
            "original-envelope = database: srsd embeds the sender in the address and keeps no database; "
            "addresses PostSRSd minted from its database do not reverse in srsd (keep PostSRSd answering "
            "them for 21 days, or stay with embedded).",
        )
    if values.get("envelope-database"):
        out.note("srs", f"envelope-database = {values['envelope-database']}: not used by srsd.")
    socketmap = values.get("socketmap", "unix:/var/spool/postfix/srs")
    out.set("listen", "tcp_forward", "", "PostSRSd 2.x has no tcp_table")
    out.set("listen", "tcp_reverse", "", "PostSRSd 2.x has no tcp_table")
    out.set("listen", "socketmap", _endpoint_v2(socketmap) if socketmap else "", f"socketmap = {socketmap}")
    if socketmap.startswith("inet:localhost"):
        out.note("listen", "socketmap on localhost: PostSRSd bound 127.0.0.1 and ::1; srsd binds 127.0.0.1.")
    if values.get("milter"):
        out.note(
            "listen",
            f"milter = {values['milter']}: srsd's milter signs and verifies (DKIM/ARC), it does not rewrite "
            "envelopes; rewrite with the socketmap in Postfix's canonical maps (postfix-snippets/main.cf.socketmap).",
        )
    for name in ("milter-rewrite-local", "milter-recipient-limit"):
        if name in values:
            out.note("listen", f"{name}: applies to PostSRSd's rewriting milter only.")
    out.set("limits", "idle_timeout", _int(values, "keep-alive", 30), "keep-alive (seconds)")
    out.set("limits", "max_connections", max(1, _int(values, "connection-limit", 200)), "connection-limit")
    if "connection-limit" in values:
        out.note("limits", "connection-limit: past it PostSRSd closed new connections; srsd answers them TEMP.")
    if _bool(values, "debug", False):
        out.set("log", "level", "debug", "debug")
    if _bool(values, "syslog", False):
        out.note("log", "syslog: srsd logs to stderr, which systemd puts in the journal (and syslog, if forwarded).")
    user = values.get("unprivileged-user", "nobody")
    _run_as_note(out, f"unprivileged-user = {user}" if user else "")
    if values.get("chroot-dir", "/usr/local/var/lib/postsrsd"):
        out.note("daemon", "chroot-dir: srsd does not chroot (systemd/srsd.service confines it instead).")
    if _bool(values, "seccomp", True):
        out.note("daemon", "seccomp: srsd has no built-in sandbox; systemd/srsd.service restricts it.")
    for name in ("daemonize", "pid-file"):
        if name in values:
            out.note("daemon", f"{name}: srsd runs in the foreground under its service manager.")
    for name in sorted(set(values) - _V2_KNOWN):
        out.note("srs", f"{name}: not a PostSRSd 2.x option srsd knows; ignored.")
    return out


# -- the TOML --------------------------------------------------------------------------------

_ORDER = ("srs", "listen", "limits", "log", "daemon")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a TOML basic string


def render(imported: Imported, source: str) -> str:
    """The srsd TOML for *imported*, every value with its origin, every note a comment.

    :raises MigrationError: the result does not pass srsd's own checks (the message says which key).
    """
    lines = [
        f"# srsd configuration imported from {imported.format} settings in {source}",
        "# by `srsd import-postsrsd`. Review it, then `srsd check-config -c FILE`;",
        "# every key with its default: docs/srsd.example.toml.",
    ]
    for section in _ORDER:
        values = imported.sections.get(section, {})
        notes = imported.notes.get(section, [])
        if not values and not notes:
            continue
        lines += ["", f"[{section}]"]
        for key, value in values.items():
            lines.append(f"{key} = {_toml(value)}  # {imported.origins[(section, key)]}")
        for note in notes:
            lines += textwrap.wrap(note, 100, initial_indent="# Not carried over: ", subsequent_indent="#   ")
    text = "\n".join(lines) + "\n"
    try:
        parse_config(tomllib.loads(text), source, needs=Needs.NOTHING)
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        raise MigrationError(f"the imported settings are not valid for srsd: {exc}") from None
    return text
