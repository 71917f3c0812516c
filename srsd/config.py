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
    "DKIMKeySettings",
    "NEVER_SIGNED",
    "DMARCSettings",
    "DMARC_ACTIONS",
    "DMARC_TEMPERROR_ACTIONS",
    "StoreSettings",
    "LogSettings",
    "DaemonSettings",
    "Needs",
    "PostfixSettings",
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
    metrics: str = ""  # Prometheus metrics over HTTP (GET /metrics), e.g. tcp:9129:interface=127.0.0.1


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
    result_cache: int = 50000  # check_host() results kept for their DNS TTL (srsd.spf_cache); 0 = none
    result_max_ttl: float = 3600.0  # seconds a kept result lives at most
    receiver: str = ""  # this host's name in Received-SPF comments (default: srs.domain)
    helo_name: str = ""  # the HELO name mail leaves with (dns-records, check-dns); default receiver or srs.domain
    no_mail_domains: tuple[str, ...] = ()  # names that send no mail: dns-records suggests "v=spf1 -all"


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
class DKIMKeySettings:
    """One entry of the signing table, ``[[dkim.keys]]`` (docs/dkim.md "Signing table")."""

    domain: str = ""  # d=: signs local mail whose From domain is this one
    selector: str = ""  # s=
    key_file: str = ""  # default: dkim.key_directory/<domain>/<selector>.private
    state: str = "active"  # "active", "next" (signs once published), "retired" (published only)


#: header fields no DKIM or ARC signature of srsd covers (``dkim.signed_headers`` refuses
#: them): they change in transit, or srsd and later hops add them (RFC 6376 5.4.1; RFC 8617
#: 4.1.2: an ARC-Message-Signature never signs Authentication-Results)
NEVER_SIGNED = frozenset(
    {"return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature",
     "arc-seal", "arc-message-signature", "arc-authentication-results", "authentication-results"}
)  # fmt: skip


@dataclass(frozen=True)
class DKIMSettings:
    """DKIM signing, verification and ARC sealing in the milter (RFC 6376, 8617)."""

    domain: str = ""  # the forwarder's domain: d= of signatures on forwarded mail and of ARC sets; default srs.domain
    selector: str = ""  # s= of one key for dkim.domain (the single-key form); empty = none
    key_file: str = ""  # its private key, PEM (srsd dkim-keygen writes one)
    algorithm: str = "rsa-sha256"  # its algorithm: or "ed25519-sha256"
    key_directory: str = "/etc/srsd/dkim"  # <domain>/<selector>.private: default key_file of [[dkim.keys]]
    keys: tuple[DKIMKeySettings, ...] = ()  # the signing table: [[dkim.keys]] entries
    sign_subdomains: tuple[str, ...] = ()  # domains whose keys also sign for their subdomains
    rotation_check_interval: float = 60.0  # seconds between DNS checks of "next" keys
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
    # 0: those threads do the per-message work; N: N processes of their own do it, one
    # message each at a time (every core, no GIL shared with the reactor)
    processes: int = 2
    budget: float = 10.0  # seconds for one message's key lookups; a lookup past it is temperror


#: dmarc.action values: the default adds the result only (docs/dmarc.md "What srsd does")
DMARC_ACTIONS = ("header", "quarantine", "enforce")
DMARC_TEMPERROR_ACTIONS = ("defer", "accept")


@dataclass(frozen=True)
class DMARCSettings:
    """DMARC (RFC 9989) of incoming mail, evaluated by the milter (srsd.dmarc, docs/dmarc.md).

    * ``action`` -- ``"header"``: add ``dmarc=`` to Authentication-Results, never refuse
      (the issue's "check, never discard"); ``"enforce"``: 550 for a failure whose applied
      policy is reject, hold (Postfix's hold queue) for quarantine; ``"quarantine"``: hold
      both (RFC 9989 7.4: p=reject as quarantine without "other knowledge and analysis").
    * ``trusted_arc_sealers`` -- domains whose ARC-Seal, as the newest of a chain that
      validates (cv=pass), exempts a DMARC failure from the action (local policy, 5.4).
    * ``temperror`` -- with an action other than ``header``: ``"defer"`` (451 4.4.3, the
      client retries) or ``"accept"`` (deliver with dmarc=temperror).
    """

    enabled: bool = True  # evaluate DMARC on incoming mail the milter verifies
    action: str = "header"  # "header" | "quarantine" | "enforce"
    trusted_arc_sealers: tuple[str, ...] = ()  # lower case, no trailing dot once validated
    temperror: str = "defer"  # "defer" | "accept" (only with an action other than "header")


