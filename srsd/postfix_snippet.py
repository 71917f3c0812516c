"""Postfix configuration lines for a loaded srsd config (``srsd postfix-snippet``).

Each MODE's main.cf lines (and, for ``forwarded-only``, its master.cf lines) are printed
from the config's own ``[listen]`` endpoints and ``[postfix]`` settings, so the ports and
socket paths Postfix is told are the ones srsd listens on. postfix-snippets/ holds this
module's output for the default config; docs/forwarding-modes.md explains the modes.

Endpoint strings are Twisted's (``tcp:10003:interface=127.0.0.1``, ``unix:/path:mode=660``).
Twisted parses them with private functions only, so :func:`split_endpoint` reads the
two forms srsd can tell Postfix about: ``tcp``/``tcp6`` and ``unix``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from srsd.config import Config, ConfigError

__all__ = ["MODES", "SnippetError", "PostfixEndpoint", "split_endpoint", "postfix_endpoint", "snippet"]

#: every MODE ``srsd postfix-snippet`` prints, in the order of its help text
MODES = ("forwarded-only", "tcp_table", "socketmap", "policy", "milter")


class SnippetError(ConfigError):
    """The config lacks what the MODE needs, or names an endpoint Postfix cannot reach;
    the message starts with the key."""


@dataclass(frozen=True)
class PostfixEndpoint:
    """Where Postfix connects to one srsd endpoint.

    ``kind`` is ``inet`` or ``unix``; ``address`` is ``HOST:PORT`` (IPv6 in brackets) or
    a socket path, relative to Postfix's queue directory when the socket is below it.
    """

    key: str  # the config key, "listen.socketmap"
    description: str  # its value, the Twisted endpoint string
    kind: str
    address: str

    @property
    def spec(self) -> str:
        """Postfix's ``inet:HOST:PORT`` / ``unix:PATH`` form (milters, policy, socketmap)."""
        return f"{self.kind}:{self.address}"

    @property
    def relative(self) -> bool:
        return self.kind == "unix" and not self.address.startswith("/")


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """A Twisted endpoint string as (type, positional args, keyword args).

    Fields are separated by ``:``; a backslash escapes the next character (``\\:``);
    a field ``key=value`` is a keyword argument (Twisted's ``serverFromString`` syntax).
    """
    fields, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append("\\" + char)  # kept escaped until the key/value split
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))

    def unescape(text: str) -> str:
        return text.replace("\\\\", "\0").replace("\\", "").replace("\0", "\\")

    kind, args, kwargs = unescape(fields[0]), [], {}
    for item in fields[1:]:
        # the first "=" not escaped splits a keyword argument
        position = next((i for i in range(len(item)) if item[i] == "=" and (i == 0 or item[i - 1] != "\\")), -1)
        if position > 0:
            kwargs[unescape(item[:position])] = unescape(item[position + 1 :])
        else:
            args.append(unescape(item))
    return kind, args, kwargs


def _connect_host(interface: str, family: str, key: str) -> str:
    if not interface:
        interface = "::" if family == "tcp6" else "0.0.0.0"
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        raise SnippetError(f"{key}: interface {interface!r} is not an IP address") from None
    if address.is_unspecified:  # srsd listens everywhere: Postfix comes over loopback
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


def postfix_endpoint(config: Config, name: str) -> PostfixEndpoint:
    """Where Postfix reaches ``[listen] name``.

    :raises SnippetError: naming ``listen.NAME`` when it is disabled or not ``tcp:``,
        ``tcp6:`` or ``unix:`` (``systemd:`` sockets: the address is in the .socket unit).
    """
    key = f"listen.{name}"
    description = getattr(config.listen, name)
    if not description:
        raise SnippetError(f"{key}: disabled (empty); set it, e.g. {_EXAMPLES[name]}")
    kind, args, kwargs = split_endpoint(description)
    if kind in ("tcp", "tcp6"):
        port = kwargs.get("port") or (args[0] if args else "")
        interface = kwargs.get("interface") or (args[1] if len(args) > 1 else "")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SnippetError(f"{key}: {description!r} has no TCP port")
        return PostfixEndpoint(key, description, "inet", f"{_connect_host(interface, kind, key)}:{int(port)}")
    if kind == "unix":
        path = kwargs.get("address") or (args[0] if args else "")
        if not path.startswith("/"):
            raise SnippetError(f"{key}: {description!r}: give the socket as an absolute path")
        path = os.path.normpath(path)
        queue = os.path.normpath(config.postfix.queue_directory)
        if os.path.commonpath([path, queue]) == queue and path != queue:
            # Postfix daemons run in the queue directory, chrooted or not.
            path = os.path.relpath(path, queue)
        return PostfixEndpoint(key, description, "unix", path)
    raise SnippetError(
        f"{key}: {description!r}: Postfix can only be pointed at a tcp: or unix: endpoint; "
        f"for {kind}: write the Postfix side by hand (for socket activation: the address in the .socket unit)"
    )


