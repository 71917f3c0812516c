"""What the milter does to a message: verify it, ARC-seal and DKIM-sign it.

The milter (:mod:`srsd.protocols.milter`) hands over each message at end of data:
``MailAuth.end_of_message(envelope, message)`` answers, through a Deferred, with
the header edits for Postfix (:mod:`srsd.mailauth.message` actions). Which edits depends
on what the message is (:func:`classify`):

* **local** -- the client authenticated (SASL), or is in ``dkim.trusted_networks``
  (default loopback, which covers local submission: Postfix presents
  ``sendmail``/pickup mail to ``non_smtpd_milters`` as from 127.0.0.1), or has no
  address: DKIM-sign it with the keys of its From domain (``sign_local``; the
  signing table, :mod:`srsd.mailauth.signing_table`); mail whose From names no
  single domain (:mod:`srsd.mailauth.author`) is not signed. A local *sender
  address* alone does not make mail local: anyone can write one, and we would
  sign whatever they send.
* **forwarded** -- anything else with at least one recipient in a local domain
  (``srs.local_domains`` + ``srs.domain``; the milter sees recipients before
  virtual alias expansion, and on a forwarding host those are the aliases):
  verify it (SPF, every DKIM signature, the ARC chain), evaluate DMARC over those
  results (:mod:`srsd.dmarc`, ``[dmarc]``), write all of it into one
  ``Authentication-Results`` field, ARC-seal it (``i=N+1``) and DKIM-sign it
  with the forwarder's keys (``d=dkim.domain``) as it will leave -- unless
  ``dmarc.action`` refuses it (550, or 451 on a DNS failure) or holds it (quarantine).
* **other** -- neither (relayed for a client Postfix trusts and we do not know
  about): left alone.

Fields carrying our authserv-id that a message brings along are deleted from
every local and forwarded message (RFC 8601 5): they are forged, or stale.

Crypto, key lookups and DMARC (its DNS, the From: parser) run on a bounded thread
pool, SPF on the :class:`~srsd.spf.SPFChecker`'s: the reactor thread never blocks.
An internal error (a bug, an overloaded pool, a job over its time) answers per
``dkim.on_error``: TempFail (Postfix answers 4xx, the client retries) or no
edits at all. See ``docs/dkim.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from srsd import metrics
from srsd.config import Config, DMARCSettings
from srsd.dmarc import ARCChain, DMARCDecision, DMARCVerdict, ResolverDNS, arc_sealers, check
from srsd.dns import Resolver
from srsd.domains import DomainSet, Networks
from srsd.log_limit import LimitedLog
from srsd.mailauth import dkimpy_setup
from srsd.mailauth.author import author_domain
from srsd.mailauth.job_processes import JobProcessDied, JobProcesses
from srsd.mailauth.key_lookup import txt_lookup
from srsd.mailauth.message import (
    Action,
    DeleteHeader,
    Envelope,
    HeaderField,
    InsertHeader,
    Message,
    Quarantine,
    Reject,
    TempFail,
)
from srsd.mailauth.results import authentication_results, forged_results, without_forged
from srsd.mailauth.results import summary as summarize
from srsd.mailauth.rotation import NextKeyWatcher
from srsd.mailauth.sign import seal_message, sign_message
from srsd.mailauth.signing_table import KeyId, SigningTable, TableKey
from srsd.mailauth.verify import ARCResult, SignatureResult, verify_arc, verify_signatures
from srsd.workpool import BoundedPool, PoolOverloaded

__all__ = ["LOCAL", "FORWARDED", "OTHER", "AuthSettings", "auth_settings", "classify", "MailAuth"]

log = Logger(namespace="srsd.mailauth")
limited = LimitedLog(log)

LOCAL = "local"
FORWARDED = "forwarded"
OTHER = "other"

#: seconds a message may take past dkim.budget (signing, queueing) before on_error
GRACE = 5.0


@dataclass(frozen=True)
class AuthSettings:
    """Everything :class:`MailAuth` needs from one configuration, keys loaded."""

    table: SigningTable  # which keys sign which mail (no next key seen published yet)
    signed_headers: tuple[str, ...]
    sign_forwarded: bool
    sign_local: bool
    arc: bool
    verify: bool
    authserv_id: str
    on_error: str
    budget: float
    threads: int
    processes: int
    local_domains: DomainSet
    trusted_networks: Networks
    rotation_check_interval: float
    dmarc: DMARCSettings = DMARCSettings()


def auth_settings(config: Config) -> AuthSettings:
    """Build :class:`AuthSettings` from a validated config (its keys are already loaded)."""
    d = config.dkim
    for entry in config.dkim_keys:
        for warning in entry.key.warnings:
            log.warn("{where}: {warning}", where=entry.where, warning=warning)
    return AuthSettings(
        table=SigningTable(config.dkim_keys, d.domain or config.srs.domain, d.sign_subdomains),
        signed_headers=d.signed_headers,
        sign_forwarded=d.sign_forwarded,
        sign_local=d.sign_local,
        arc=d.arc,
        verify=d.verify,
        authserv_id=d.authserv_id or config.srs.domain,
        on_error=d.on_error,
        budget=d.budget,
        threads=d.threads,
        processes=d.processes,
        local_domains=DomainSet((*config.local_domains, config.srs.domain)),
        trusted_networks=Networks(d.trusted_networks),
        rotation_check_interval=d.rotation_check_interval,
        dmarc=config.dmarc,
    )


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


def classify(envelope: Envelope, settings: AuthSettings) -> tuple[str, str]:
    """(LOCAL | FORWARDED | OTHER, why) for one message; see the module docstring."""
    if envelope.authenticated:
        return LOCAL, f"authenticated as {envelope.macros.get('{auth_authen}')}"
    if not envelope.client_address:
        return LOCAL, "local submission"
    if envelope.client_address in settings.trusted_networks:
        return LOCAL, f"trusted client {envelope.client_address}"
    for rcpt in envelope.recipients:
        if _domain(rcpt) in settings.local_domains:
            return FORWARDED, f"recipient {rcpt}"
    return OTHER, "no local recipient"


@dataclass(frozen=True)
class _Verified:
    signatures: list[SignatureResult]
    arc: ARCResult | None


@dataclass(frozen=True)
class _Outcome:
    """What became of one message: the fields to add (top first), the log summary, a
    DMARC refusal or hold (None: none), and the ``srsd_messages_total`` outcome."""

    added: list[HeaderField]
    summary: str
    action: Reject | TempFail | Quarantine | None = None
    outcome: str = "handled"


def _verify_job(resolver: Resolver, headers: list[HeaderField], body: bytes, budget: float) -> _Verified:
    """Worker thread: every DKIM signature and the ARC chain, lookups within *budget*."""
    lookup = txt_lookup(resolver, time.monotonic() + budget)
    return _Verified(verify_signatures(headers, body, lookup), verify_arc(headers, body, lookup))


def _dmarc_job(
    resolver: Resolver,
    settings: DMARCSettings,
    headers: list[HeaderField],
    spf: tuple[str, str, str] | None,
    signatures: list[SignatureResult],
    arc: ARCResult | None,
    deadline: float,
) -> DMARCVerdict:
    """Worker thread: DMARC (RFC 9989) of one message over the results just verified,
    its DNS queries within *deadline* (``time.monotonic()`` seconds).

    :param spf: our SPF result as :func:`_spf_triple` gives it: for MAIL FROM, or for
        the HELO name when MAIL FROM is null (RFC 7208 2.4) -- the identity DMARC uses
        either way (RFC 9989 3.2.4, 4.4.2).
    """
    from_values = [value for name, value in headers if name.lower() == "from"]
    result, _, domain = spf if spf is not None else ("none", "", "")
    chain = ARCChain(arc.cv, arc_sealers(headers)) if arc is not None else None
    return check(from_values, ResolverDNS(resolver, deadline), settings, spf_result=result, spf_domain=domain,
                 dkim=signatures, arc=chain)  # fmt: skip


_DMARC_OUTCOMES = {"reject": "rejected", "defer": "deferred", "quarantine": "quarantined"}


def _dmarc_action(decision: DMARCDecision) -> Reject | TempFail | Quarantine | None:
    """The milter action for a DMARC decision (None: deliver)."""
    if decision.disposition == "reject":
        return Reject(decision.reply, decision.code, decision.enhanced)
    if decision.disposition == "defer":
        return TempFail(decision.reply, decision.code, decision.enhanced)
    if decision.disposition == "quarantine":
        return Quarantine(decision.reply)
    return None


def _dmarc_line(verdict: DMARCVerdict) -> str:
    """``DMARC fail for example.com (why; policy reject from p at example.com): reject``."""
    result, decision = verdict.result, verdict.decision
    why = [result.reason] if result.reason else []
    if result.published:
        tag = f"{result.policy_tag}={result.published}" + (", t=y" if result.testing else "")
        why.append(f"policy {result.policy} from {tag} at {result.policy_domain}")
    what = decision.disposition
    if decision.code:
        what += f" {decision.code} {decision.enhanced}"
    if decision.override:
        what += f" ({decision.override})"
    return f"DMARC {result.result} for {result.author_domain or '-'} ({'; '.join(why) or '-'}): {what}"


def _sign_job(
    settings: AuthSettings,
    headers: list[HeaderField],
    body: bytes,
    signers: tuple[TableKey, ...],
    results: HeaderField | None = None,
    sealer: TableKey | None = None,
    cv: str = "none",
) -> list[HeaderField]:
    """Worker thread: the fields to add, newest (top) first: a DKIM-Signature per
    key of *signers* (in their order), then [ARC-Seal, ARC-Message-Signature,
    ARC-Authentication-Results] when *sealer* is given.

    *headers* are the message's fields as they will leave, minus ours; *results* our
    Authentication-Results, which sits right above them (the caller inserts it) and
    which the ARC set records, with *cv* the chain's validation it reports (``arc=``).
    Every signature covers the same fields (ours are never in h=), so each verifies
    on its own (RFC 8463 dual signing).
    """
    leaving = ([results] if results else []) + headers
    added: list[HeaderField] = []
    if sealer is not None and results:
        added = seal_message(leaving, body, sealer.key, sealer.domain, sealer.selector, settings.authserv_id,
                             settings.signed_headers, cv=cv)  # fmt: skip
        leaving = added + leaving
    signatures = [sign_message(leaving, body, k.key, k.domain, k.selector, settings.signed_headers) for k in signers]
    return signatures + added


@dataclass(frozen=True)
class _Concluded:
    """What :func:`_conclude_job` decided: the DMARC verdict (None: not evaluated), our
    Authentication-Results, DMARC's action (None: deliver) and the fields signing added
    ([] when DMARC refuses the message or nothing signs)."""

    verdict: DMARCVerdict | None
    header: HeaderField
    action: Reject | TempFail | Quarantine | None
    added: list[HeaderField]


def _conclude_job(
    resolver: Resolver,
    settings: AuthSettings,
    headers: list[HeaderField],
    body: bytes,
    verified: tuple[tuple[str, str, str] | None, list[SignatureResult], ARCResult | None],
    dmarc_deadline: float | None,
    signers: tuple[TableKey, ...],
    sealer: TableKey | None,
) -> _Concluded:
    """Worker thread: everything after verification in one job (each job is two thread
    hand-offs): DMARC over the *verified* (spf, signatures, arc) when *dmarc_deadline* is
    given (``time.monotonic()`` seconds for its DNS), our Authentication-Results, then
    the ARC set (*sealer*) and DKIM signatures unless DMARC refuses the message."""
    spf, signatures, arc = verified
    verdict = None
    if dmarc_deadline is not None:
        verdict = _dmarc_job(resolver, settings.dmarc, headers, spf, signatures, arc, dmarc_deadline)
    extra = [verdict.authres] if verdict is not None else []
    header = authentication_results(settings.authserv_id, spf=spf, dkim_results=signatures, arc=arc, extra=extra)
    action = _dmarc_action(verdict.decision) if verdict is not None else None
    if isinstance(action, Reject | TempFail) or not (sealer or signers):
        return _Concluded(verdict, header, action, [])
    cv = arc.cv if arc is not None else "none"
    return _Concluded(verdict, header, action, _sign_job(settings, headers, body, signers, header, sealer, cv))


@dataclass(frozen=True)
class _Plan:
    """What a forwarded message gets after verification: ``dkim.on_error``, DMARC's
    deadline (``time.monotonic()``; None: no DMARC), the signing keys and the ARC key
    (None: no sealing)."""

    on_error: str
    dmarc_deadline: float | None
    signers: tuple[TableKey, ...]
    sealer: TableKey | None


def _chain_decision(plan: _Plan, arc: ARCResult | None) -> tuple[ARCResult | None, TableKey | None]:
    """(the ARC result to report, the key to seal with) once the chain is checked: a
    chain that could not be checked now is neither claimed nor sealed, or defers the
    message (``on_error = "tempfail"``); one that may not be extended is not sealed.

    :raises _ARCUnverifiable: a DNS failure and ``on_error = "tempfail"``.
    """
    if arc is not None and arc.temporary:
        if plan.on_error == "tempfail":
            raise _ARCUnverifiable(arc.reason)
        return None, None
    if arc is not None and not arc.sealable:
        return arc, None
    return arc, plan.sealer


def _forwarded_job(
    resolver: Resolver,
    settings: AuthSettings,
    headers: list[HeaderField],
    body: bytes,
    plan: _Plan,
    spf: tuple[str, str, str] | None,
) -> tuple[_Verified, ARCResult | None, bool, _Concluded | None]:
    """Worker thread: a forwarded message whose SPF result is known, in one job:
    :func:`_verify_job`, the chain decision (the ARC result to report, whether it is
    sealed), then :func:`_conclude_job` (None: the chain could not be checked and
    ``on_error = "tempfail"``)."""
    checked = _verify_job(resolver, headers, body, settings.budget)
    try:
        arc, sealer = _chain_decision(plan, checked.arc)
    except _ARCUnverifiable:
        return checked, None, False, None  # the reactor counts the results, then defers
    verified = (spf, checked.signatures, arc)
    concluded = _conclude_job(resolver, settings, headers, body, verified, plan.dmarc_deadline, plan.signers, sealer)
    return checked, arc, sealer is not None, concluded


def _local_job(
    settings: AuthSettings, table: SigningTable, headers: list[HeaderField], body: bytes
) -> tuple[list[HeaderField], str]:
    """Worker thread: (DKIM-Signatures, summary) for local mail, signed with the keys of
    its author domain (the From field is parsed here, off the reactor: the RFC 5322
    parser is slow on hostile input)."""
    author = author_domain(headers)
    if not author.domain:  # RFC 6376 5.4, 8.15: no one domain to sign for
        return [], f"not signed: {author.problem}"
    signers, why = table.for_author(author.domain)
    if not signers:
        return [], f"not signed: no key for {author.domain} nor the forwarder"
    summary = f"signed {_signed_by(signers)}" + (f" ({why})" if why else "")
    return _sign_job(settings, headers, body, signers), summary


def _signed_by(signers: tuple[TableKey, ...]) -> str:
    """``d=example.org s=rsa1,ed1`` for the log (the keys of one table lookup share d=)."""
    return f"d={signers[0].domain} s={','.join(k.selector for k in signers)}"


class _ARCUnverifiable(Exception):
    """A DNS failure kept us from validating an ARC chain (with on_error = tempfail)."""


class MailAuth:
    """The milter's message handler.

    :param settings: the configuration (``[dkim]``, ``[srs]`` local domains).
    :param resolver: srsd's resolver, for DKIM keys.
    :param spf_checker: an :class:`~srsd.spf.SPFChecker` for the SPF result.
    :param reactor: the reactor (its thread calls :meth:`end_of_message`).
    :param record_resolver: an uncached resolver for the DNS checks of ``next`` keys
        (:mod:`srsd.mailauth.rotation`); default *resolver*.
    """

    def __init__(
        self,
        settings: Config | AuthSettings,
        resolver: Resolver,
        spf_checker: Any,
        reactor: Any,
        record_resolver: Resolver | None = None,
    ) -> None:
        dkimpy_setup.install()
        self.resolver = resolver
        self.spf_checker = spf_checker
        self.reactor = reactor
        self.settings = settings if isinstance(settings, AuthSettings) else auth_settings(settings)
        #: the signing table in force: the settings' with the next keys seen published
        self.table = self.settings.table
        self.pool = BoundedPool(reactor, self.settings.threads, "srsd-dkim")
        #: where the per-message jobs run: the thread pool, or child processes
        self.jobs: BoundedPool | JobProcesses = self.pool
        if self.settings.processes:
            self.jobs = JobProcesses(reactor, self.settings.processes, resolver)
            self.jobs.set_context(self.settings, self.table)
        self.watcher = NextKeyWatcher(
            reactor, self.pool, record_resolver or resolver, lambda: self.table.pending, self._published,
            timeout=self.settings.budget,
        )  # fmt: skip
        self.watcher.watch(self.settings.rotation_check_interval)

    @property
    def pending(self) -> int:
        return self.pool.pending + (self.jobs.pending if self.jobs is not self.pool else 0)

    def start(self) -> None:
        """Start the job processes now, if any (else they start with the first message)."""
        if isinstance(self.jobs, JobProcesses):
            self.jobs.start()

    def reconfigure(self, settings: Config | AuthSettings) -> None:
        """Swap in a new configuration (SIGHUP); messages under way finish with the old.

        ``next`` keys already seen published stay in use (same domain, selector and
        key); the others are checked again at once.
        """
        new = settings if isinstance(settings, AuthSettings) else auth_settings(settings)
        if new.threads != self.settings.threads:
            self.pool.resize(new.threads)
        self._resize_jobs(new.processes)
        self.settings = new
        self.table = new.table.with_visible(self.table.visible)
        self._context_changed()
        self.watcher.timeout = new.budget
        self.watcher.watch(new.rotation_check_interval)

    def _resize_jobs(self, processes: int) -> None:
        if isinstance(self.jobs, JobProcesses):
            if processes:
                self.jobs.resize(processes)
            else:  # back to threads: the children finish the messages under way, then exit
                self.jobs.stop_when_done()
                self.jobs = self.pool
        elif processes:
            self.jobs = JobProcesses(self.reactor, processes, self.resolver)

    def _context_changed(self) -> None:
        if isinstance(self.jobs, JobProcesses):
            self.jobs.set_context(self.settings, self.table)

    def _published(self, key: TableKey) -> None:
        """The watcher saw *key*'s record published and matching: sign with it."""
        if key.id not in {k.id for k in self.table.pending}:
            return  # a reload came in between: no longer a pending key
        replaced = self.table.replaced_by(key)
        self.table = self.table.with_visible([key.id])
        self._context_changed()
        log.info(
            "{where}: {name} is published and matches: signing with it now{instead}",
            where=key.where,
            name=key.record_name,
            instead=f" instead of {', '.join(k.selector for k in replaced)} (keep that published a few days more)"
            if replaced
            else "",
        )

    @property
    def visible(self) -> frozenset[KeyId]:
        """The ``next`` keys seen published (and signing)."""
        return self.table.visible

    def stop(self) -> None:
        """Stop the key checks and the thread pool (waits for running jobs)."""
        self.watcher.stop()
        if isinstance(self.jobs, JobProcesses):
            self.jobs.stop()
        self.pool.stop()

    # -- one message --------------------------------------------------------------------------

    def end_of_message(self, envelope: Envelope, message: Message) -> defer.Deferred:
        """The header edits for *message*: Deferred[list[Action]], never failing (unless
        the caller cancels it: then CancelledError, nothing logged).

        Deletions come first (highest occurrence first), then insertions at index 0
        from the bottom up, so the message leaves with, top down: DKIM-Signature,
        ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results,
        Authentication-Results. Apply them in list order.
        """
        settings, table = self.settings, self.table
        started = time.monotonic()
        deadline = started + settings.budget + GRACE
        try:
            kind, why = classify(envelope, settings)
            if kind == OTHER:
                metrics.count_message(kind, "left_alone")
                log.debug("{qid}: left alone: {why}", qid=envelope.queue_id or "-", why=why)
                return defer.succeed([])
            forged = forged_results(message.headers, settings.authserv_id)
            kept = without_forged(message.headers, settings.authserv_id)
            deletes: list[Action] = [DeleteHeader("Authentication-Results", n) for n in forged]
            if kind == LOCAL:
                d = self._local(settings, table, kept, message.body, deadline)
            else:
                d = _Forwarding(self, settings, table, envelope, kept, message.body, started, deadline).start()
        except Exception:
            return defer.succeed(self._error(settings, envelope, Failure(), started, "unclassified"))

        def done(result: _Outcome) -> list[Action]:
            inserts: list[Action] = [InsertHeader(0, name, value) for name, value in reversed(result.added)]
            metrics.count_message(kind, result.outcome)
            metrics.count_signatures(result.added)
            limited.info(
                "milter",
                "{qid}: {kind} ({why}): {summary}{deleted} in {ms:.1f} ms",
                qid=envelope.queue_id or "-",
                kind=kind,
                why=why,
                summary=result.summary,
                deleted=f"; removed {len(forged)} forged Authentication-Results" if forged else "",
                ms=(time.monotonic() - started) * 1000,
            )
            if isinstance(result.action, Reject | TempFail):
                return [result.action]  # nothing else matters: the message is not accepted
            return deletes + inserts + ([result.action] if result.action else [])

        d.addCallback(done)
        d.addErrback(lambda failure: self._error(settings, envelope, failure, started, kind))
        return d

    def _local(
        self, settings: AuthSettings, table: SigningTable, kept: list[HeaderField], body: bytes, deadline: float
    ) -> defer.Deferred:
        if not settings.sign_local:
            return defer.succeed(_Outcome([], "not signed (sign_local off)"))
        d = self.jobs.run_until(deadline, _local_job, settings, table, kept, body)
        return d.addCallback(lambda done: _Outcome(*done))

    def _error(self, settings: AuthSettings, envelope: Envelope, failure: Any, started: float, kind: str) -> Any:
        if failure.check(defer.CancelledError):
            return failure  # the caller cancelled (the MTA went away, or its own timeout): its business
        if failure.check(_ARCUnverifiable):
            metrics.count_message(kind, "deferred")
            limited.warn("milter_deferred", "{qid}: deferred: cannot validate its ARC chain now ({why})",
                         qid=envelope.queue_id or "-", why=failure.getErrorMessage())  # fmt: skip
            return [TempFail("temporary DNS failure validating the ARC chain, try again later", enhanced="4.4.3")]
        if failure.check(PoolOverloaded):
            limited.warn("milter_error", "{qid}: mail authentication overloaded ({why})", qid=envelope.queue_id or "-",
                         why=failure.getErrorMessage())  # fmt: skip
        elif failure.check(defer.TimeoutError, JobProcessDied):
            limited.warn("milter_error", "{qid}: mail authentication {why}", qid=envelope.queue_id or "-",
                         why=failure.getErrorMessage())  # fmt: skip
        else:
            log.failure("{qid}: mail authentication failed", failure, qid=envelope.queue_id or "-")
        metrics.count_message(kind, "failed_" + settings.on_error)
        if settings.on_error == "tempfail":
            return [TempFail("temporary failure in DKIM/ARC processing, try again later")]
        return []