@dataclass(frozen=True)
class StoreSettings:
    """The alias store: long senders get a short SRS0 carrying a key (docs/alias-store.md)."""

    backend: str = "sqlite"  # "sqlite" (a file, this host's processes), "redis" (a fleet), "none"
    max_local_part: int = 64  # SRS local parts longer than this (octets) get an alias (RFC 5321: 64)
    max_new_per_day: int = 100000  # new aliases per UTC day; past it the long form goes out
    timeout: float = 2.0  # seconds per store operation; past it: temporary failure
    threads: int = 4  # store operations running at once
    sqlite_path: str = ""  # default: aliases.sqlite in the state directory
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_unix_socket: str = ""  # a path: used instead of host and port
    redis_db: int = 0
    redis_username: str = ""  # Redis 6 ACL user; empty = the default user
    redis_password_file: str = ""  # first line is the password (AUTH)
    redis_tls: bool = False
    redis_tls_ca_file: str = ""  # CA bundle verifying the server; empty = the system's
    redis_tls_cert_file: str = ""  # client certificate (tls-auth-clients)
    redis_tls_key_file: str = ""
    redis_key_prefix: str = "srsd:"  # every key srsd writes starts with it


@dataclass(frozen=True)
class LimitsSettings:
    max_request_bytes: int = 4096  # longest tcp_table line / socketmap netstring
    max_connections: int = 1000  # per endpoint and process; beyond it requests get TEMP
    idle_timeout: int = 1800  # seconds before an idle client is closed; 0 = never
    answer_cache: int = 20000  # replies kept per lookup endpoint and process (srsd.answer_cache); 0 = none


#: [log] facility names (syslog(3)); Python's SysLogHandler knows these
LOG_FACILITIES = ("mail", "daemon", "user", *(f"local{n}" for n in range(8)))


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"  # "debug" logs every lookup
    target: str = "stderr"  # or "syslog" (the journal gets stderr under systemd)
    syslog_socket: str = "/dev/log"  # with target = "syslog"
    facility: str = "mail"  # with target = "syslog"
    rate_limit: float = 20.0  # decision lines a second per kind (0 = no limit)
    burst: int = 200  # lines a kind may write at once after a quiet spell


MAX_LOOKUP_PROCESSES = 64  # and at most as many workers


@dataclass(frozen=True)
class DaemonSettings:
    """Who ``srsd serve`` runs as once its endpoints are bound (see srsd.privileges), and
    how many processes serve the lookup endpoints (srsd.workers)."""

    user: str = ""  # started as root: this user; "" = "srsd" when that user exists, else stay root
    group: str = ""  # "" = the user's primary group (supplementary groups: the user's, initgroups(3))
    #: processes of their own serving tcp_table and socketmap (srsd.lookup_loop); 0 = the
    #: Twisted process(es) serve them beside policy and milter
    lookup_processes: int = 2
    #: processes of their own serving the policy endpoint, on uvloop as the lookup
    #: processes; 0 = the Twisted process(es) serve it beside the milter
    policy_processes: int = 2
    #: Twisted processes serving policy and milter (the first and N-1 copies); 0 = as
    #: :func:`srsd.workers.default_workers` decides; ``srsd serve --workers N`` overrides
    workers: int = 0


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
class PostfixSettings:
    """The Postfix side, for ``srsd postfix-snippet`` only (srsd itself never reads it)."""

    queue_directory: str = "/var/spool/postfix"  # unix sockets below it are written relative to it
    forward_pass: str = "127.0.0.1:10006"  # forwarded-only: the second pass's smtpd, IPv4 loopback ADDRESS:PORT


