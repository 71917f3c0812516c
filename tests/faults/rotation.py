"""Secret rotation by SIGHUP under load: lookups and mail through Postfix meanwhile.

:class:`LookupLoad` is a few client threads doing what Postfix does, as fast as they
can: forward a sender (tcp_table and socketmap), reverse the address they were given,
and reverse an address minted earlier, on connections kept open and on new ones.
Every reply must be the right 200/500 (OK/NOTFOUND): a 400/TEMP, a wrong answer or a
dropped connection is a failed lookup.
"""

from __future__ import annotations

import random
import secrets
import threading
import time

from srsd.srs import SRS, SRSError
from tests.faults.mailflow import LOCAL, SRS_DOMAIN, VIRTUAL, Batch, ForwardingStack
from tests.faults.measure import Outcome, peak_rss_kb, reset_peak_rss
from tests.lookup_clients import ConnectionClosed, SocketmapClient, TcpTableClient
from tests.srsd_daemon import SrsdDaemon, srs0_pattern

RECONNECT_EVERY = 50  # requests on a connection before a client opens a new one


class LookupLoad:
    """*threads* threads of forward/reverse lookups against *srsd* until :meth:`stop`;
    counts go to *outcome* (one input per request)."""

    def __init__(self, srsd: SrsdDaemon, outcome: Outcome, threads: int = 4) -> None:
        self.srsd = srsd
        self.outcome = outcome
        self.minted: list[tuple[str, str]] = []  # (SRS address, original sender)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def start(self) -> LookupLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _count(self, ok: bool, what: str, started: float) -> None:
        with self._lock:
            self.outcome.inputs += 1
            if ok:
                self.outcome.answers += 1
            else:
                self.outcome.fail(what)
        if ok:
            self.outcome.latency("lookup").add(time.monotonic() - started)

    def _run(self, number: int) -> None:
        rng = random.Random(number)
        serial = 0
        while not self._stop.is_set():
            try:
                tcp_f, tcp_r, sm = self.srsd.tcp_table("forward"), self.srsd.tcp_table("reverse"), self.srsd.socketmap()
            except OSError as exc:
                self._count(False, f"connect: {exc!r}", time.monotonic())
                continue
            with tcp_f, tcp_r, sm:
                for _ in range(RECONNECT_EVERY):
                    if self._stop.is_set():
                        return
                    serial += 1
                    sender = f"load{number}-{serial}@orig{serial % 5}.example"
                    forward = (tcp_f, "forward") if serial % 2 else (sm, "forward")
                    reverse = (sm, "reverse") if serial % 2 else (tcp_r, "reverse")
                    pattern = srs0_pattern(sender)
                    srs = self._ask(*forward, sender, lambda s, t, p=pattern: s == "found" and p.match(t))
                    if srs is None:
                        break  # that connection is gone: a new set
                    with self._lock:
                        self.minted.append((srs, sender))
                        older, original = self.minted[rng.randrange(len(self.minted))]
                    if self._ask(*reverse, srs, lambda s, t, want=sender: (s, t) == ("found", want)) is None:
                        break
                    if self._ask(*reverse, older, lambda s, t, want=original: (s, t) == ("found", want)) is None:
                        break

    def _ask(self, client: TcpTableClient | SocketmapClient, map_name: str, key: str, good) -> str | None:
        """One lookup; its text when *good*, else counted as failed and None."""
        started = time.monotonic()
        try:
            status, text = client.lookup(map_name, key)
        except (OSError, ConnectionClosed, AssertionError) as exc:
            self._count(False, f"{map_name} {key}: {exc!r}", started)
            return None
        ok = bool(good(status, text))
        self._count(ok, f"{map_name} {key}: {status} {text!r}", started)
        return text if ok else None


def minted_with(address: str, generations: list[str]) -> int | None:
    """Which of *generations* (secrets, oldest first) signed *address*."""
    for index, secret in enumerate(generations):
        try:
            SRS([secret], SRS_DOMAIN).reverse(address)
        except SRSError:
            continue
        return index
    return None


