#!/usr/bin/env python3
"""DKIM signing, ARC sealing and verification speed: dkimpy 1.1.8 against srsd's own.

    python bench/dkim_signing.py [--seconds 2] [--size 10240]
    python bench/dkim_signing.py --postfix [--messages 500] [--rounds 3]   # needs root, postfix (+ opendkim)

In-process (one thread, no DNS): operations per second for a message of --size
bytes with dkimpy 1.1.8 as shipped (its own sign, ARC.sign, verify and arc_verify,
pure-Python RSA) and with srsd's signer, sealer and verifier (:mod:`srsd.mailauth.sign`,
:mod:`srsd.mailauth.verify`, RSA by ``cryptography``), for RSA-2048 DKIM signatures, ARC
sets, ed25519 signatures and DKIM verification (key in hand; dkimpy's row runs with
:mod:`srsd.mailauth.dkimpy_setup`'s OpenSSL RSA). Also the whole per-message work of a
forwarded message: verify its signature and ARC chain, seal, sign.

--postfix: messages/s through a private Postfix (tests/e2e/postfix_instance.py)
relaying forwarded mail to a loopback SMTP sink, over a unix-socket milter:
no milter; srsd's milter (MailAuth: SPF, DKIM verify, A-R, ARC seal, DKIM sign);
OpenDKIM 2.11 signing only (Debian ``opendkim``, when installed). Keys come from a
loopback DNS server. Every message srsd handled is then checked at the sink:
both DKIM signatures and the ARC chain must verify (dkimpy, and Mail::DKIM on a
sample), which shows that what srsd signed is byte for byte what Postfix sent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dkim

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # srsd from this checkout

from srsd.mailauth.canonical import forget_fields  # noqa: E402
from srsd.mailauth.dkimpy_setup import QUIET, forget_messages, install, pure_python_rsa  # noqa: E402
from srsd.mailauth.key_lookup import txt_lookup  # noqa: E402
from srsd.mailauth.keys import SigningKey, generate_key  # noqa: E402
from srsd.mailauth.message import message_bytes, split_message  # noqa: E402
from srsd.mailauth.results import authentication_results  # noqa: E402
from srsd.mailauth.sign import seal_message, sign_message  # noqa: E402
from srsd.mailauth.verify import ARCResult, verify_arc, verify_signatures  # noqa: E402

SIGNED = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type")


def sample_message(size: int) -> tuple[list[tuple[str, str]], bytes]:
    headers = [
        ("From", " Alice <alice@example.org>"),
        ("To", " forward-me@fwd.example"),
        ("Subject", " benchmark message"),
        ("Date", " Tue, 24 Nov 2026 12:00:00 +0000"),
        ("Message-ID", " <bench@example.org>"),
        ("MIME-Version", " 1.0"),
        ("Content-Type", " text/plain; charset=us-ascii"),
    ]
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return headers, body.rsplit(b"\r\n", 1)[0] + b"\r\n"


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Operations per second: median of 3 runs of about *seconds*/3 each."""
    fn()  # warm caches (key objects, imports)
    results = []
    for _ in range(3):
        n, started = 0, time.perf_counter()
        deadline = started + seconds / 3
        while True:
            fn()
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append(n / (now - started))
    return statistics.median(results)