@dataclass(frozen=True)
class Config:
    srs: SRSSettings
    listen: ListenSettings = ListenSettings()
    dns: DNSSettings = DNSSettings()
    spf: SPFSettings = SPFSettings()
    policy: PolicySettings = PolicySettings()
    dkim: DKIMSettings = DKIMSettings()
    dmarc: DMARCSettings = DMARCSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitsSettings = LimitsSettings()
    log: LogSettings = LogSettings()
    daemon: DaemonSettings = DaemonSettings()
    postfix: PostfixSettings = PostfixSettings()
    #: secrets read from srs.secrets_file, first signs (never printed)
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    #: srs.local_domains plus the entries of srs.local_domains_file
    local_domains: tuple[str, ...] = ()
    #: every signing key, loaded (srsd.mailauth.signing_table.TableKey): dkim.selector's, then dkim.keys
    dkim_keys: tuple[Any, ...] = field(default=(), repr=False)
    #: the password read from store.redis_password_file (never printed)
    store_password: str = field(default="", repr=False)
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
    "dmarc": DMARCSettings,
    "store": StoreSettings,
    "limits": LimitsSettings,
    "log": LogSettings,
    "daemon": DaemonSettings,
    "postfix": PostfixSettings,
}

#: annotations of array-of-tables fields -> the dataclass of one table (numbered from 1 in errors)
_TABLE_LISTS = {"tuple[DKIMKeySettings, ...]": DKIMKeySettings}

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
        annotation = fields[key].type
        if annotation in _TABLE_LISTS:  # an array of tables: [[section.key]]
            if not isinstance(value, list):
                raise ConfigError(f"{name}.{key}: expected a list of tables ([[{name}.{key}]])")
            kwargs[key] = tuple(
                _section(f"{name}.{key}[{i}]", item, _TABLE_LISTS[annotation]) for i, item in enumerate(value, 1)
            )
            continue
        want = {"str": str, "int": int, "float": float, "bool": bool}.get(annotation, tuple)
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
    dkim_keys = _validate_dkim(cfg, read_keys=Needs.DKIM_KEY in needs)
    for entry in dkim_keys:
        where = "dkim.key_file" if entry.where == "dkim.selector" else f"{entry.where}.key_file"
        warnings += _file_mode_warnings(entry.key.path, where, groups, "can sign mail as your domain")
    _check_no_mail_domains(cfg, dkim_keys)
    dmarc, dmarc_warnings = _validate_dmarc(cfg)
    warnings += dmarc_warnings
    _validate_postfix(cfg.postfix)
    store, store_password = _validate_store(cfg)
    lim = cfg.limits
    if not 256 <= lim.max_request_bytes <= 1 << 20:
        raise ConfigError("limits.max_request_bytes: must be 256..1048576")
    if lim.max_connections < 1:
        raise ConfigError("limits.max_connections: must be at least 1")
    if lim.idle_timeout < 0:
        raise ConfigError("limits.idle_timeout: must be >= 0 (0 = never)")
    if lim.answer_cache < 0:
        raise ConfigError("limits.answer_cache: must be >= 0 (0 = no cache)")
    _validate_log(cfg)
    for key in ("lookup_processes", "policy_processes"):
        if not 0 <= getattr(cfg.daemon, key) <= MAX_LOOKUP_PROCESSES:
            raise ConfigError(f"daemon.{key}: must be 0..{MAX_LOOKUP_PROCESSES}")
    if not 0 <= cfg.daemon.workers <= MAX_LOOKUP_PROCESSES:
        raise ConfigError(f"daemon.workers: must be 0..{MAX_LOOKUP_PROCESSES} (0 = one per CPU when policy is served)")
    if cfg.daemon.group and not cfg.daemon.user:
        raise ConfigError("daemon.group: needs daemon.user")
    if cfg.daemon.workers > 1 and cfg.daemon.policy_processes and cfg.daemon.lookup_processes and not cfg.listen.milter:
        # a config from before policy_processes: its workers were for the policy endpoint
        warnings.append(
            f"daemon.workers: {cfg.daemon.workers} Twisted processes have nothing to serve beside "
            f"daemon.policy_processes = {cfg.daemon.policy_processes} (policy) and no listen.milter; "
            "set policy_processes to the number wanted instead"
        )
    serving = [value for name, value in dataclasses.asdict(cfg.listen).items() if name != "metrics"]
    if not any(serving) and Needs.LISTEN in needs:
        raise ConfigError("listen: every endpoint is disabled")
    return dataclasses.replace(
        cfg,
        secrets=secrets,
        local_domains=tuple(domains),
        dkim_keys=dkim_keys,
        warnings=tuple(warnings),
        store=store,
        store_password=store_password,
        dmarc=dmarc,
    )


