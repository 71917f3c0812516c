"""The ``srsd`` command: serve, forward, reverse, spf, check-config, dkim-keygen, dns-records,
check-dns, import-postsrsd, postfix-snippet."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from srsd.config import ConfigError, Needs
from srsd.rewrite import FOUND, TEMP, rewriter_from_config

__all__ = ["main"]

#: where PostSRSd keeps its settings: 1.x (Debian), 2.x (Debian package, upstream default)
POSTSRSD_FILES = ("/etc/default/postsrsd", "/etc/postsrsd.conf", "/usr/local/etc/postsrsd.conf")


def _version() -> str:
    try:
        return version("srsd")
    except PackageNotFoundError:
        return "unknown"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="TOML configuration (default: the embedded one, secret in the state directory)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srsd", description="Mail forwarding for Postfix: SRS lookups, SPF policy, DKIM/ARC milter."
    )
    parser.add_argument("--version", action="version", version=f"srsd {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    # Each command loads only the parts of the configuration it uses (needs=...).
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.set_defaults(needs=Needs.EVERYTHING)
    _config_arg(serve)
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes serving policy and milter, sharing the sockets (default: [daemon] workers; "
                       "0 there = one per CPU, at most 4, when policy is served, else 1)")  # fmt: skip
    serve.add_argument("--inherit", help=argparse.SUPPRESS)  # worker processes only
    serve.add_argument("--lookups", action="store_true", help=argparse.SUPPRESS)  # a lookup process
    serve.add_argument("--status-fd", type=int, help=argparse.SUPPRESS)  # a child's pipe to its parent

    for name, text in (
        ("forward", "print the SRS address a sender is rewritten to"),
        ("reverse", "print the address an SRS address goes back to"),
    ):
        p = sub.add_parser(name, help=text)
        p.set_defaults(needs=Needs.REWRITING)
        p.add_argument("address")
        _config_arg(p)

    spf = sub.add_parser("spf", help="evaluate SPF (RFC 7208 check_host) with srsd's resolver")
    spf.set_defaults(needs=Needs.NOTHING)  # [dns] and [spf] only
    spf.add_argument("ip", help="the client IP address")
    spf.add_argument("sender", help='MAIL FROM address; "" checks the HELO identity')
    spf.add_argument("--helo", default="", help="HELO/EHLO name (required for the HELO identity)")
    _config_arg(spf)

    check = sub.add_parser("check-config", help="validate the configuration and exit")
    check.set_defaults(needs=Needs.EVERYTHING)
    _config_arg(check)

    keygen = sub.add_parser("dkim-keygen", help="create a DKIM private key and print its DNS record")
    keygen.set_defaults(needs=Needs.NOTHING)  # no configuration at all
    keygen.add_argument("--domain", required=True, help="the signing domain (d=), e.g. your SRS domain")
    keygen.add_argument("--selector", required=True, help="the selector (s=); the key goes to DIR/SELECTOR.private")
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa", help="key type (default rsa)")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    where = keygen.add_mutually_exclusive_group()
    where.add_argument(
        "--key-directory",
        default="/etc/srsd/dkim",
        metavar="DIR",
        help="write DIR/DOMAIN/SELECTOR.private, the dkim.key_directory layout (default /etc/srsd/dkim)",
    )
    where.add_argument("--out", metavar="DIR", help="write DIR/SELECTOR.private instead")

    migrate = sub.add_parser("import-postsrsd", help="write an srsd config equivalent to PostSRSd's")
    migrate.set_defaults(needs=Needs.NOTHING)
    migrate.add_argument(
        "file",
        nargs="?",
        help=f"/etc/default/postsrsd (1.x) or postsrsd.conf (2.x); default: the first of {', '.join(POSTSRSD_FILES)}",
    )
    migrate.add_argument("-o", "--output", metavar="FILE", help="write the config here (not over an existing file)")

    records = sub.add_parser("dns-records", help="print the DNS records to publish (SPF, DKIM keys, DMARC)")
    records.set_defaults(needs=Needs.SRS_DOMAIN | Needs.DKIM_KEY)
    _config_arg(records)
    check_dns = sub.add_parser("check-dns", help="check what is published in DNS against dns-records; exit 1 if not")
    check_dns.set_defaults(needs=Needs.SRS_DOMAIN | Needs.DKIM_KEY)
    _config_arg(check_dns)

    from srsd.postfix_snippet import MODES

    snippet = sub.add_parser("postfix-snippet", help="print the Postfix lines that wire this config's endpoints in")
    snippet.add_argument("mode", choices=MODES, help="forwarded-only (docs/forwarding-modes.md) or one endpoint")
    snippet.add_argument("--master", action="store_true", help="the master.cf lines instead (forwarded-only)")
    snippet.set_defaults(needs=Needs.NOTHING)
    _config_arg(snippet)
    return parser


def _fail(message: str, code: int = 1) -> int:
    print(f"srsd: {message}", file=sys.stderr)
    return code


def _rewrite(args: argparse.Namespace) -> int:
    """The daemon's decision (SRSMaps, with the alias store called directly), without SPF-aware keeping."""
    from srsd.alias_store import DeferredStore, open_store
    from srsd.service import load
    from srsd.srs_maps import SRSMaps

    config = load(args.config, args.needs)
    store = open_store(config)
    maps = SRSMaps(rewriter_from_config(config), store=DeferredStore(store) if store else None)
    try:
        result = maps.lookup(args.command, args.address)
    finally:
        if store is not None:
            store.close()
    if isinstance(result, defer.Deferred):
        outcome: list[Any] = []
        result.addBoth(outcome.append)  # fired already: the store was called at once
        result = outcome[0]
        if isinstance(result, Failure):
            return _fail(f"{args.command}: {args.address}: {result.getErrorMessage()}")
    if result.status == TEMP:
        return _fail(f"{args.command}: {args.address}: temporary failure: {result.text}", 75)  # EX_TEMPFAIL
    if result.status != FOUND:
        return _fail(f"{args.command}: {args.address}: not rewritten: {result.text}")
    print(result.text)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from srsd.alias_store import StoreError, open_store
    from srsd.privileges import target_account
    from srsd.service import endpoint_specs, load

    config = load(args.config, args.needs)
    rewriter_from_config(config)
    for warning in config.warnings:
        print(f"srsd: warning: {warning}", file=sys.stderr)
    listeners = ", ".join(f"{spec.name}={desc}" for spec, desc in endpoint_specs(config))
    account = target_account(config.daemon)
    user = f"switches to user {account.name} once bound" if account else "keeps the user it is started as"
    store = open_store(config)
    try:
        aliases = store.check() if store is not None else "none (long senders keep their long SRS address)"
    except StoreError as exc:
        st = config.store
        key = "sqlite_path" if st.backend == "sqlite" else "redis_unix_socket" if st.redis_unix_socket else "redis_host"
        key = f"store.{key}"
        return _fail(f"configuration error: {key}: alias store not reachable: {exc}")
    finally:
        if store is not None:
            store.close()
    print(
        f"{config.source}: OK: SRS domain {config.srs.domain}, {len(config.secrets)} secret(s), "
        f"{len(config.local_domains)} local domain entries; {listeners}; {user}; alias store {aliases}"
    )
    return 0