def in_process(seconds: float, size: int) -> list[tuple[str, str, float]]:
    install()  # srsd's rows: as MailAuth runs (pure_python_rsa() gives dkimpy as shipped)
    directory = tempfile.mkdtemp(prefix="srsd-bench-dkim-")
    rsa_key = generate_key(os.path.join(directory, "rsa.private"))
    ed_key = generate_key(os.path.join(directory, "ed.private"), "ed25519-sha256")
    headers, body = sample_message(size)
    results = authentication_results("fwd.example", spf=("pass", "smtp.mailfrom", "example.org"),
                                        dkim_results=[], arc=ARCResult("none"))  # fmt: skip
    sealed_headers = [results, *headers]

    def sign(key: SigningKey = rsa_key) -> object:
        return sign_message(headers, body, key, "fwd.example", "sel", SIGNED)

    def seal() -> object:
        return seal_message(sealed_headers, body, rsa_key, "fwd.example", "sel", "fwd.example", SIGNED, cv="none")

    # the same with dkimpy's own signer and sealer (its message objects, authres for the AAR)
    def include(fields: list) -> list[bytes]:
        return [name.lower().encode() for name, _ in fields if name in SIGNED] + [b"from"]

    def dkimpy_sign(fields: list = headers, key: SigningKey = rsa_key) -> object:
        signer = dkim.DKIM(message_bytes(fields, body), logger=QUIET, signature_algorithm=key.algorithm.encode())
        return signer.sign(b"sel", b"fwd.example", key.dkimpy_key, canonicalize=(b"relaxed", b"relaxed"),
                           include_headers=include(fields))  # fmt: skip

    def dkimpy_seal(fields: list = sealed_headers) -> object:
        sealer = dkim.ARC(message_bytes(fields, body), logger=QUIET, signature_algorithm=b"rsa-sha256")
        return sealer.sign(b"sel", b"fwd.example", rsa_key.dkimpy_key, b"fwd.example", include_headers=include(fields))

    records = {b"sel._domainkey.fwd.example.": rsa_key.txt_record().encode()}
    signature = sign()
    arc_set = seal()
    signed_message = message_bytes([signature, *headers], body)
    incoming = [*arc_set, results, signature, *headers]
    forwarded = message_bytes(incoming, body)
    ours = authentication_results("fwd.example", spf=("pass", "smtp.mailfrom", "example.org"),
                                     dkim_results=[], arc=ARCResult("pass"))  # fmt: skip

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    signed_fields, forwarded_fields = split_message(signed_message), split_message(forwarded)

    def verify() -> object:
        return verify_signatures(*signed_fields, dnsfunc)

    def dkimpy_verify() -> object:
        return dkim.DKIM(signed_message, logger=QUIET).verify(dnsfunc=dnsfunc)

    def whole_forward() -> object:
        # what MailAuth does for a forwarded message with one signature and one ARC set
        forget_messages()  # a new message: its body and fields canonicalized once, counted
        forget_fields()
        verify_signatures(*forwarded_fields, dnsfunc)
        verify_arc(*forwarded_fields, dnsfunc)
        new_set = seal_message([ours, *incoming], body, rsa_key, "fwd.example", "sel", "fwd.example", SIGNED, cv="pass")
        return sign_message([*new_set, ours, *incoming], body, rsa_key, "fwd.example", "sel", SIGNED)

    def dkimpy_whole_forward() -> object:
        dkim.DKIM(forwarded, logger=QUIET).verify(dnsfunc=dnsfunc)
        dkim.arc_verify(forwarded, logger=QUIET, dnsfunc=dnsfunc)
        new_set = [line.decode().partition(":")[::2] for line in dkimpy_seal([ours, *incoming])]
        return dkimpy_sign([*[(n, v.removesuffix("\r\n")) for n, v in new_set], ours, *incoming])

    rows = []
    for label, fn, shipped in (("DKIM sign RSA-2048", sign, dkimpy_sign), ("ARC seal RSA-2048", seal, dkimpy_seal),
                               ("forwarded: verify+seal+sign", whole_forward, dkimpy_whole_forward)):  # fmt: skip
        with pure_python_rsa():
            rows.append((label, "dkimpy 1.1.8 as shipped", rate(shipped, seconds)))
        rows.append((label, "srsd", rate(fn, seconds)))
    rows.append(("DKIM sign ed25519", "dkimpy + PyNaCl", rate(lambda: dkimpy_sign(key=ed_key), seconds)))
    rows.append(("DKIM sign ed25519", "srsd (cryptography)", rate(lambda: sign(ed_key), seconds)))
    rows.append(("DKIM verify RSA-2048", "dkimpy + dkimpy_setup", rate(dkimpy_verify, seconds)))
    rows.append(("DKIM verify RSA-2048", "srsd", rate(verify, seconds)))
    return rows


# -- through Postfix -----------------------------------------------------------------------------------------


def _message(i: int, size: int) -> bytes:
    headers, body = sample_message(size)
    headers = [(n, f" <bench-{i}@example.org>" if n == "Message-ID" else v) for n, v in headers]
    headers = [(n, f" benchmark message {i}" if n == "Subject" else v) for n, v in headers]
    return message_bytes(headers, body)