def _validate_log(cfg: Config) -> None:
    lo = cfg.log
    if lo.level not in ("debug", "info", "warn", "error"):
        raise ConfigError("log.level: must be debug, info, warn or error")
    if lo.target not in ("stderr", "syslog"):
        raise ConfigError("log.target: must be 'stderr' or 'syslog'")
    if not lo.syslog_socket.startswith("/"):
        raise ConfigError("log.syslog_socket: must be the absolute path of a unix socket (/dev/log)")
    if lo.facility not in LOG_FACILITIES:
        raise ConfigError(f"log.facility: must be one of {', '.join(LOG_FACILITIES)}")
    if not 0 <= lo.rate_limit <= 100000:
        raise ConfigError("log.rate_limit: must be 0 (no limit) .. 100000 lines a second")
    if not 1 <= lo.burst <= 1000000:
        raise ConfigError("log.burst: must be 1..1000000")


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
    if sp.result_cache < 0:
        raise ConfigError("spf.result_cache: must be >= 0 (0 = no cache)")
    if not 0 < sp.result_max_ttl <= 86400:
        raise ConfigError("spf.result_max_ttl: must be more than 0 and at most 86400 seconds")
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
    if sp.helo_name and not is_domain(sp.helo_name.rstrip(".")):
        raise ConfigError(f"spf.helo_name: {sp.helo_name!r} is not a fully qualified domain name")
    _check_domain_entries(sp.no_mail_domains, "spf.no_mail_domains")
    if any(d.startswith(".") for d in sp.no_mail_domains):
        raise ConfigError("spf.no_mail_domains: exact domain names only (each gets its own record)")


def _validate_dkim(cfg: Config, read_keys: bool = True) -> tuple[Any, ...]:
    """Check [dkim]; every signing key it names, loaded (see :func:`_dkim_keys`; none
    unless *read_keys*)."""
    d = cfg.dkim
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
        if name.lower() in NEVER_SIGNED:
            raise ConfigError(f"dkim.signed_headers: {name} must not be signed (it changes in transit or is ours)")
    if d.authserv_id and not TOKEN.match(d.authserv_id):
        raise ConfigError(f"dkim.authserv_id: {d.authserv_id!r} must be a single token, e.g. a host name")
    _networks(d.trusted_networks, "dkim.trusted_networks")
    if not 1 <= d.threads <= 64:
        raise ConfigError("dkim.threads: must be 1..64")
    if not 0 <= d.processes <= 64:
        raise ConfigError("dkim.processes: must be 0..64")
    if not 0 < d.budget <= 60:
        raise ConfigError("dkim.budget: must be more than 0 and at most 60 seconds")
    if not 1 <= d.rotation_check_interval <= 86400:
        raise ConfigError("dkim.rotation_check_interval: must be 1..86400 seconds")
    if d.selector and d.arc and d.algorithm != "rsa-sha256":
        raise ConfigError("dkim.arc: ARC sets are rsa-sha256 only (RFC 8617); use an RSA key or set arc = false")
    keys = _dkim_keys(cfg) if read_keys else ()
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
    return keys


