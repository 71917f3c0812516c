"""SPF evaluation (RFC 7208) with pyspf over srsd's resolver, never blocking the reactor.

pyspf is synchronous. In the daemon (:class:`SPFChecker`) each check runs as a greenlet
on the reactor thread (:mod:`srsd.greenpool`), its DNS queries asynchronous
(:mod:`srsd.dns_async`): a check waiting on DNS parks and the reactor goes on; no thread
hand-offs. :func:`check_host` itself is plain blocking code, and the command line
(``srsd spf``, ``check-dns``) calls it with the blocking :class:`~srsd.dns.Resolver`.
Each check has an overall time budget (pyspf's ``querytime``; its default 0 means no
limit) and a per-query timeout. A check that runs past its budget, or finds the checker
saturated, answers ``temperror``: callers decide what temperror means for them (SPF-aware
rewriting rewrites; the policy service defers or accepts per config).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import spf as pyspf
from twisted.internet import defer
from twisted.logger import Logger

from srsd.dns import Resolver
from srsd.dns_async import AsyncResolver, Exchange, WaitingResolver
from srsd.greenpool import GreenPool
from srsd.log_targets import debugging
from srsd.spf_cache import SPFResultCache
from srsd.workpool import PoolOverloaded

__all__ = ["SPFResult", "SPFChecker", "RESULTS", "check_host", "install_dns_hook"]

log = Logger(namespace="srsd.spf")

#: RFC 7208 section 2.6 result keywords
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")

# pyspf has one module-global DNS hook (spf.DNSLookup); srsd routes it to the
# resolver of the check running in the calling context -- a thread, or a greenlet,
# which runs in a context of its own -- so checks and resolvers coexist.


class _Check:
    __slots__ = ("resolver", "sender_specific")

    def __init__(self, resolver: Any) -> None:
        self.resolver = resolver
        self.sender_specific = False


_current: contextvars.ContextVar[_Check] = contextvars.ContextVar("srsd_spf_check")


def _dns_lookup(name: str, qtype: str, strict: Any = True, timeout: float | None = None) -> list:
    check = _current.get()
    records = check.resolver.spf_lookup(name, qtype, strict, timeout)
    if qtype in ("TXT", "SPF") and not check.sender_specific:
        # %{s}/%{l} make the result depend on the local part, not only the domain.
        for (_name, rtype), strings in records:
            if rtype not in ("TXT", "SPF"):
                continue  # the CNAMEs on the way
            text = b"".join(strings).lower()
            if b"%{l" in text or b"%{s" in text:
                check.sender_specific = True
    return records


def install_dns_hook() -> None:
    """Point pyspf's DNS at srsd's resolvers (idempotent). Not done at import:
    :func:`check_host`, srsd's only way into pyspf, makes sure of it; pyspf's own
    resolver calls the deprecated ``dns.resolver.query`` and knows no srsd settings."""
    if pyspf.DNSLookup is not _dns_lookup:
        pyspf.DNSLookup = _dns_lookup


@dataclass(frozen=True)
class SPFResult:
    """One check_host() outcome.

    ``result`` is an RFC 7208 2.6 keyword; ``explanation`` pyspf's text (for a
    fail, the domain's exp= text when it has one); ``identity`` is "mailfrom" or
    "helo"; ``header`` the Received-SPF field value (RFC 7208 9.1), without the
    field name; ``ttl`` how long (seconds) the DNS data it rests on stays valid;
    ``sender_specific`` whether a record it used has a local-part macro (%{s},
    %{l}), so the result holds for this sender only, not for the whole domain.
    """

    result: str
    explanation: str
    identity: str = "mailfrom"
    header: str = ""
    ttl: float | None = None
    sender_specific: bool = False


def check_host(
    resolver: Resolver | WaitingResolver,
    ip: str,
    sender: str,
    helo: str,
    *,
    budget: float = 10.0,
    receiver: str = "",
) -> SPFResult:
    """Evaluate SPF for *ip* (blocking: call it off the reactor thread).

    :param sender: MAIL FROM address (``local@domain``); empty checks the HELO
        identity (``postmaster@helo``, RFC 7208 2.3).
    :param helo: the HELO/EHLO name.
    :param budget: seconds for the whole evaluation (every DNS query included).
    :param receiver: this host's name, for the Received-SPF comment.
    :returns: the result; never raises: pyspf's PermError/TempError and any other
        exception (e.g. dnspython errors on impossible names) become permerror or
        temperror.
    """
    install_dns_hook()
    check = _Check(resolver)
    token = _current.set(check)
    try:
        return _evaluate(resolver, check, ip, sender, helo, budget, receiver)
    finally:
        _current.reset(token)


def _evaluate(resolver: Any, check: _Check, ip: str, sender: str, helo: str, budget: float, receiver: str) -> SPFResult:
    resolver.start_ttl_tracking()
    identity = "mailfrom" if sender else "helo"
    try:
        query = pyspf.query(
            i=ip,
            s=sender,
            h=helo,
            receiver=receiver or "localhost",
            querytime=budget,
            timeout=min(budget, resolver.timeout),
        )
        result, _code, explanation = query.check()
        try:
            header = query.get_header(result, receiver=receiver or None)
        except Exception:  # pyspf cannot describe every odd result
            header = f"{result.capitalize()} identity={identity}"
    except pyspf.TempError as exc:
        result, explanation, header = "temperror", f"SPF temporary error: {exc}", ""
    except pyspf.PermError as exc:
        result, explanation, header = "permerror", f"SPF permanent error: {exc}", ""
    except Exception as exc:  # pyspf lets some library errors escape
        result, explanation, header = "temperror", f"SPF check failed: {type(exc).__name__}: {exc}", ""
    if result not in RESULTS:
        result = "temperror"
    return SPFResult(result, explanation, identity, header, resolver.tracked_ttl(), check.sender_specific)


class SPFChecker:
    """Runs :func:`check_host` as greenlets on the reactor thread (:mod:`srsd.greenpool`),
    its DNS through an :class:`~srsd.dns_async.AsyncResolver` over *resolver*.

    :param resolver: the DNS resolver (its servers, per-query timeout and cache apply).
    :param threads: checks running at once (``[spf] threads``; the name is from the days
        of a thread pool); checks beyond ``4 * threads`` waiting answer temperror at once
        instead of queueing without bound.
    :param budget: default seconds per check.
    :param receiver: this host's name for Received-SPF comments.
    :param cache_size: results kept (:class:`~srsd.spf_cache.SPFResultCache`); 0 = none.
    :param max_ttl: seconds a kept result lives at most.
    :param exchange: how DNS requests reach the servers (default: the reactor's UDP and
        TCP; tests on a fake reactor give their own).

    The same check asked again while it runs waits for that one; a result kept in the
    cache answers at once, without the pool.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Resolver,
        *,
        threads: int = 8,
        budget: float = 10.0,
        receiver: str = "",
        cache_size: int = 50000,
        max_ttl: float = 3600.0,
        exchange: Exchange | None = None,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.async_resolver = AsyncResolver(resolver, reactor, exchange)
        self.budget = budget
        self.receiver = receiver
        self.pool = GreenPool(reactor, threads)
        self.cache = SPFResultCache(cache_size, max_ttl)
        # (ip, sender, helo, budget) -> the check under way: callers asking the same wait for it
        self._inflight: dict[tuple[str, str, str, float], defer.Deferred] = {}

    @property
    def pending(self) -> int:
        return self.pool.pending

    @property
    def max_pending(self) -> int:
        return self.pool.max_pending

    def cached(self, ip: str, sender: str, helo: str) -> SPFResult | None:
        """The kept result of this check, if there is one (no check is started)."""
        return self.cache.get(ip, sender, helo, time.monotonic())

    def check(self, ip: str, sender: str, helo: str, budget: float | None = None) -> defer.Deferred:
        """check_host() off the reactor: a Deferred firing with an :class:`SPFResult`
        within *budget* seconds (temperror on overrun or overload); never fails
        unless the caller cancels it (which cancels only the caller's wait)."""
        result = self.cached(ip, sender, helo)
        if result is not None:
            return defer.succeed(result)
        # Per budget too: a caller with a short one must not wait on a long one.
        key = (ip, sender, helo, self.budget if budget is None else budget)
        shared = self._inflight.get(key)
        if shared is None:
            shared = self._inflight[key] = self._run(ip, sender, helo, budget)

            def keep(result: Any) -> Any:
                del self._inflight[key]
                if isinstance(result, SPFResult):
                    self.cache.put(ip, sender, helo, result, time.monotonic())
                return result

            shared.addBoth(keep)
        mine: defer.Deferred = defer.Deferred()
        shared.addBoth(lambda result: (mine.called or mine.callback(result), result)[1])
        return mine

    def _run(self, ip: str, sender: str, helo: str, budget: float | None) -> defer.Deferred:
        budget = self.budget if budget is None else budget
        identity = "mailfrom" if sender else "helo"
        started = time.monotonic()
        # A small grace over the budget: pyspf enforces it between queries only.
        resolver = WaitingResolver(self.async_resolver)
        d = self.pool.run(budget + 0.25, check_host, resolver, ip, sender, helo, budget=budget, receiver=self.receiver)

        def failed(failure: Any) -> Any:
            if failure.check(defer.CancelledError):
                return failure  # the caller cancelled (its client went away): not a crash
            if failure.check(PoolOverloaded):
                return SPFResult("temperror", "SPF checker overloaded", identity)
            if failure.check(defer.TimeoutError):
                return SPFResult("temperror", f"SPF check exceeded its {budget:g} s budget", identity)
            log.failure("SPF check {ip} {sender!r} crashed", failure, ip=ip, sender=sender)
            return SPFResult("temperror", "SPF check failed", identity)

        def done(result: Any) -> Any:
            if not debugging():
                return result
            log.debug(
                "SPF {identity} {ip} {sender!r} helo={helo!r}: {result} in {ms:.1f} ms",
                identity=identity,
                ip=ip,
                sender=sender,
                helo=helo,
                result=getattr(result, "result", result),
                ms=(time.monotonic() - started) * 1000,
            )
            return result

        return d.addErrback(failed).addBoth(done)

    def check_all(self, ips: Iterable[str], sender: str, helo: str, budget: float | None = None) -> defer.Deferred:
        """Check *sender* from each of *ips* concurrently: Deferred[list[SPFResult]]."""
        return defer.gatherResults([self.check(ip, sender, helo, budget) for ip in ips])