_EXAMPLES = {
    "tcp_forward": '"tcp:10001:interface=127.0.0.1"',
    "tcp_reverse": '"tcp:10002:interface=127.0.0.1"',
    "socketmap": '"tcp:10003:interface=127.0.0.1"',
    "policy": '"tcp:10004:interface=127.0.0.1"',
    "milter": '"unix:/var/spool/postfix/srsd/milter.sock:mode=660"',
}


def _tcp_table(endpoint: PostfixEndpoint) -> str:
    if endpoint.kind != "inet":
        raise SnippetError(
            f"{endpoint.key}: {endpoint.description!r}: Postfix's tcp_table client speaks TCP only; "
            "use a tcp: endpoint, or the socketmap endpoint for a unix socket"
        )
    return f"tcp:{endpoint.address}"


def _listen_lines(*endpoints: PostfixEndpoint) -> str:
    return "\n".join(f"#     [listen] {e.key.split('.', 1)[1]} = {_quoted(e.description)}" for e in endpoints)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _outside_queue_note(endpoint: PostfixEndpoint, config: Config) -> str:
    if endpoint.kind != "unix" or endpoint.relative:
        return ""
    return (
        f"# NOTE: {endpoint.address} is outside postfix.queue_directory ({config.postfix.queue_directory}):\n"
        "# chrooted Postfix daemons (Debian's default for smtpd) cannot reach it. Put the socket\n"
        "# below the queue directory, or run those services with chroot = n.\n"
    )


@dataclass(frozen=True)
class _Maps:
    """srsd's forward and reverse maps as Postfix table names, and what they come from."""

    forward: str
    reverse: str
    endpoints: tuple[PostfixEndpoint, ...]
    notes: str


def _socketmap_maps(config: Config) -> _Maps:
    e = postfix_endpoint(config, "socketmap")
    return _Maps(f"socketmap:{e.spec}:forward", f"socketmap:{e.spec}:reverse", (e,), _outside_queue_note(e, config))


def _tcp_table_maps(config: Config) -> _Maps:
    forward, reverse = postfix_endpoint(config, "tcp_forward"), postfix_endpoint(config, "tcp_reverse")
    return _Maps(_tcp_table(forward), _tcp_table(reverse), (forward, reverse), "")


def _canonical_lines(maps: _Maps) -> str:
    return f"""\
# Envelope sender of outgoing mail -> SRS0/SRS1 address at the SRS domain.
sender_canonical_maps = {maps.forward}
sender_canonical_classes = envelope_sender

{_reverse_lines(maps)}"""


def _reverse_lines(maps: _Maps) -> str:
    return f"""\
# Bounces to an SRS address -> back to the original sender.
# header_recipient also restores SRS addresses in To:/Cc: of those bounces.
recipient_canonical_maps = {maps.reverse}
recipient_canonical_classes = envelope_recipient,header_recipient
"""


def _main_tcp_table(config: Config) -> str:
    maps = _tcp_table_maps(config)
    return f"""\
# srsd over tcp_table: one port per direction (PostSRSd 1.x compatible).
# Printed by `srsd postfix-snippet tcp_table` for srsd's
{_listen_lines(*maps.endpoints)}
# Paste into /etc/postfix/main.cf, then `postfix reload`. Every copy of every message
# gets the SRS sender, local mailboxes too: see forwarded-only (docs/forwarding-modes.md).

{_canonical_lines(maps)}"""