class _Forwarding:
    """One forwarded message on its way, step by step on the reactor thread: SPF and
    DKIM/ARC verification (at once), then DMARC, ARC-sealing and signing (one job:
    :func:`_conclude_job`) unless DMARC refuses the message; when SPF answers at once
    (its result cache), all of it in one job (:func:`_forwarded_job`). The blocking work
    runs on :class:`MailAuth`'s pools; every step is a Deferred callback. :meth:`start`
    fires with an :class:`_Outcome`."""

    def __init__(
        self,
        auth: MailAuth,
        settings: AuthSettings,
        table: SigningTable,
        envelope: Envelope,
        kept: list[HeaderField],
        body: bytes,
        started: float,
        deadline: float,
    ) -> None:
        self.auth, self.settings, self.envelope, self.kept, self.body = auth, settings, envelope, kept, body
        self.started, self.deadline = started, deadline
        self.sealer = table.arc_key() if settings.arc else None
        self.signers = table.forwarder_keys() if settings.sign_forwarded else ()
        dm = settings.dmarc
        # DMARC only where its result goes: our A-R, the ARC set, or an action
        self.dmarc = dm.enabled and (settings.verify or self.sealer is not None or dm.action != "header")
        self.seal = self.sealer is not None
        # what verification found (set by _verified)
        self.spf: tuple[str, str, str] | None = None
        self.signatures: list[SignatureResult] = []
        self.arc: ARCResult | None = None

    def start(self) -> defer.Deferred:
        settings, auth, env = self.settings, self.auth, self.envelope
        if not (settings.verify or self.seal or self.dmarc):
            if not self.signers:
                return defer.succeed(_Outcome([], "nothing to do (verify, arc and signing off)"))
            d = auth.jobs.run_until(self.deadline, _sign_job, settings, self.kept, self.body, self.signers)
            return d.addCallback(lambda added: _Outcome(added, f"signed {_signed_by(self.signers)}"))
        spf = auth.spf_checker.check(env.client_address, env.mail_from, env.helo, budget=settings.budget)
        known: list[Any] = []
        spf.addCallback(lambda result: known.append(result) or result)
        if known:
            # SPF answered at once (its result cache): verification, DMARC, sealing and
            # signing in one job, one thread hand-off fewer
            self.spf = _spf_triple(known[0], env)
            d = auth.jobs.run_until(self.deadline, _forwarded_job, auth.resolver, settings, self.kept, self.body,
                                    self._plan(), self.spf)  # fmt: skip
            return d.addCallback(self._finished, known[0])
        verified = auth.jobs.run_until(self.deadline, _verify_job, auth.resolver, self.kept, self.body, settings.budget)
        both = defer.gatherResults([spf, verified], consumeErrors=True)
        both.addErrback(lambda failure: failure.value.subFailure)
        return both.addCallback(self._verified)

    def _plan(self) -> _Plan:
        """What follows verification, as far as is known before it."""
        dmarc_deadline = self.started + self.settings.budget if self.dmarc else None  # one budget for all lookups
        return _Plan(self.settings.on_error, dmarc_deadline, self.signers, self.sealer if self.seal else None)

    def _count(self, spf_result: Any, checked: _Verified) -> None:
        metrics.count_spf("milter", (spf_result,))
        metrics.count_dkim(checked.signatures)
        if checked.arc is not None:
            metrics.count_arc("temperror" if checked.arc.temporary else checked.arc.cv)

    def _taken(self, checked: _Verified, arc: ARCResult | None, sealed: bool) -> None:
        self.signatures, self.arc, self.seal = checked.signatures, arc, sealed

    def _verified(self, results: list[Any]) -> Any:
        spf_result, checked = results
        self._count(spf_result, checked)
        self.spf = _spf_triple(spf_result, self.envelope)
        plan = self._plan()
        arc, sealer = _chain_decision(plan, checked.arc)
        self._taken(checked, arc, sealer is not None)
        job = (self.auth.resolver, self.settings, self.kept, self.body, (self.spf, self.signatures, arc),
               plan.dmarc_deadline, self.signers, sealer)  # fmt: skip
        if plan.dmarc_deadline is None and not (sealer or self.signers):
            return self._concluded(_conclude_job(*job))  # the field alone: no DNS, no crypto
        return self.auth.jobs.run_until(self.deadline, _conclude_job, *job).addCallback(self._concluded)

    def _finished(
        self, done: tuple[_Verified, ARCResult | None, bool, _Concluded | None], spf_result: Any
    ) -> Any:
        checked, arc, sealed, concluded = done
        self._count(spf_result, checked)
        if concluded is None:
            raise _ARCUnverifiable(checked.arc.reason if checked.arc else "")
        self._taken(checked, arc, sealed)
        return self._concluded(concluded)

    def _concluded(self, concluded: _Concluded) -> _Outcome:
        settings, verdict, header, action = self.settings, concluded.verdict, concluded.header, concluded.action
        summary = summarize(header[1])
        outcome = "handled"
        if verdict is not None:
            outcome = _DMARC_OUTCOMES.get(verdict.decision.disposition, outcome)
            metrics.count_dmarc(verdict.result.result, verdict.decision)
            limited.info("dmarc", "{qid}: {line}", qid=self.envelope.queue_id or "-", line=_dmarc_line(verdict))
            if action is not None:
                summary += f"; {outcome} per DMARC"
            if isinstance(action, Reject | TempFail):
                return _Outcome([], summary, action, outcome)
        if not (self.seal or self.signers):
            return _Outcome([header] if settings.verify else [], summary, action, outcome)
        return self._signed(concluded.added, header, summary, action, outcome)

    def _signed(
        self, added: list[HeaderField], header: HeaderField, summary: str, action: Quarantine | None, outcome: str
    ) -> _Outcome:
        text = summary
        if any(name == "ARC-Seal" for name, _ in added):
            text += f"; sealed i={(self.arc.instances if self.arc else 0) + 1}"
        elif self.seal:  # seal_message seals nothing over a chain whose sets validate nothing
            log.warn("{qid}: no ARC set was made (the chain on arrival has ended)", qid=self.envelope.queue_id or "-")
        if self.signers:
            text += f"; signed {_signed_by(self.signers)}"
        return _Outcome(added + ([header] if self.settings.verify else []), text, action, outcome)


def _spf_triple(result: Any, envelope: Envelope) -> tuple[str, str, str] | None:
    if result is None:
        return None
    if result.identity == "helo":
        return result.result, "smtp.helo", envelope.helo
    return result.result, "smtp.mailfrom", _domain(envelope.mail_from)