SMTP_CLIENTS = 4  # --clients


def _send(port: int, messages: list[bytes], clients: int | None = None) -> None:
    import smtplib

    clients = clients or SMTP_CLIENTS
    chunks = [messages[i::clients] for i in range(clients)]

    def worker(chunk: list[bytes]) -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.example.org", timeout=60) as client:
            for data in chunk:
                client.sendmail("alice@example.org", ["forward-me@fwd.example"], data)

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _wait_for(sink, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.messages) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(sink.messages)} of {count} messages arrived")
        time.sleep(0.02)


def _clear(sink) -> None:
    with sink._changed:
        sink._messages.clear()


def _cpu_seconds(root: int | None) -> float:
    """CPU seconds (user + system) used so far by *root* and its children (0 without one)."""
    if root is None:
        return 0.0
    import lookups  # a sibling script in bench/

    table = lookups.proc_table()
    ticks = sum(table[pid][1] + table[pid][2] for pid in lookups.tree(root, table) if pid in table)
    return ticks / os.sysconf("SC_CLK_TCK")


def _run_postfix(label, sink, milter_cf, messages, size, milter_pid: int | None = None) -> tuple[float, float]:
    """(messages/s, the milter's CPU ms per message) of one run through a private Postfix."""
    from tests.e2e.postfix_instance import PostfixInstance

    instance = PostfixInstance(
        relay_port=sink.port,
        local_domains=["fwd.example"],
        virtual_aliases={"forward-me@fwd.example": "someone@remote.example"},
        extra_main_cf=milter_cf + "\nsmtpd_peername_lookup = no\n",
        label=f"bench-{label}",
    )
    instance.start()
    try:
        _clear(sink)
        _send(instance.smtpd_port, [_message(-1, size)], 1)  # warm up: processes, connections
        _wait_for(sink, 1, 60)
        _clear(sink)
        cpu, started = _cpu_seconds(milter_pid), time.monotonic()
        _send(instance.smtpd_port, [_message(i, size) for i in range(messages)])
        _wait_for(sink, messages, 300)
        elapsed, cpu = time.monotonic() - started, _cpu_seconds(milter_pid) - cpu
        return messages / elapsed, cpu * 1000 / messages
    finally:
        instance.stop()


def start_opendkim(directory: Path, key: SigningKey) -> tuple[object, str] | None:
    """OpenDKIM signing every message with *key* (d=fwd.example, s=sel) on a unix socket in
    *directory*: (its process, its milter address ``unix:PATH``); None when not installed."""
    import shutil
    import subprocess

    binary = shutil.which("opendkim") or ("/usr/sbin/opendkim" if os.path.exists("/usr/sbin/opendkim") else None)
    if binary is None:
        return None
    socket_path = directory / "opendkim.sock"
    (directory / "keytable").write_text(f"sel._domainkey.fwd.example fwd.example:sel:{key.path}\n")
    (directory / "signingtable").write_text("* sel._domainkey.fwd.example\n")
    (directory / "opendkim.conf").write_text(
        f"Mode s\nSocket local:{socket_path}\nKeyTable {directory / 'keytable'}\n"
        f"SigningTable refile:{directory / 'signingtable'}\nInternalHosts 127.0.0.1\n"
        "RequireSafeKeys false\nUMask 000\nCanonicalization relaxed/relaxed\nSyslog no\n"
        f"PidFile {directory / 'opendkim.pid'}\n"
    )
    process = subprocess.Popen([binary, "-f", "-x", str(directory / "opendkim.conf")])
    for _ in range(100):
        if socket_path.exists():
            break
        time.sleep(0.05)
    return process, f"unix:{socket_path}"