def _main_socketmap(config: Config) -> str:
    maps = _socketmap_maps(config)
    return f"""\
# srsd over socketmap: one endpoint, map names "forward" and "reverse"
# (PostSRSd 2.x compatible). Printed by `srsd postfix-snippet socketmap` for srsd's
{_listen_lines(*maps.endpoints)}
# Paste into /etc/postfix/main.cf, then `postfix reload`. Every copy of every message
# gets the SRS sender, local mailboxes too: see forwarded-only (docs/forwarding-modes.md).
#
# A unix socket works too: srsd socketmap = "unix:/var/spool/postfix/srsd/srsd.sock:mode=666",
# then print this again. A socket below the Postfix queue directory is written relative to
# it (socketmap:unix:srsd/srsd.sock:forward): Postfix daemons run in that directory,
# chrooted (Debian's default master.cf) or not, so the same name works for both.
{maps.notes}
{_canonical_lines(maps)}"""


def _main_policy(config: Config) -> str:
    e = postfix_endpoint(config, "policy")
    if e.kind == "unix":
        alternative = '# Over TCP instead: srsd policy = "tcp:10004:interface=127.0.0.1", then print this again.'
    else:
        alternative = (
            '# A unix socket instead: srsd policy = "unix:/var/spool/postfix/private/srsd-policy:mode=660"\n'
            "# (srsd in the postfix group), then print this again; below the queue directory it is\n"
            "# written relative to it (unix:private/srsd-policy)."
        )
    return f"""\
# srsd as SPF policy service for incoming mail (replaces postfix-policyd-spf-python).
# Printed by `srsd postfix-snippet policy` for srsd's
{_listen_lines(e)}
# Paste into /etc/postfix/main.cf, then `postfix reload`.
# What is checked and answered: docs/policy.md.
{_outside_queue_note(e, config)}
# Always AFTER reject_unauth_destination (SMTPD_POLICY_README): an SPF "pass" is no
# permission to relay. Local and authenticated clients are let through before it,
# so srsd is asked about mail from the outside only (check_policy_service {{ ... }}
# needs Postfix 3.0 or later).
smtpd_recipient_restrictions =
    permit_mynetworks,
    permit_sasl_authenticated,
    reject_unauth_destination,
    check_policy_service {{ {e.spec}, timeout=30s, default_action=DUNNO }}

# srsd runs on its own, not under spawn(8): no policy_time_limit is needed (that
# parameter only limits a policy program started by master.cf's spawn service).
#
# timeout: how long smtpd waits for srsd's answer (default 100s). srsd answers
# within [spf] check_budget (10 s) plus a little; 30s leaves room.
# default_action: what smtpd does when srsd cannot be reached or does not answer
# (after smtpd_policy_service_try_limit = 2 attempts). Postfix's own default,
# "451 4.3.5 Server configuration problem", defers all mail while srsd is down;
# DUNNO accepts it unchecked, as if the line were not there. With
# mail_from_reject/helo_reject set, you may prefer to keep Postfix's default.
#
{alternative}
"""