def _check_no_mail_domains(cfg: Config, dkim_keys: tuple[Any, ...]) -> None:
    """A name in spf.no_mail_domains must not be one that sends (it would get v=spf1 -all)."""
    if not cfg.spf.no_mail_domains:
        return
    from srsd.dns_records import helo_name

    sending = {cfg.srs.domain.lower(), helo_name(cfg)} | {k.domain for k in dkim_keys if k.state != "retired"}
    for name in cfg.spf.no_mail_domains:
        if name.rstrip(".").lower() in sending:
            raise ConfigError(f"spf.no_mail_domains: {name} sends mail (the SRS domain, HELO name or a signing domain)")


def _dkim_keys(cfg: Config) -> tuple[Any, ...]:
    """The signing table's keys, each read once here: ``dkim.selector``/``key_file``
    (one key of the forwarder's domain, always active), then every ``[[dkim.keys]]``
    entry (key_file default ``key_directory/<domain>/<selector>.private``).

    :returns: ``srsd.mailauth.signing_table.TableKey`` objects, in config order.
    :raises ConfigError: naming the entry (``dkim.keys[N].key_file: ...``).
    """
    d = cfg.dkim
    if not (d.selector or d.keys or d.sign_subdomains):
        return ()  # nothing to load (and no crypto library to import)
    from srsd.mailauth.keys import DKIMKeyError, load_signing_key
    from srsd.mailauth.signing_table import NEXT, RETIRED, STATES, TableKey

    forwarder = (d.domain or cfg.srs.domain).lower()
    # (where, domain, selector, key file, algorithm or None = as the file says, state)
    entries = []
    if d.selector:
        entries.append(("dkim", forwarder, d.selector, d.key_file, d.algorithm, "active"))
    for number, entry in enumerate(d.keys, 1):
        where = f"dkim.keys[{number}]"
        domain = entry.domain.rstrip(".").lower()
        if not is_domain(domain):
            raise ConfigError(f"{where}.domain: {entry.domain!r} is not a domain name (required)")
        if not entry.selector or not _LABEL.match(entry.selector.replace(".", "a").replace("_", "a")):
            raise ConfigError(f"{where}.selector: {entry.selector!r} is not a DNS label (required)")
        if entry.state not in STATES:
            raise ConfigError(f"{where}.state: must be {', '.join(repr(s) for s in STATES)}")
        path = entry.key_file or os.path.join(d.key_directory, domain, f"{entry.selector}.private")
        entries.append((where, domain, entry.selector, path, None, entry.state))
    keys: list[TableKey] = []
    seen: dict[tuple[str, str], str] = {}
    for where, domain, selector, path, algorithm, state in entries:
        name = "dkim.selector" if where == "dkim" else where
        other = seen.setdefault((domain, selector.lower()), name)
        if other != name:
            raise ConfigError(f"{name}: {selector}._domainkey.{domain} is configured twice (also {other})")
        try:
            key = load_signing_key(path, algorithm)
        except DKIMKeyError as exc:
            raise ConfigError(f"{where}.key_file: {exc}") from None
        keys.append(TableKey(domain, selector, key, state, name))
    signing_domains = {k.domain for k in keys if k.state != RETIRED}
    for parent in _check_domain_entries(d.sign_subdomains, "dkim.sign_subdomains"):
        if parent.startswith("."):
            raise ConfigError(f"dkim.sign_subdomains: {parent!r}: name the parent domain itself (example.org)")
        if parent.rstrip(".").lower() not in signing_domains:
            raise ConfigError(f"dkim.sign_subdomains: {parent} has no active or next key")
    forwarder_types = {k.key_type for k in keys if k.domain == forwarder and k.state in ("active", NEXT)}
    if d.arc and forwarder_types and "rsa" not in forwarder_types:
        raise ConfigError(
            f"dkim.arc: ARC sets are rsa-sha256 only (RFC 8617); {forwarder} has no RSA key: add one or set arc = false"
        )
    return tuple(keys)


