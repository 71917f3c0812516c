"""The ``srsd`` command: serve, forward, reverse, spf, check-config."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from srsd.config import ConfigError
from srsd.rewrite import FOUND, rewriter_from_config

__all__ = ["main"]


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
        prog="srsd", description="SRS daemon for Postfix: tcp_table and socketmap lookups."
    )
    parser.add_argument("--version", action="version", version=f"srsd {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    _config_arg(serve)
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="processes sharing the sockets (default 1)")
    serve.add_argument("--inherit", help=argparse.SUPPRESS)  # worker processes only

    for name, text in (
        ("forward", "print the SRS address a sender is rewritten to"),
        ("reverse", "print the address an SRS address goes back to"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("address")
        _config_arg(p)

    spf = sub.add_parser("spf", help="evaluate SPF (RFC 7208 check_host) with srsd's resolver")
    spf.add_argument("ip", help="the client IP address")
    spf.add_argument("sender", help='MAIL FROM address; "" checks the HELO identity')
    spf.add_argument("--helo", default="", help="HELO/EHLO name (required for the HELO identity)")
    _config_arg(spf)

    check = sub.add_parser("check-config", help="validate the configuration and exit")
    _config_arg(check)
    return parser


def _fail(message: str, code: int = 1) -> int:
    print(f"srsd: {message}", file=sys.stderr)
    return code


def _rewrite(args: argparse.Namespace) -> int:
    from srsd.service import load

    rewriter = rewriter_from_config(load(args.config))
    answer = getattr(rewriter, args.command)(args.address)
    if answer.status != FOUND:
        return _fail(f"{args.command}: {args.address}: not rewritten: {answer.text}")
    print(answer.text)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from srsd.service import endpoint_specs, load

    config = load(args.config)
    rewriter_from_config(config)
    listeners = ", ".join(f"{spec.name}={desc}" for spec, desc in endpoint_specs(config))
    print(
        f"{config.source}: OK: SRS domain {config.srs.domain}, {len(config.secrets)} secret(s), "
        f"{len(config.local_domains)} local domain entries; {listeners}"
    )
    return 0


def _spf(args: argparse.Namespace) -> int:
    import ipaddress

    from srsd.dns import Resolver
    from srsd.service import load
    from srsd.spf import check_host

    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        return _fail(f"spf: {args.ip!r} is not an IP address", 2)
    if not args.sender and not args.helo:
        return _fail("spf: give a sender, or --helo NAME for the HELO identity", 2)
    config = load(args.config)
    resolver = Resolver(config.dns.nameservers, config.dns.timeout, config.dns.cache_size)
    result = check_host(
        resolver,
        args.ip,
        args.sender,
        args.helo or config.srs.domain,
        budget=config.spf.check_budget,
        receiver=config.spf.receiver or config.srs.domain,
    )
    print(result.result)
    print(result.explanation)
    if result.header:
        print(f"Received-SPF: {result.header}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``srsd`` command. :returns: the exit status (1 on any error)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from srsd.service import serve

            return serve(args.config, workers=args.workers, inherit=args.inherit)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "spf":
            return _spf(args)
        return _rewrite(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