def _main_milter(config: Config) -> str:
    e = postfix_endpoint(config, "milter")
    if e.kind == "unix":
        directory = os.path.dirname(os.path.join(config.postfix.queue_directory, e.address))
        socket_text = f"""\
# The socket's directory, made once as
#     install -d -o srsd -g postfix -m 2750 {directory}
# (set-group-ID: the socket then belongs to group postfix, so smtpd and cleanup, user
# postfix, can connect; without it the socket has srsd's group and Postfix logs
# "Permission denied"). Give the socket mode=660 in srsd's endpoint string.
{_outside_queue_note(e, config)}
# A unix socket, written relative to the queue directory: smtpd and cleanup run in
# that directory, chrooted (Debian's default for smtpd) or not, so the relative
# path works for both, where an absolute one breaks under chroot. Over TCP
# (srsd: milter = "tcp:10005:interface=127.0.0.1", then print this again) it
# works too; srsd sets TCP_NODELAY on its side, and without it on both sides a
# loopback milter is ~7x slower (Nagle + delayed ACK, measured with OpenDKIM)."""
    else:
        socket_text = """\
# Over TCP: srsd sets TCP_NODELAY on its side (a loopback milter without it on both
# sides is ~7x slower: Nagle + delayed ACK, measured with OpenDKIM). A unix socket in
# the queue directory avoids TCP altogether: srsd milter =
# "unix:/var/spool/postfix/srsd/milter.sock:mode=660", then print this again."""
    return f"""\
# srsd as milter: DKIM signing, ARC sealing and Authentication-Results (docs/milter.md).
# Printed by `srsd postfix-snippet milter` for srsd's
{_listen_lines(e)}
# Paste into /etc/postfix/main.cf, then `postfix reload`.
#
{socket_text}
smtpd_milters = {e.spec}
# Mail submitted with sendmail(1) (via pickup). srsd sees it as client 127.0.0.1,
# name and HELO "localhost". Postfix's own bounces and notices pass through
# non_smtpd_milters only with internal_mail_filter_classes = bounce, notify.
non_smtpd_milters = {e.spec}

# The protocol Postfix 3.x speaks (the default); srsd asks it to skip the events
# it does not need and to send the rest without waiting for a reply to each.
milter_protocol = 6

# When srsd cannot be reached, breaks the protocol or does not answer in time:
# tempfail = the client gets 451 4.7.1 and retries later. Nothing leaves unsigned
# and nothing is lost. (accept would pass mail through unsigned; Postfix's default
# is tempfail, set here so that it is not changed for another milter by accident.)
# To give srsd its own setting while other milters keep another one (Postfix 3.0+):
#   smtpd_milters = {{ {e.spec}, default_action = tempfail }}, inet:...
milter_default_action = tempfail

# Macros: srsd asks Postfix for the ones it uses while negotiating, for its own
# connection only, so the milter_*_macros lists need no change. For reference,
# what it asks for (the same as Postfix's defaults plus {{client_addr}} {{client_name}}):
#   milter_connect_macros = j {{daemon_name}} {{daemon_addr}} {{client_addr}} {{client_name}} _
#   milter_helo_macros = {{tls_version}} {{cipher}} {{cipher_bits}} {{cert_subject}} {{cert_issuer}}
#   milter_mail_macros = i {{auth_type}} {{auth_authen}} {{auth_author}} {{mail_addr}}
#   milter_rcpt_macros = i {{rcpt_addr}}
#   milter_data_macros = i
#   milter_end_of_header_macros = i
#   milter_end_of_data_macros = i
# {{auth_authen}} tells SASL-authenticated submissions apart; i is the queue ID in
# srsd's log lines; {{daemon_name}} is $milter_macro_daemon_name (default $myhostname),
# which master.cf can set per service, e.g. for the submission port:
#   submission inet n - y - - smtpd -o milter_macro_daemon_name=ORIGINATING

# Timeouts (Postfix defaults, fine with srsd): connect 30s, each event 30s, the
# whole message 300s. srsd answers within its handler timeout (30 s), else it
# answers per [dkim] on_error.
#milter_connect_timeout = 30s
#milter_command_timeout = 30s
#milter_content_timeout = 300s
"""


def _forwarded_only_maps(config: Config) -> _Maps:
    """socketmap when enabled (one endpoint, an immediate 4xx while srsd is down), else tcp_table."""
    if config.listen.socketmap:
        return _socketmap_maps(config)
    if config.listen.tcp_forward and config.listen.tcp_reverse:
        return _tcp_table_maps(config)
    raise SnippetError(
        "listen.socketmap: forwarded-only needs srsd's forward and reverse maps: enable listen.socketmap "
        "(or listen.tcp_forward and listen.tcp_reverse)"
    )


def _main_forwarded_only(config: Config) -> str:
    maps = _forwarded_only_maps(config)
    forward_pass = config.postfix.forward_pass
    nexthop = "[{}]:{}".format(*forward_pass.split(":"))  # brackets: no MX lookup
    return f"""\
# srsd forwarded-only: the envelope sender is rewritten only for copies that leave this
# host, after every alias expansion (virtual_alias_maps, aliases(5), .forward); local and
# virtual mailboxes keep the original sender. How and at what cost: docs/forwarding-modes.md.
# Printed by `srsd postfix-snippet forwarded-only` for srsd's
{_listen_lines(*maps.endpoints)}
#     [postfix] forward_pass = {_quoted(forward_pass)}
# Paste into /etc/postfix/main.cf, add the lines of `srsd postfix-snippet forwarded-only
# --master` to master.cf, then `postfix reload`.
#
# Remove any sender_canonical_maps naming srsd from main.cf: here srsd's forward map is
# asked by the second pass's cleanup alone (master.cf), never for mail that stays here.
{maps.notes}
# First pass, every message. A forged or expired SRS address is "not found": as the SRS
# domain is local, smtpd refuses it at RCPT (550 5.1.1 User unknown).
{_reverse_lines(maps)}
# Every copy for an off-host recipient goes to the second pass: srsd-forward (master.cf)
# hands it to the loopback smtpd at {forward_pass}, whose own cleanup rewrites the
# envelope sender; that pass sends it on with content_filter = smtp:$relayhost (the
# relayhost, else the recipient's MX). The local, virtual and relay transports
# (mailboxes, relay_domains) stay as they are. A transport_maps or
# sender_dependent_default_transport_maps entry overrides this for its destinations:
# point it at srsd-forward:{nexthop} if their copies must leave rewritten.
default_transport = srsd-forward:{nexthop}

# Address probes (reject_unverified_recipient) skip the second pass: its smtpd accepts
# every recipient, so a probe through it would prove nothing.
address_verify_default_transport = smtp
"""