def sighup_rotation(
    stack: ForwardingStack,
    reloads: int = 10,
    messages: int = 100,
    threads: int = 4,
    interval: float = 0.3,
    two_step: bool = False,
) -> tuple[Outcome, Outcome]:
    """*reloads* rotations, each a new first secret (the older ones stay listed),
    *interval* s apart, while :class:`LookupLoad` runs and a batch of *messages* goes
    through Postfix. Then every generation's addresses must still reverse (in srsd,
    and as a bounce through Postfix); once the oldest half is retired, theirs must not.

    :param two_step: each rotation in two SIGHUPs: the new secret on the second line
        (it verifies), then moved to the first (it signs). With ``--workers`` a reload
        reaches the processes one after another; in one step, an address minted by a
        process that has reloaded does not reverse in one that has not yet.
    :returns: (the lookups' outcome, the mail's outcome).
    """
    srsd = stack.srsd
    generations = [line for line in srsd.secrets_path.read_text().splitlines() if line]  # oldest first
    how = " in two steps each" if two_step else ""
    lookups = Outcome(f"SIGHUP with a new secret x{reloads}{how} under lookup load ({stack.protocol})")
    mail = Outcome(f"mail through Postfix during the {reloads} reloads ({stack.protocol})")
    reset_peak_rss(srsd.pid)
    load = LookupLoad(srsd, lookups, threads).start()
    batch = Batch(stack, messages, routes=(VIRTUAL, LOCAL)).start()
    started = time.monotonic()
    try:
        for _ in range(reloads):
            time.sleep(interval)
            new = secrets.token_urlsafe(24)
            if two_step:
                srsd.write_secrets([generations[-1], new, *reversed(generations[:-1])])
                srsd.reload()
                time.sleep(interval)
            generations.append(new)
            srsd.write_secrets(list(reversed(generations)))
            srsd.reload()
        time.sleep(interval)
    finally:
        load.stop()
    lookups.peak_rss_kb = peak_rss_kb(srsd.pid)
    per_generation = [0] * len(generations)
    for address, _ in load.minted:
        index = minted_with(address, generations)
        if index is None:
            lookups.fail(f"{address}: signed by no listed secret")
        else:
            per_generation[index] += 1
    lookups.notes.append(f"{reloads} reloads in {time.monotonic() - started:.1f} s; {threads} client threads")
    lookups.notes.append(f"addresses minted under load per secret, oldest first: {per_generation}")

    batch.join()
    batch.wait_delivered(60)
    batch.count(mail)
    if batch.temp_replies:  # a reload must not make Postfix defer anything
        mail.fail(f"temporary refusals during the reloads: {dict(batch.temp_replies)}")

    _reverse_every_generation(stack, generations, load.minted, lookups)
    return lookups, mail


def _reverse_every_generation(
    stack: ForwardingStack, generations: list[str], minted: list[tuple[str, str]], outcome: Outcome
) -> None:
    """One address per generation reverses through srsd (both protocols) and as a
    bounce through Postfix; after retiring the oldest half, theirs are not found."""
    srsd = stack.srsd
    by_generation: dict[int, tuple[str, str]] = {}
    for address, sender in minted:
        index = minted_with(address, generations)
        if index is not None:
            by_generation.setdefault(index, (address, sender))
    for index in range(len(generations)):
        if index not in by_generation:  # a generation the load did not see: mint one
            sender = f"gen{index}@orig.example"
            by_generation[index] = (SRS([generations[index]], SRS_DOMAIN).forward(sender), sender)

    def check(index: int, want_found: bool) -> None:
        address, sender = by_generation[index]
        for protocol, map_name in (("tcp_table", "reverse"), ("socketmap", "reverse")):
            got = srsd.lookup(protocol, map_name, address)
            want = ("found", sender) if want_found else ("notfound", "")
            if got[0] != want[0] or (want_found and got[1] != sender):
                outcome.fail(f"generation {index} {address} via {protocol}: {got}, expected {want[0]}")

    for index in range(len(generations)):
        check(index, True)
    bounced = _bounce_through_postfix(stack, [by_generation[i] for i in range(len(generations))])
    for missing in bounced:
        outcome.fail(f"bounce to {missing} did not come back to its original sender through Postfix")
    outcome.notes.append(
        f"{len(generations)} generations: each one's address reverses (tcp_table, socketmap, "
        f"and a bounce through Postfix: {len(generations) - len(bounced)}/{len(generations)})"
    )

    keep = len(generations) // 2
    srsd.write_secrets(list(reversed(generations[keep:])))
    srsd.reload()
    for index in range(len(generations)):
        check(index, index >= keep)
    outcome.notes.append(f"retired the {keep} oldest secrets: their addresses are not found, the others still are")


def _bounce_through_postfix(stack: ForwardingStack, addresses: list[tuple[str, str]]) -> list[str]:
    """A null-sender message to each SRS address; the ones that did not reach their
    original sender at the sink."""
    markers = {}
    with stack.postfix.smtp() as client:
        for address, sender in addresses:
            marker = f"bounce-{secrets.token_hex(6)}"
            assert client.mail("")[0] == 250
            code, text = client.rcpt(address)
            if code != 250:
                markers[marker] = (address, None)
                client.rset()
                continue
            body = f"From: MAILER-DAEMON@remote.example\r\nTo: {address}\r\nSubject: {marker}\r\n\r\nbounce\r\n"
            assert client.data(body.encode("ascii"))[0] == 250
            markers[marker] = (address, sender)
    missing = []
    for marker, (address, sender) in markers.items():
        try:
            received = stack.sink.wait_for(marker, timeout=20)
        except AssertionError:
            missing.append(address)
            continue
        if sender is None or received.rcpt_tos != (sender,):
            missing.append(address)
    return missing