def through_postfix(
    messages: int,
    size: int,
    rounds: int = 3,
    workers: tuple[int, ...] = (1, 2),
    threads: tuple[int, ...] = (4,),
    arc: tuple[bool, ...] = (True,),
    processes: tuple[int, ...] = (0,),
) -> list:
    from srsd.dns import Resolver
    from tests.dnsserver import DNSServer
    from tests.e2e.smtp_sink import SmtpSink
    from tests.srsd_daemon import SrsdDaemon

    directory = Path(tempfile.mkdtemp(prefix="srsd-bench-postfix-"))
    directory.chmod(0o755)
    origin = generate_key(str(directory / "origin.private"))
    fwd = generate_key(str(directory / "fwd.private"))
    os.chmod(fwd.path, 0o644)  # OpenDKIM runs as its own user
    dns = DNSServer().start()
    dns.set_zone(
        {
            "example.org": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
            "s1._domainkey.example.org": [{"TXT": origin.txt_record()}],
            "sel._domainkey.fwd.example": [{"TXT": fwd.txt_record()}],
        }
    )
    resolver = Resolver([dns.address])
    # `srsd serve` as an admin runs it: the milter alone, on a unix socket, --workers N
    daemons = {}
    for n, t, jp, sealing in ((n, t, jp, a) for n in workers for t in threads for jp in processes for a in arc):
        name = f"srsd w{n}" + (f" t{t}" if len(threads) > 1 else "") + (f" p{jp}" if len(processes) > 1 else "")
        name += "" if sealing else " no-arc"
        workdir = directory / name.replace(" ", "-")
        workdir.mkdir()
        daemons[name] = SrsdDaemon(
            workdir,
            srs={"domain": "fwd.example"},
            endpoints=(),
            listen={"milter": f"unix:{workdir / 'milter.sock'}:mode=666"},
            sections={
                "dns": {"nameservers": [dns.address]},
                # the SMTP clients connect from 127.0.0.1: not trusted here, so their mail is forwarded mail
                "dkim": {
                    "selector": "sel",
                    "key_file": fwd.path,
                    "signed_headers": list(SIGNED),
                    "trusted_networks": [],
                    "threads": t,
                    "processes": jp,
                    "arc": sealing,
                },  # fmt: skip
            },
            workers=n,
        ).start()

    # Origin messages carry example.org's signature, as real incoming mail would.
    def signed(i: int) -> bytes:
        headers, body = sample_message(size)
        headers = [(n, f" <bench-{i}@example.org>" if n == "Message-ID" else v) for n, v in headers]
        signature = sign_message(headers, body, origin, "example.org", "s1", SIGNED)
        return message_bytes([signature, *headers], body)

    global _message
    _message = lambda i, size: signed(i)  # noqa: E731

    sink = SmtpSink().start()
    common = "milter_protocol = 6\nmilter_default_action = tempfail\n"
    rows = []
    opendkim = start_opendkim(directory, fwd)
    try:
        rows.append(("Postfix, no milter", "", _run_postfix("none", sink, "", messages, size)[0]))
        ratios: dict[str, list[float]] = {name: [] for name in daemons}
        for number in range(1, rounds + 1):
            # A B A B: each round runs every side, the order flipped every round
            order = [*daemons, "opendkim"]
            order = order if number % 2 else order[::-1]
            rates, cpu = {}, {}
            for who in order:
                if who == "opendkim":
                    if opendkim is not None:
                        milter = f"smtpd_milters = {opendkim[1]}\n{common}"
                        rates[who], cpu[who] = _run_postfix("opendkim", sink, milter, messages, size, opendkim[0].pid)
                    continue
                milter = f"smtpd_milters = unix:{daemons[who].unix_paths['milter']}\n{common}"
                label, pid = who.replace(" ", "-"), daemons[who].pid
                rates[who], cpu[who] = _run_postfix(label, sink, milter, messages, size, pid)
                _check_delivered(sink.messages, resolver, dns.port, sealed="no-arc" not in who)
            line = f"round {number}: " + ", ".join(
                f"{who} {rates[who]:.0f} msgs/s ({cpu[who]:.1f} ms CPU/msg)" for who in order if who in rates
            )
            if "opendkim" in rates:
                for name in daemons:
                    ratios[name].append(rates[name] / rates["opendkim"])
                line += " (" + ", ".join(f"{name} {ratios[name][-1]:.2f}x" for name in daemons) + " OpenDKIM)"
            print(line, flush=True)
            for name in daemons:
                does = "verify, A-R, DKIM sign" if "no-arc" in name else "verify, A-R, ARC seal, DKIM sign"
                rows.append((f"Postfix + {name} milter", f"{does} (round {number})", rates[name]))
            if "opendkim" in rates:
                rows.append(("Postfix + OpenDKIM milter", f"sign only (round {number})", rates["opendkim"]))
        for name, values in ratios.items():
            if values:
                print(f"{name} / OpenDKIM, median of {len(values)} rounds: {statistics.median(values):.2f}x "
                      f"(range {min(values):.2f}-{max(values):.2f})")  # fmt: skip
    finally:
        if opendkim is not None:
            opendkim[0].terminate()
            opendkim[0].wait(10)
        for daemon in daemons.values():
            daemon.stop()
        sink.stop()
        dns.stop()
    return rows