def _spf(args: argparse.Namespace) -> int:
    import ipaddress

    from srsd.config import host_domain
    from srsd.dns import Resolver
    from srsd.service import load
    from srsd.spf import check_host

    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        return _fail(f"spf: {args.ip!r} is not an IP address", 2)
    if not args.sender and not args.helo:
        return _fail("spf: give a sender, or --helo NAME for the HELO identity", 2)
    config = load(args.config, args.needs)
    resolver = Resolver(config.dns.nameservers, config.dns.timeout, config.dns.cache_size)
    result = check_host(
        resolver,
        args.ip,
        args.sender,
        args.helo or config.srs.domain or host_domain(),
        budget=config.spf.check_budget,
        receiver=config.spf.receiver or config.srs.domain or host_domain(),
    )
    print(result.result)
    print(result.explanation)
    if result.header:
        print(f"Received-SPF: {result.header}")
    return 0


def _dkim_keygen(args: argparse.Namespace) -> int:
    import os

    from srsd.config import is_domain
    from srsd.mailauth.keys import DKIMKeyError, dns_record_name, generate_key, zone_file_txt

    domain = args.domain.rstrip(".").lower()
    if not is_domain(domain):
        return _fail(f"dkim-keygen: --domain {args.domain!r} is not a domain name", 2)
    if not args.selector or "/" in args.selector or args.selector.startswith("."):
        return _fail(f"dkim-keygen: --selector {args.selector!r} is not a DNS label", 2)
    algorithm = "rsa-sha256" if args.algorithm == "rsa" else "ed25519-sha256"
    directory = args.out or os.path.join(args.key_directory, domain)
    path = os.path.join(directory, f"{args.selector}.private")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        key = generate_key(path, algorithm, args.bits)
    except OSError as exc:
        return _fail(f"dkim-keygen: cannot create {directory}: {exc.strerror}")
    except DKIMKeyError as exc:
        return _fail(f"dkim-keygen: {exc}")
    size = f", {key.bits} bits" if key.key_type == "rsa" else ""
    print(f"; wrote {path} ({algorithm}{size}, mode 0600): make it readable by the user srsd runs as", file=sys.stderr)
    print(
        "; srsd config (docs/dkim.md \"Key rotation\"): publish the record below, then add\n"
        f';   [[dkim.keys]]\n;   domain = "{domain}"\n;   selector = "{args.selector}"\n'
        f';   key_file = "{path}"\n;   state = "next"      # signs once the record is visible; then reload',
        file=sys.stderr,
    )
    print(f"{dns_record_name(args.selector, domain)}. IN TXT {zone_file_txt(key.txt_record())}")
    return 0


