"""TOML configuration -> one validated, immutable :class:`Config`.

Every error names the offending key (``srs.hash_length: ...``). The files the
config points at (secrets, local domains) are read here too, so a loaded Config
is a complete snapshot: SIGHUP builds a new one and swaps it in only if it loads.
Every key, with its default and meaning: ``docs/srsd.example.toml``.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import secrets as _secrets
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srsd.header_text import TOKEN
from srsd.srs import InvalidParameter, check_parameters

__all__ = [
    "Config",
    "ConfigError",
    "SRSSettings",
    "ListenSettings",
    "LimitsSettings",
    "DNSSettings",
    "SPFSettings",
    "PolicySettings",
    "DKIMSettings",
    "LogSettings",
    "DaemonSettings",
    "Needs",
    "load_config",
    "default_config",
    "state_directory",
    "is_domain",
    "host_domain",
]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message starts with the key."""


@dataclass(frozen=True)
class SRSSettings:
    domain: str = ""
    secrets_file: str = ""
    local_domains: tuple[str, ...] = ()
    local_domains_file: str = ""
    hash_length: int = 4
    hash_minimum: int = 4
    max_age_days: int = 21
    separator: str = "="
    alphabet: str = "standard"
    always_rewrite: bool = False
    reverse_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListenSettings:
    """Twisted endpoint strings (``tcp:PORT:interface=ADDR``, ``unix:PATH:mode=660``,
    ``systemd:domain=INET:index=0``); an empty string disables the endpoint."""

    tcp_forward: str = "tcp:10001:interface=127.0.0.1"
    tcp_reverse: str = "tcp:10002:interface=127.0.0.1"
    socketmap: str = "tcp:10003:interface=127.0.0.1"
    policy: str = ""  # Postfix policy delegation (check_policy_service), e.g. tcp:10004
    milter: str = ""  # DKIM/ARC milter (smtpd_milters), e.g. unix:/var/spool/postfix/srsd/milter.sock


@dataclass(frozen=True)
class DNSSettings:
    nameservers: tuple[str, ...] = ()  # "host" or "host:port"; empty = /etc/resolv.conf
    timeout: float = 2.0  # seconds per query (every server and retry)
    cache_size: int = 10000  # answers kept, each for its TTL


@dataclass(frozen=True)
class SPFSettings:
    aware: bool = False  # leave a sender alone when its SPF already passes for us
    egress_ips: tuple[str, ...] = ()  # every address forwarded mail leaves from
    skip_results: tuple[str, ...] = ("pass",)  # results that leave the sender alone
    decision_budget: float = 2.0  # seconds for an SPF-aware decision (then: rewrite)
    check_budget: float = 10.0  # seconds for a policy check (then: temperror)
    threads: int = 8  # SPF checks running at once
    receiver: str = ""  # this host's name in Received-SPF comments (default: srs.domain)


@dataclass(frozen=True)
class PolicySettings:
    """Postfix policy service for incoming mail (policyd-spf semantics)."""

    helo_reject: str = "none"  # "fail", "softfail" (fail or softfail), "none"
    mail_from_reject: str = "none"  # "fail", "softfail", "none": header only
    permerror_reject: bool = False
    temperror_defer: bool = False
    skip_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104")
    whitelist_networks: tuple[str, ...] = ()  # trusted forwarders by address
    whitelist_helo: tuple[str, ...] = ()  # ... by HELO name, when Postfix's verified client name is it
    whitelist_domains: tuple[str, ...] = ()  # ... when the client passes this domain's own SPF
    header: str = "received-spf"  # or "authentication-results"
    authserv_id: str = ""  # required for authentication-results


_DEFAULT_SIGNED_HEADERS = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID", "In-Reply-To",
    "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
)  # fmt: skip


