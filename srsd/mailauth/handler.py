"""What the milter does to a message: verify it, ARC-seal and DKIM-sign it.

The milter (:mod:`srsd.protocols.milter`) hands over each message at end of data:
``MailAuth.end_of_message(envelope, message)`` answers, through a Deferred, with
the header edits for Postfix (:mod:`srsd.mailauth.message` actions). Which edits depends
on what the message is (:func:`classify`):

* **local** -- the client authenticated (SASL), or is in ``dkim.trusted_networks``
  (default loopback, which covers local submission: Postfix presents
  ``sendmail``/pickup mail to ``non_smtpd_milters`` as from 127.0.0.1), or has no
  address: DKIM-sign it with ``d=dkim.domain`` (``sign_local``). A local *sender
  address* alone does not make mail local: anyone can write one, and we would
  sign whatever they send.
* **forwarded** -- anything else with at least one recipient in a local domain
  (``srs.local_domains`` + ``srs.domain``; the milter sees recipients before
  virtual alias expansion, and on a forwarding host those are the aliases):
  verify it (SPF, every DKIM signature, the ARC chain) into one
  ``Authentication-Results`` field, ARC-seal it (``i=N+1``) and DKIM-sign it
  with ``d=dkim.domain`` as it will leave.
* **other** -- neither (relayed for a client Postfix trusts and we do not know
  about): left alone.

Fields carrying our authserv-id that a message brings along are deleted from
every local and forwarded message (RFC 8601 5): they are forged, or stale.

Crypto and key lookups run on a bounded thread pool, SPF on the
:class:`~srsd.spf.SPFChecker`'s: the reactor thread never blocks. An internal
error (a bug, an overloaded pool, a job over its time) answers per
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
from srsd.config import Config
from srsd.dns import Resolver
from srsd.domains import DomainSet, Networks
from srsd.log_limit import LimitedLog
from srsd.mailauth import dkimpy_setup
from srsd.mailauth.key_lookup import txt_lookup
from srsd.mailauth.keys import SigningKey
from srsd.mailauth.message import (
    Action,
    DeleteHeader,
    Envelope,
    HeaderField,
    InsertHeader,
    Message,
    TempFail,
    message_bytes,
)
from srsd.mailauth.results import authentication_results, forged_results, without_forged
from srsd.mailauth.results import summary as summarize
from srsd.mailauth.sign import seal_message, sign_message
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
    """Everything :class:`MailAuth` needs from one configuration, key loaded."""

    domain: str  # d= of our signatures and ARC sets
    selector: str  # "" = neither sign nor seal
    key: SigningKey | None
    signed_headers: tuple[str, ...]
    sign_forwarded: bool
    sign_local: bool
    arc: bool
    verify: bool
    authserv_id: str
    on_error: str
    budget: float
    threads: int
    local_domains: DomainSet
    trusted_networks: Networks

    @property
    def signs(self) -> bool:
        return self.key is not None


def auth_settings(config: Config) -> AuthSettings:
    """Build :class:`AuthSettings` from a validated config (its key is already loaded)."""
    d = config.dkim
    key = config.dkim_key
    if key is not None:
        for warning in key.warnings:
            log.warn("dkim.key_file: {warning}", warning=warning)
    return AuthSettings(
        domain=(d.domain or config.srs.domain).lower(),
        selector=d.selector,
        key=key,
        signed_headers=d.signed_headers,
        sign_forwarded=d.sign_forwarded,
        sign_local=d.sign_local,
        arc=d.arc and key is not None and key.key_type == "rsa",
        verify=d.verify,
        authserv_id=d.authserv_id or config.srs.domain,
        on_error=d.on_error,
        budget=d.budget,
        threads=d.threads,
        local_domains=DomainSet((*config.local_domains, config.srs.domain)),
        trusted_networks=Networks(d.trusted_networks),
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


def _verify_job(resolver: Resolver, headers: list[HeaderField], body: bytes, budget: float) -> _Verified:
    """Worker thread: every DKIM signature and the ARC chain, lookups within *budget*."""
    lookup = txt_lookup(resolver, time.monotonic() + budget)
    message = message_bytes(headers, body)
    return _Verified(verify_signatures(message, lookup), verify_arc(message, lookup))


def _sign_job(
    settings: AuthSettings,
    headers: list[HeaderField],
    body: bytes,
    results: HeaderField | None = None,
    seal: bool = False,
    sign: bool = True,
) -> list[HeaderField]:
    """Worker thread: the fields to add, newest (top) first: [DKIM-Signature,
    ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results] as asked.

    *headers* are the message's fields as they will leave, minus ours; *results* our
    Authentication-Results, which sits right above them (the caller inserts it) and
    which the ARC set records.
    """
    assert settings.key is not None
    leaving = ([results] if results else []) + headers
    added: list[HeaderField] = []
    if seal and results:
        arc_set = seal_message(
            leaving, body, settings.key, settings.domain, settings.selector, settings.authserv_id,
            settings.signed_headers,
        )  # fmt: skip
        added += arc_set
        leaving = arc_set + leaving
    if sign:
        added.insert(0, sign_message(leaving, body, settings.key, settings.domain, settings.selector,
                                     settings.signed_headers))  # fmt: skip
    return added


class _ARCUnverifiable(Exception):
    """A DNS failure kept us from validating an ARC chain (with on_error = tempfail)."""


class MailAuth:
    """The milter's message handler.

    :param settings: the configuration (``[dkim]``, ``[srs]`` local domains).
    :param resolver: srsd's resolver, for DKIM keys.
    :param spf_checker: an :class:`~srsd.spf.SPFChecker` for the SPF result.
    :param reactor: the reactor (its thread calls :meth:`end_of_message`).
    """

    def __init__(self, settings: Config | AuthSettings, resolver: Resolver, spf_checker: Any, reactor: Any) -> None:
        dkimpy_setup.install()
        self.resolver = resolver
        self.spf_checker = spf_checker
        self.reactor = reactor
        self.settings = settings if isinstance(settings, AuthSettings) else auth_settings(settings)
        self.pool = BoundedPool(reactor, self.settings.threads, "srsd-dkim")

    @property
    def pending(self) -> int:
        return self.pool.pending

    def reconfigure(self, settings: Config | AuthSettings) -> None:
        """Swap in a new configuration (SIGHUP); messages under way finish with the old.

        """
        new = settings if isinstance(settings, AuthSettings) else auth_settings(settings)
        if new.threads != self.settings.threads:
            self.pool.resize(new.threads)
        self.settings = new

    def stop(self) -> None:
        """Stop the thread pool (waits for running jobs)."""
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
        settings = self.settings
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
                d = self._local(settings, kept, message.body, deadline)
            else:
                d = self._forwarded(settings, envelope, kept, message.body, deadline)
        except Exception:
            return defer.succeed(self._error(settings, envelope, Failure(), started, "unclassified"))

        def done(result: tuple[list[HeaderField], str]) -> list[Action]:
            added, summary = result
            inserts: list[Action] = [InsertHeader(0, name, value) for name, value in reversed(added)]
            metrics.count_message(kind, "handled")
            metrics.count_signatures(added)
            limited.info(
                "milter",
                "{qid}: {kind} ({why}): {summary}{deleted} in {ms:.1f} ms",
                qid=envelope.queue_id or "-",
                kind=kind,
                why=why,
                summary=summary,
                deleted=f"; removed {len(forged)} forged Authentication-Results" if forged else "",
                ms=(time.monotonic() - started) * 1000,
            )
            return deletes + inserts

        d.addCallback(done)
        d.addErrback(lambda failure: self._error(settings, envelope, failure, started, kind))
        return d

    def _local(self, settings: AuthSettings, kept: list[HeaderField], body: bytes, deadline: float) -> defer.Deferred:
        if not (settings.signs and settings.sign_local):
            return defer.succeed(([], "not signed (sign_local off or no key)"))
        d = self.pool.run_until(deadline, _sign_job, settings, kept, body)
        return d.addCallback(lambda added: (added, f"signed d={settings.domain} s={settings.selector}"))

    def _forwarded(
        self, settings: AuthSettings, envelope: Envelope, kept: list[HeaderField], body: bytes, deadline: float
    ) -> defer.Deferred:
        seal = settings.arc and settings.signs
        sign = settings.sign_forwarded and settings.signs
        if not (settings.verify or seal):
            if not sign:
                return defer.succeed(([], "nothing to do (verify, arc and signing off)"))
            d = self.pool.run_until(deadline, _sign_job, settings, kept, body)
            return d.addCallback(lambda added: (added, f"signed d={settings.domain}"))

        spf = self.spf_checker.check(envelope.client_address, envelope.mail_from, envelope.helo, budget=settings.budget)
        verified = self.pool.run_until(deadline, _verify_job, self.resolver, kept, body, settings.budget)
        both = defer.gatherResults([spf, verified], consumeErrors=True)
        both.addErrback(lambda failure: failure.value.subFailure)

        def verified_cb(results: list[Any]) -> Any:
            spf_result, checked = results
            arc = checked.arc
            metrics.count_spf("milter", (spf_result,))
            metrics.count_dkim(checked.signatures)
            if arc is not None:
                metrics.count_arc("temperror" if arc.temporary else arc.cv)
            seal_now = seal
            if arc is not None and arc.temporary:
                if settings.on_error == "tempfail":
                    raise _ARCUnverifiable(arc.reason)
                arc, seal_now = None, False  # "continue": neither claim nor seal a chain we could not check
            elif arc is not None and not arc.sealable:
                seal_now = False
            header = authentication_results(
                settings.authserv_id,
                spf=_spf_triple(spf_result, envelope),
                dkim_results=checked.signatures,
                arc=arc,
            )
            summary = summarize(header[1])
            if not (seal_now or sign):
                return ([header] if settings.verify else [], summary)
            d = self.pool.run_until(deadline, _sign_job, settings, kept, body, header, seal_now, sign)

            def signed(added: list[HeaderField]) -> tuple[list[HeaderField], str]:
                text = summary
                if any(name == "ARC-Seal" for name, _ in added):
                    text += f"; sealed i={(arc.instances if arc else 0) + 1}"
                elif seal_now:  # dkimpy seals nothing, silently, when it cannot read our A-R
                    log.warn("{qid}: no ARC set was made (check dkim.authserv_id)", qid=envelope.queue_id or "-")
                if sign:
                    text += f"; signed d={settings.domain}"
                return added + ([header] if settings.verify else []), text

            return d.addCallback(signed)

        return both.addCallback(verified_cb)

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
        elif failure.check(defer.TimeoutError):
            limited.warn("milter_error", "{qid}: mail authentication {why}", qid=envelope.queue_id or "-",
                         why=failure.getErrorMessage())  # fmt: skip
        else:
            log.failure("{qid}: mail authentication failed", failure, qid=envelope.queue_id or "-")
        metrics.count_message(kind, "failed_" + settings.on_error)
        if settings.on_error == "tempfail":
            return [TempFail("temporary failure in DKIM/ARC processing, try again later")]
        return []


def _spf_triple(result: Any, envelope: Envelope) -> tuple[str, str, str] | None:
    if result is None:
        return None
    if result.identity == "helo":
        return result.result, "smtp.helo", envelope.helo
    return result.result, "smtp.mailfrom", _domain(envelope.mail_from)