def _master_forwarded_only(config: Config) -> str:
    maps = _forwarded_only_maps(config)
    forward_pass = config.postfix.forward_pass
    return f"""\
# srsd forwarded-only, the master.cf part: the second pass (docs/forwarding-modes.md).
# Printed by `srsd postfix-snippet forwarded-only --master` for srsd's
{_listen_lines(*maps.endpoints)}
#     [postfix] forward_pass = {_quoted(forward_pass)}
# Append to /etc/postfix/master.cf, with the main.cf lines of `srsd postfix-snippet
# forwarded-only`, then `postfix reload`. Logs: postfix/srsd-forward/smtp is the hop into
# the second pass ("status=sent (250 2.0.0 Ok: queued as NEWID)"), postfix/srsd/smtpd and
# postfix/srsd/cleanup the second pass, which then leaves through the usual postfix/smtp.

# The hop from the first pass into the second. Its own myhostname: the second pass
# greets with $myhostname, and an SMTP client greeted with its own name refuses with
# "mail for ... loops back to myself". No TLS, SASL, generic mapping or bind address
# on this loopback hop.
srsd-forward unix -     -       n       -       -       smtp
  -o syslog_name=postfix/srsd-forward
  -o myhostname=localhost
  -o smtp_tls_security_level=none
  -o smtp_sasl_auth_enable=no
  -o smtp_generic_maps=
  -o smtp_bind_address=
  -o smtp_bind_address6=

# The second pass: an smtpd on loopback for srsd-forward alone, relaying for loopback
# only, without restrictions, milters, header/body checks or a before-queue filter (the
# first pass ran those), TLS or SASL. local_header_rewrite_clients is empty: headers
# stay as the first pass left them. content_filter sends what it queues out through
# the smtp transport (relayhost, else the recipient's MX): routed normally, it would
# come back here.
{forward_pass} inet n       -       n       -       -       smtpd
  -o syslog_name=postfix/srsd
  -o cleanup_service_name=srsd-cleanup
  -o content_filter=smtp:$relayhost
  -o mynetworks=127.0.0.0/8
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_data_restrictions=
  -o smtpd_end_of_data_restrictions=
  -o smtpd_proxy_filter=
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o local_header_rewrite_clients=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters

# The second pass's cleanup: the one place srsd's forward map is asked. Every other
# address mapping ran in the first pass and must not run twice (virtual aliases
# expanded again, automatic BCCs added again, bounces reversed again).
srsd-cleanup unix n     -       n       -       0       cleanup
  -o syslog_name=postfix/srsd
  -o sender_canonical_maps={maps.forward}
  -o sender_canonical_classes=envelope_sender
  -o canonical_maps=
  -o recipient_canonical_maps=
  -o virtual_alias_maps=
  -o always_bcc=
  -o sender_bcc_maps=
  -o recipient_bcc_maps=
"""


_MAIN = {
    "forwarded-only": _main_forwarded_only,
    "tcp_table": _main_tcp_table,
    "socketmap": _main_socketmap,
    "policy": _main_policy,
    "milter": _main_milter,
}
_MASTER = {"forwarded-only": _master_forwarded_only}


def snippet(config: Config, mode: str, *, master: bool = False) -> str:
    """The main.cf (*master*: master.cf) lines that wire *config*'s endpoints into Postfix.

    :param mode: one of :data:`MODES`.
    :raises SnippetError: the config lacks the endpoint *mode* needs, or Postfix cannot
        reach it (the message names the key).
    :raises ValueError: an unknown *mode*, or *master* for a mode without master.cf lines.
    """
    if mode not in _MAIN:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    if master:
        if mode not in _MASTER:
            raise ValueError(f"{mode} needs no master.cf lines (only {', '.join(_MASTER)} does)")
        return _MASTER[mode](config)
    return _MAIN[mode](config)