def _validate_dmarc(cfg: Config) -> tuple[DMARCSettings, list[str]]:
    """Check [dmarc]: the settings with the sealers normalised, and what to warn about."""
    dm = cfg.dmarc
    if dm.action not in DMARC_ACTIONS:
        raise ConfigError(f"dmarc.action: must be one of {', '.join(repr(a) for a in DMARC_ACTIONS)}")
    if dm.temperror not in DMARC_TEMPERROR_ACTIONS:
        raise ConfigError(f"dmarc.temperror: must be one of {', '.join(repr(a) for a in DMARC_TEMPERROR_ACTIONS)}")
    sealers = []
    for sealer in dm.trusted_arc_sealers:
        name = sealer.strip().rstrip(".").lower()
        if not is_domain(name):
            raise ConfigError(f"dmarc.trusted_arc_sealers: {sealer!r} is not a domain name (the ARC-Seal d=)")
        sealers.append(name)
    warnings = []
    if dm.enabled and dm.action != "header" and not cfg.listen.milter:
        # a warning, not an error: one file may serve hosts with and without the milter
        warnings.append(f"dmarc.action: {dm.action!r} has no effect without listen.milter (the milter evaluates DMARC)")
    return dataclasses.replace(dm, trusted_arc_sealers=tuple(sealers)), warnings


def _validate_postfix(pf: PostfixSettings) -> None:
    if not pf.queue_directory.startswith("/"):
        raise ConfigError(f"postfix.queue_directory: {pf.queue_directory!r} is not an absolute path")
    host, _, port = pf.forward_pass.rpartition(":")
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        address = None
    # An smtpd that relays for its clients: only this host may be one (IPv4 loopback keeps
    # the master.cf service name and the next hop in their plainest syntax).
    if address is None or not address.is_loopback or not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(
            f"postfix.forward_pass: {pf.forward_pass!r} must be ADDRESS:PORT with an IPv4 loopback "
            "address, e.g. 127.0.0.1:10006"
        )


def _validate_store(cfg: Config) -> tuple[StoreSettings, str]:
    """Check [store]; the settings with sqlite_path resolved, and the Redis password read."""
    from srsd.srs_alias import alias_local_length

    st = cfg.store
    if st.backend not in ("sqlite", "redis", "none"):
        raise ConfigError("store.backend: must be 'sqlite', 'redis' or 'none'")
    shortest = alias_local_length(cfg.srs.hash_length)
    if not shortest <= st.max_local_part <= 512:
        raise ConfigError(
            f"store.max_local_part: must be {shortest}..512 (an alias address's local part is "
            f"{shortest} octets with srs.hash_length = {cfg.srs.hash_length})"
        )
    if not 1 <= st.max_new_per_day <= 10**9:
        raise ConfigError("store.max_new_per_day: must be 1..1000000000 (store.backend = 'none' never aliases)")
    if not 0 < st.timeout <= 30:
        raise ConfigError("store.timeout: must be more than 0 and at most 30 seconds")
    if not 1 <= st.threads <= 64:
        raise ConfigError("store.threads: must be 1..64")
    if not 1 <= st.redis_port <= 65535:
        raise ConfigError("store.redis_port: must be 1..65535")
    if st.redis_db < 0:
        raise ConfigError("store.redis_db: must be >= 0")
    if st.redis_tls and st.redis_unix_socket:
        raise ConfigError("store.redis_tls: TLS is for TCP; a unix socket is reached without it")
    if bool(st.redis_tls_cert_file) != bool(st.redis_tls_key_file):
        raise ConfigError("store.redis_tls_key_file: a client certificate needs its key, and the other way round")
    for key in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file"):
        path = getattr(st, key)
        if path and not st.redis_tls:
            raise ConfigError(f"store.{key}: only used with store.redis_tls = true")
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"store.{key}: cannot read {path}")
    password = ""
    if st.redis_password_file:
        lines = _read_lines(st.redis_password_file, "store.redis_password_file")
        if not lines or not lines[0]:
            raise ConfigError(f"store.redis_password_file: no password on the first line of {st.redis_password_file}")
        password = lines[0]
    if st.backend == "sqlite" and not st.sqlite_path:
        st = dataclasses.replace(st, sqlite_path=str(state_directory() / "aliases.sqlite"))
    return st, password


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