def _check_delivered(delivered: list, resolver: object, dns_port: int, sealed: bool = True) -> None:
    """Every message srsd handled verifies (2 DKIM, and the ARC set srsd added when
    *sealed*) in dkimpy; a sample in Mail::DKIM."""
    from tests import maildkim

    lookup = txt_lookup(resolver)
    bad = 0
    for m in delivered:
        # dkimpy's own verifier, not srsd's: the check stays independent of what it checks
        checker = dkim.DKIM(m.data, logger=QUIET)
        sigs = [checker.verify(idx=i, dnsfunc=lookup) for i in range(2)]
        cv = dkim.arc_verify(m.data, logger=QUIET, dnsfunc=lookup)[0]
        if sigs != [True, True] or cv != (b"pass" if sealed else b"none"):
            bad += 1
    what = "2 DKIM + ARC" if sealed else "2 DKIM, no ARC set"
    print(f"srsd: {len(delivered) - bad}/{len(delivered)} delivered messages verify ({what}) in dkimpy")
    if maildkim.available():
        sample = delivered[:: max(1, len(delivered) // 10)]
        ok = sum(
            maildkim.mail_dkim(m.data, dns_port).result == "pass"
            and (not sealed or maildkim.mail_dkim(m.data, dns_port, "arc").result == "pass")
            for m in sample
        )
        checked = "DKIM and ARC" if sealed else "DKIM"
        print(f"srsd: {ok}/{len(sample)} sampled messages verify in Mail::DKIM ({checked})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="time per in-process measurement")
    p.add_argument("--size", type=int, default=10240, help="message body bytes (default 10 KB)")
    p.add_argument("--postfix", action="store_true", help="also measure through a private Postfix (root)")
    p.add_argument("--messages", type=int, default=500, help="messages per Postfix run")
    p.add_argument("--rounds", type=int, default=3, help="Postfix rounds, srsd and OpenDKIM alternated")
    p.add_argument("--clients", type=int, default=4, help="SMTP clients sending at once")
    p.add_argument("--workers", default="1,2", help="srsd serve --workers N, one srsd a value")
    p.add_argument("--threads", default="4", help="[dkim] threads of each srsd (4 = the default), one srsd a value")
    p.add_argument("--processes", default="0", help="[dkim] processes of each srsd (0 = the default: the "
                   "threads do the work), one srsd a value")  # fmt: skip
    p.add_argument("--arc", default="on", help="on, off or on,off: srsd with ARC sealing, without (verify, A-R, "
                   "DKIM sign: one signature, as OpenDKIM), or one of each")  # fmt: skip
    args = p.parse_args()
    global SMTP_CLIENTS
    SMTP_CLIENTS = args.clients

    print(f"in-process, one thread, {args.size}-byte body")
    print(f"{'operation':32} {'implementation':34} {'per second':>10} {'ms each':>8}")
    for label, impl, per_second in in_process(args.seconds, args.size):
        print(f"{label:32} {impl:34} {per_second:10.0f} {1000 / per_second:8.2f}")
    if args.postfix:
        print(f"\nthrough Postfix, {args.messages} forwarded messages, {args.clients} SMTP clients, unix-socket milter")
        rows = through_postfix(args.messages, args.size, args.rounds, tuple(int(w) for w in args.workers.split(",")),
                               tuple(int(t) for t in args.threads.split(",")),
                               tuple(a == "on" for a in args.arc.split(",")),
                               tuple(int(n) for n in args.processes.split(",")))  # fmt: skip
        print(f"{'setup':32} {'does':34} {'msgs/s':>10}")
        for label, does, per_second in rows:
            print(f"{label:32} {does:34} {per_second:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