@dataclass(frozen=True)
class DKIMSettings:
    """DKIM signing, verification and ARC sealing in the milter (RFC 6376, 8617)."""

    domain: str = ""  # d= of srsd's signatures and ARC sets; default srs.domain
    selector: str = ""  # s=; empty = do not sign or seal
    key_file: str = ""  # private key, PEM (srsd dkim-keygen writes one)
    algorithm: str = "rsa-sha256"  # or "ed25519-sha256"
    signed_headers: tuple[str, ...] = _DEFAULT_SIGNED_HEADERS
    sign_forwarded: bool = True  # sign mail srsd forwards, with d=domain
    sign_local: bool = True  # sign mail from local domains / authenticated clients
    arc: bool = True  # ARC-seal forwarded mail
    verify: bool = True  # add Authentication-Results to incoming mail
    authserv_id: str = ""  # Authentication-Results authserv-id; default srs.domain
    on_error: str = "tempfail"  # internal error: "tempfail" (4xx, retried) or "continue"
    # clients whose mail counts as local (signed), like SASL-authenticated ones; loopback
    # covers local submission (Postfix presents sendmail/pickup mail as from 127.0.0.1)
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    threads: int = 4  # messages verified/signed at once (crypto and key lookups run on these threads)
    budget: float = 10.0  # seconds for one message's key lookups; a lookup past it is temperror


@dataclass(frozen=True)
class LimitsSettings:
    max_request_bytes: int = 4096  # longest tcp_table line / socketmap netstring
    max_connections: int = 1000  # per endpoint and process; beyond it requests get TEMP
    idle_timeout: int = 1800  # seconds before an idle client is closed; 0 = never
    answer_cache: int = 20000  # replies kept per lookup endpoint and process (srsd.answer_cache); 0 = none


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"  # "debug" logs every lookup


MAX_LOOKUP_PROCESSES = 64


@dataclass(frozen=True)
class DaemonSettings:
    """Who ``srsd serve`` runs as once its endpoints are bound (see srsd.privileges), and
    how many processes serve the lookup endpoints (srsd.workers)."""

    user: str = ""  # started as root: this user; "" = "srsd" when that user exists, else stay root
    group: str = ""  # "" = the user's primary group (supplementary groups: the user's, initgroups(3))
    #: processes of their own serving tcp_table and socketmap (srsd.lookup_loop); 0 = the
    #: Twisted process(es) serve them beside policy and milter
    lookup_processes: int = 2


class Needs(enum.Flag):
    """The parts of a configuration a command uses (``srsd spf`` needs no SRS secret).

    Every key present is always checked (type, range, unknown keys); which keys must
    be present and which files are read follow from these flags. ``srsd serve`` and
    ``check-config`` need EVERYTHING.
    """

    NOTHING = 0
    SRS_DOMAIN = enum.auto()  # srs.domain required
    SECRETS = enum.auto()  # srs.secrets_file required and read, srs.local_domains_file read
    LISTEN = enum.auto()  # at least one [listen] endpoint enabled
    DKIM_KEY = enum.auto()  # dkim.key_file read when dkim.selector is set
    RUN_AS = enum.auto()  # [daemon] user/group resolved: they must exist
    REWRITING = SRS_DOMAIN | SECRETS
    EVERYTHING = SRS_DOMAIN | SECRETS | LISTEN | DKIM_KEY | RUN_AS


@dataclass(frozen=True)
class Config:
    srs: SRSSettings
    listen: ListenSettings = ListenSettings()
    dns: DNSSettings = DNSSettings()
    spf: SPFSettings = SPFSettings()
    policy: PolicySettings = PolicySettings()
    dkim: DKIMSettings = DKIMSettings()
    limits: LimitsSettings = LimitsSettings()
    log: LogSettings = LogSettings()
    daemon: DaemonSettings = DaemonSettings()
    #: secrets read from srs.secrets_file, first signs (never printed)
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    #: srs.local_domains plus the entries of srs.local_domains_file
    local_domains: tuple[str, ...] = ()
    #: the key read from dkim.key_file (a srsd.mailauth.keys.SigningKey), None without dkim.selector
    dkim_key: Any = field(default=None, repr=False)
    #: where this config came from ("<default>" for the embedded one)
    source: str = "<default>"
    #: what an admin should fix but srsd runs with (logged at start and reload, printed by check-config)
    warnings: tuple[str, ...] = ()