def _import_postsrsd(args: argparse.Namespace) -> int:
    import os

    from srsd.migrate import MigrationError, import_postsrsd, render

    path = args.file or next((p for p in POSTSRSD_FILES if os.path.exists(p)), POSTSRSD_FILES[0])
    try:
        with open(path, encoding="utf-8") as fh:
            text = render(import_postsrsd(fh.read()), path)
    except OSError as exc:
        return _fail(f"import-postsrsd: cannot read {path}: {exc.strerror}")
    except (MigrationError, UnicodeDecodeError) as exc:
        return _fail(f"import-postsrsd: {path}: {exc}")
    if not args.output:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "x", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        return _fail(f"import-postsrsd: cannot write {args.output}: {exc.strerror}")
    print(f"; wrote {args.output}: review it, then srsd check-config -c {args.output}", file=sys.stderr)
    return 0


def _dns_records(args: argparse.Namespace) -> int:
    from srsd.dns_records import zone_file
    from srsd.service import load

    for line in zone_file(load(args.config, args.needs)):
        print(line)
    return 0


def _check_dns(args: argparse.Namespace) -> int:
    from srsd.dns import Resolver
    from srsd.dns_check import check_dns
    from srsd.service import load

    config = load(args.config, args.needs)
    resolver = Resolver(config.dns.nameservers, config.dns.timeout, config.dns.cache_size)
    findings = check_dns(config, resolver)
    for finding in findings:
        print(finding)
    problems = sum(1 for f in findings if not f.ok)
    print(f"check-dns: {problems} problem(s) in {len(findings)} check(s)")
    return 1 if problems else 0


def _postfix_snippet(args: argparse.Namespace) -> int:
    from srsd.postfix_snippet import snippet
    from srsd.service import load

    try:
        text = snippet(load(args.config, args.needs), args.mode, master=args.master)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        return _fail(f"postfix-snippet: {exc}", 2)
    sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``srsd`` command. :returns: the exit status (1 on any error)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            if args.lookups:
                from srsd.lookup_loop import serve_lookups

                return serve_lookups(args.config, args.inherit or "", args.status_fd)
            from srsd.service import serve

            return serve(args.config, workers=args.workers, inherit=args.inherit, status_fd=args.status_fd)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "spf":
            return _spf(args)
        if args.command == "dkim-keygen":
            return _dkim_keygen(args)
        if args.command == "dns-records":
            return _dns_records(args)
        if args.command == "import-postsrsd":
            return _import_postsrsd(args)
        if args.command == "check-dns":
            return _check_dns(args)
        if args.command == "postfix-snippet":
            return _postfix_snippet(args)
        return _rewrite(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