_SECTIONS = {
    "srs": SRSSettings,
    "listen": ListenSettings,
    "dns": DNSSettings,
    "spf": SPFSettings,
    "policy": PolicySettings,
    "dkim": DKIMSettings,
    "limits": LimitsSettings,
    "log": LogSettings,
    "daemon": DaemonSettings,
}

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


def is_domain(name: str) -> bool:
    """True for an RFC 5321 (4.1.2) domain with at least two labels; A-labels only."""
    if not name or len(name) > 253 or "." not in name:
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def _typed(section: str, key: str, value: Any, want: Any) -> Any:
    where = f"{section}.{key}"
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif want is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif want is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    else:  # tuple[str, ...]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        value = tuple(value)
    return value


def _section(name: str, raw: Any, cls: type) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key")
    kwargs = {}
    for key, value in raw.items():
        # Annotations are strings here (PEP 563): "str", "int", "bool", "tuple[...]".
        want = {"str": str, "int": int, "float": float, "bool": bool}.get(fields[key].type, tuple)
        kwargs[key] = _typed(name, key, value, want)
    return cls(**kwargs)


def _read_lines(path: str, key: str) -> list[str]:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8") from None
    return text.splitlines()


def load_secrets(path: str) -> tuple[bytes, ...]:
    """Secrets from *path*: one per line, the first signs, all verify.

    Read as PostSRSd 1.x reads its file: raw bytes (no decoding), a secret ends at
    the first CR or LF, empty lines are skipped. A line over 1023 bytes is refused
    (PostSRSd would silently split it into two secrets).

    :raises ConfigError: naming ``srs.secrets_file``.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"srs.secrets_file: cannot read {path}: {exc.strerror}") from None
    found = []
    for number, line in enumerate(data.split(b"\n"), 1):
        pieces = [piece for piece in line.split(b"\r") if piece]
        if not pieces:
            continue
        if len(pieces[0]) > 1023:
            raise ConfigError(f"srs.secrets_file: {path} line {number}: a secret is at most 1023 bytes")
        found.append(pieces[0])
    if not found:
        raise ConfigError(f"srs.secrets_file: {path} holds no secret")
    return tuple(found)


def _check_domain_entries(entries: list[str] | tuple[str, ...], key: str) -> list[str]:
    out = []
    for entry in entries:
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        bare = entry[1:] if entry.startswith(".") else entry
        if not is_domain(bare.rstrip(".")):
            raise ConfigError(f"{key}: {entry!r} is not a domain name")
        out.append(entry)
    return out


def _file_mode_warnings(path: str, key: str, group_ids: frozenset[int], what: str) -> list[str]:
    """Warnings for a file holding a secret that users other than its owner and srsd's
    groups can read or change (PostSRSd's advice: owned and only readable by root).

    :param group_ids: the groups srsd runs with (group read is how srsd reads a root-owned file).
    :param what: what anyone reading it can do, for the message.
    """
    try:
        st = os.stat(path)
    except OSError:
        return []  # the read itself reports it
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        problem = "readable or writable by every user"
    elif mode & 0o020:
        problem = "writable by its group"
    elif mode & 0o040 and st.st_gid not in group_ids:
        problem = f"readable by group {st.st_gid}, which srsd does not run in"
    else:
        return []
    fix = "chmod 0600, or 0640 with srsd's group"
    return [f"{key}: {path} is {problem} (mode {mode:04o}): whoever reads it {what}; {fix}"]


def _validate(cfg: Config, needs: Needs = Needs.EVERYTHING) -> Config:
    from srsd.privileges import process_groups, run_as_warnings, target_account

    s = cfg.srs
    warnings: list[str] = []
    if not s.domain and Needs.SRS_DOMAIN in needs:
        raise ConfigError("srs.domain: required (the domain SRS addresses are minted in)")
    if s.domain and not is_domain(s.domain):
        raise ConfigError(
            f"srs.domain: {s.domain!r} is not a fully qualified domain name "
            "(letters, digits, hyphens; at least two labels)"
        )
    try:
        check_parameters(s.hash_length, s.hash_minimum, s.max_age_days, s.separator)
    except InvalidParameter as exc:
        raise ConfigError(f"srs.{exc.name}: {exc.text}") from None
    if s.alphabet not in ("standard", "urlsafe"):
        raise ConfigError("srs.alphabet: must be 'standard' or 'urlsafe'")
    # The groups srsd will read its files with: the account it switches to, else this process's.
    account = target_account(cfg.daemon) if Needs.RUN_AS in needs else None
    if Needs.RUN_AS in needs:
        warnings += run_as_warnings(cfg.daemon, account)
    groups = frozenset(account.groups) if account else process_groups()
    secrets: tuple[bytes, ...] = ()
    if Needs.SECRETS in needs:
        if not s.secrets_file:
            raise ConfigError("srs.secrets_file: required")
        secrets = load_secrets(s.secrets_file)
        warnings += _file_mode_warnings(
            s.secrets_file, "srs.secrets_file", groups, "can mint SRS addresses that srsd reverses"
        )
    _check_domain_entries(s.reverse_domains, "srs.reverse_domains")
    if any(d.startswith(".") for d in s.reverse_domains):
        raise ConfigError("srs.reverse_domains: exact domain names only")
    domains = _check_domain_entries(s.local_domains, "srs.local_domains")
    if s.local_domains_file and Needs.SECRETS in needs:
        lines = _read_lines(s.local_domains_file, "srs.local_domains_file")
        domains += _check_domain_entries(lines, "srs.local_domains_file")
    _validate_spf(cfg)
    dkim_key = _validate_dkim(cfg, read_key=Needs.DKIM_KEY in needs)
    if Needs.DKIM_KEY in needs and cfg.dkim.selector:
        warnings += _file_mode_warnings(cfg.dkim.key_file, "dkim.key_file", groups, "can sign mail as your domain")
    lim = cfg.limits
    if not 256 <= lim.max_request_bytes <= 1 << 20:
        raise ConfigError("limits.max_request_bytes: must be 256..1048576")
    if lim.max_connections < 1:
        raise ConfigError("limits.max_connections: must be at least 1")
    if lim.idle_timeout < 0:
        raise ConfigError("limits.idle_timeout: must be >= 0 (0 = never)")
    if lim.answer_cache < 0:
        raise ConfigError("limits.answer_cache: must be >= 0 (0 = no cache)")
    if cfg.log.level not in ("debug", "info", "warn", "error"):
        raise ConfigError("log.level: must be debug, info, warn or error")
    if not 0 <= cfg.daemon.lookup_processes <= MAX_LOOKUP_PROCESSES:
        raise ConfigError(f"daemon.lookup_processes: must be 0..{MAX_LOOKUP_PROCESSES}")
    if cfg.daemon.group and not cfg.daemon.user:
        raise ConfigError("daemon.group: needs daemon.user")
    if not any(dataclasses.astuple(cfg.listen)) and Needs.LISTEN in needs:
        raise ConfigError("listen: every endpoint is disabled")
    return dataclasses.replace(
        cfg, secrets=secrets, local_domains=tuple(domains), dkim_key=dkim_key, warnings=tuple(warnings)
    )


def _networks(values: tuple[str, ...], key: str) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not an IP address or network") from None


def _validate_spf(cfg: Config) -> None:
    from srsd.dns import parse_nameserver

    for ns in cfg.dns.nameservers:
        try:
            parse_nameserver(ns)
        except ValueError:
            raise ConfigError(f"dns.nameservers: {ns!r} is not an IP address with an optional :port") from None
    if not 0 < cfg.dns.timeout <= 60:
        raise ConfigError("dns.timeout: must be more than 0 and at most 60 seconds")
    if cfg.dns.cache_size < 0:
        raise ConfigError("dns.cache_size: must be >= 0")
    sp = cfg.spf
    for ip in sp.egress_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"spf.egress_ips: {ip!r} is not an IP address") from None
    if sp.aware and not sp.egress_ips:
        raise ConfigError("spf.egress_ips: required when spf.aware = true (every address mail leaves from)")
    from srsd.spf import RESULTS

    for result in sp.skip_results:
        if result not in RESULTS:
            raise ConfigError(f"spf.skip_results: {result!r} is not an SPF result ({', '.join(RESULTS)})")
    if not 0 < sp.decision_budget <= 30:
        raise ConfigError("spf.decision_budget: must be more than 0 and at most 30 seconds")
    if not 0 < sp.check_budget <= 60:
        raise ConfigError("spf.check_budget: must be more than 0 and at most 60 seconds")
    if not 1 <= sp.threads <= 256:
        raise ConfigError("spf.threads: must be 1..256")
    po = cfg.policy
    if po.helo_reject not in ("fail", "softfail", "none"):
        raise ConfigError("policy.helo_reject: must be 'fail', 'softfail' or 'none'")
    if po.mail_from_reject not in ("fail", "softfail", "none"):
        raise ConfigError("policy.mail_from_reject: must be 'fail', 'softfail' or 'none'")
    _networks(po.skip_networks, "policy.skip_networks")
    _networks(po.whitelist_networks, "policy.whitelist_networks")
    _check_domain_entries(po.whitelist_helo, "policy.whitelist_helo")
    _check_domain_entries(po.whitelist_domains, "policy.whitelist_domains")
    if any(d.startswith(".") for d in po.whitelist_domains):
        raise ConfigError("policy.whitelist_domains: exact domain names only (the client must pass its SPF)")
    if po.header not in ("received-spf", "authentication-results"):
        raise ConfigError("policy.header: must be 'received-spf' or 'authentication-results'")
    if po.header == "authentication-results" and not po.authserv_id:
        raise ConfigError("policy.authserv_id: required when policy.header = 'authentication-results'")


def _validate_dkim(cfg: Config, read_key: bool = True) -> Any:
    """Check [dkim]; the signing key it names, loaded (None without dkim.selector or *read_key*)."""
    d = cfg.dkim
    # never signed: changed in transit, or added by srsd and later hops
    never_signed = {"return-path", "received", "dkim-signature", "authentication-results", "arc-seal",
                    "arc-message-signature", "arc-authentication-results", "bcc", "resent-bcc"}  # fmt: skip
    if d.domain and not is_domain(d.domain):
        raise ConfigError(f"dkim.domain: {d.domain!r} is not a domain name")
    if d.algorithm not in ("rsa-sha256", "ed25519-sha256"):
        raise ConfigError("dkim.algorithm: must be 'rsa-sha256' or 'ed25519-sha256'")
    if d.on_error not in ("tempfail", "continue"):
        raise ConfigError("dkim.on_error: must be 'tempfail' or 'continue'")
    if d.selector and not _LABEL.match(d.selector.replace(".", "a").replace("_", "a")):
        raise ConfigError(f"dkim.selector: {d.selector!r} is not a DNS label")
    if d.selector and not d.key_file:
        raise ConfigError("dkim.key_file: required when dkim.selector is set")
    if "from" not in {h.lower() for h in d.signed_headers}:
        raise ConfigError("dkim.signed_headers: must include From (RFC 6376 5.4)")
    for name in d.signed_headers:
        if not re.match(r"^[!-9;-~]+$", name):
            raise ConfigError(f"dkim.signed_headers: {name!r} is not a header field name")
        if name.lower() in never_signed:
            raise ConfigError(f"dkim.signed_headers: {name} must not be signed (it changes in transit or is ours)")
    if d.authserv_id and not TOKEN.match(d.authserv_id):
        raise ConfigError(f"dkim.authserv_id: {d.authserv_id!r} must be a single token, e.g. a host name")
    _networks(d.trusted_networks, "dkim.trusted_networks")
    if not 1 <= d.threads <= 64:
        raise ConfigError("dkim.threads: must be 1..64")
    if not 0 < d.budget <= 60:
        raise ConfigError("dkim.budget: must be more than 0 and at most 60 seconds")
    key = None
    if d.selector:
        from srsd.mailauth.keys import DKIMKeyError, load_signing_key

        if d.arc and d.algorithm != "rsa-sha256":
            raise ConfigError("dkim.arc: ARC sets are rsa-sha256 only (RFC 8617); use an RSA key or set arc = false")
    if d.selector and read_key:
        try:
            key = load_signing_key(d.key_file, d.algorithm)
        except DKIMKeyError as exc:
            raise ConfigError(f"dkim.key_file: {exc}") from None
    authserv = (d.authserv_id or cfg.srs.domain).lower()
    po = cfg.policy
    if (
        cfg.listen.milter
        and cfg.listen.policy
        and po.header == "authentication-results"
        and po.authserv_id.lower() == authserv
    ):
        raise ConfigError(
            "policy.authserv_id: the milter removes Authentication-Results fields carrying its own "
            f"authserv-id ({authserv}) from incoming mail, the policy service's too; use another "
            "authserv-id or policy.header = 'received-spf'"
        )
    return key


def parse_config(data: dict[str, Any], source: str = "<string>", needs: Needs = Needs.EVERYTHING) -> Config:
    """Validate a parsed TOML document.

    :param needs: the parts the caller uses (:class:`Needs`): only those must be
        present and only their files are read.
    :raises ConfigError: unknown section or key, wrong type, bad value, unreadable
        secrets or domains file; the message starts with the key.
    """
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section")
    sections = {name: _section(name, data.get(name, {}), cls) for name, cls in _SECTIONS.items()}
    return _validate(Config(source=source, **sections), needs)


def load_config(path: str, needs: Needs = Needs.EVERYTHING) -> Config:
    """Read and validate the TOML file at *path* (*needs*: see :func:`parse_config`).

    :raises ConfigError: the file is unreadable or invalid (message names the key).
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=path, needs=needs)


def state_directory() -> Path:
    """Where the embedded default keeps its generated secret.

    ``$SRSD_STATE_DIR``, else systemd's ``$STATE_DIRECTORY``, else
    ``/var/lib/srsd`` for root, else ``$XDG_STATE_HOME/srsd`` (~/.local/state/srsd).
    """
    for var in ("SRSD_STATE_DIR", "STATE_DIRECTORY"):
        if os.environ.get(var):
            return Path(os.environ[var].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/srsd")
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "srsd"


def host_domain() -> str:
    """This host's FQDN when it has one, else ``localhost.localdomain``."""
    fqdn = socket.getfqdn().rstrip(".").lower()
    return fqdn if is_domain(fqdn) else "localhost.localdomain"


def default_config(needs: Needs = Needs.EVERYTHING) -> Config:
    """The embedded default: loopback endpoints (PostSRSd's ports), this host's
    FQDN as SRS domain and local domain, a secret generated on first use in
    :func:`state_directory` (mode 0600; not when *needs* leaves out the secrets)."""
    directory = state_directory()
    secret_path = directory / "secrets"
    if Needs.SECRETS in needs and not secret_path.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(_secrets.token_urlsafe(32) + "\n")
    domain = host_domain()
    return _validate(
        Config(
            srs=SRSSettings(domain=domain, secrets_file=str(secret_path)),
            source=f"<default: state in {directory}>",
        ),
        needs,
    )
