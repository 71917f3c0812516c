"""SPF checks (RFC 7208): srsd's evaluator (:mod:`srsd.spf_eval`) driven over DNS.

The evaluator asks its DNS questions one at a time and does no I/O. :func:`check_host`
answers them with a blocking resolver (the command line: ``srsd spf``, ``check-dns``);
:class:`SPFChecker` on the reactor, an answer kept in the cache at once and any other
through :class:`~srsd.dns_async.AsyncResolver`: a check waiting on DNS costs a suspended
generator, and the reactor goes on. Each check has an overall time budget and each query
a timeout, capped by what is left of the budget; a check that runs past its budget, or
finds the checker saturated, answers ``temperror``: callers decide what temperror means
for them (SPF-aware rewriting rewrites; the policy service defers or accepts per config).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from srsd.dns import DNSTemporaryError
from srsd.dns_async import AsyncResolver, Exchange, askable, reading_records
from srsd.dns_wire import Reading
from srsd.log_targets import debugging
from srsd.received_spf import received_spf
from srsd.spf_cache import SPFResultCache
from srsd.spf_eval import Evaluation, Outcome
from srsd.spf_record import SPFTempError

__all__ = ["SPFResult", "SPFChecker", "RESULTS", "check_host"]

log = Logger(namespace="srsd.spf")

#: RFC 7208 section 2.6 result keywords
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")


class BlockingResolver(Protocol):
    """What :func:`check_host` needs of a resolver (:class:`srsd.dns.Resolver` has it)."""

    timeout: float

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list: ...

    def start_ttl_tracking(self) -> None: ...

    def tracked_ttl(self) -> float | None: ...


@dataclass(frozen=True)
class SPFResult:
    """One check_host() outcome.

    ``result`` is an RFC 7208 2.6 keyword; ``explanation`` the evaluator's text (for a
    fail, the domain's exp= text when it has one); ``identity`` is "mailfrom" or
    "helo"; ``header`` the Received-SPF field value (RFC 7208 9.1), without the
    field name; ``ttl`` how long (seconds) the DNS data it rests on stays valid;
    ``sender_specific`` whether a macro it expanded read the local part (%{s},
    %{l}), so the result holds for this sender only, not for the whole domain.
    """

    result: str
    explanation: str
    identity: str = "mailfrom"
    header: str = ""
    ttl: float | None = None
    sender_specific: bool = False


def check_host(
    resolver: BlockingResolver,
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
    :returns: the result; never raises: a DNS failure, a bad client address or a
        resolver's unexpected exception is temperror.
    """
    deadline = time.monotonic() + budget
    resolver.start_ttl_tracking()

    try:
        evaluation = Evaluation(ip, sender, helo, receiver or "localhost")
    except ValueError:
        return SPFResult("temperror", f"SPF check failed: bad client address {ip!r}", "mailfrom" if sender else "helo")
    steps = evaluation.run()
    try:
        name, qtype = next(steps)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                steps.close()
                return _over_budget(evaluation, budget)
            try:
                records, error = resolver.records(name, qtype, min(remaining, resolver.timeout)), None
            except Exception as exc:
                records, error = _lookup_failure(exc)
            name, qtype = steps.throw(error) if error is not None else steps.send(records)
    except StopIteration as stop:
        return _result(evaluation, stop.value, resolver.tracked_ttl())
    except Exception:  # a bug in the evaluator: the check answers all the same
        log.failure("SPF check {ip} crashed", ip=evaluation.address)
        return _crashed(evaluation)


def _lookup_failure(error: Exception) -> tuple[list | None, SPFTempError | None]:
    """What a failed lookup means to the evaluation, for both drivers: (records, None) to
    send it, or (None, error) to throw in. Not a DNS name: no records (a void lookup); a
    DNS failure, or anything else a resolver raised: temperror."""
    if isinstance(error, ValueError):
        return [], None
    if isinstance(error, DNSTemporaryError):
        return None, SPFTempError(str(error))
    return None, SPFTempError("DNS lookup failed")


def _crashed(evaluation: Evaluation) -> SPFResult:
    return SPFResult("temperror", "SPF check failed", evaluation.identity)


def _over_budget(evaluation: Evaluation, budget: float) -> SPFResult:
    return SPFResult("temperror", f"SPF check exceeded its {budget:g} s budget", evaluation.identity)


def _result(evaluation: Evaluation, outcome: Outcome, ttl: float | None) -> SPFResult:
    header = received_spf(
        outcome.result,
        ip=evaluation.address,
        sender=evaluation.envelope_sender,
        helo=evaluation.helo,
        domain=evaluation.domain,
        identity=evaluation.identity,
        receiver=evaluation.receiver,
        mechanism=outcome.mechanism,
        problem=outcome.problem,
        reason=outcome.reason,
    )
    return SPFResult(outcome.result, outcome.explanation, evaluation.identity, header, ttl, evaluation.sender_specific)


class _Run:
    """One check on the reactor: the evaluation fed answers until it ends.

    An answer kept in the DNS cache goes back at once; any other is asked with what is
    left of the budget as its timeout (:meth:`AsyncResolver.ask`), and the evaluation
    resumes when it comes. *done* is called once, with the :class:`SPFResult`.
    """

    __slots__ = ("resolver", "evaluation", "steps", "deadline", "budget", "ttl", "done", "asked")

    def __init__(
        self,
        resolver: AsyncResolver,
        evaluation: Evaluation,
        deadline: float,
        budget: float,
        done: Callable[[SPFResult], None],
    ) -> None:
        self.resolver = resolver
        self.evaluation = evaluation
        self.steps = evaluation.run()
        self.budget = budget
        self.deadline = deadline  # time.monotonic() seconds
        self.ttl: float | None = None
        self.done = done
        self.asked = ""  # the name of the question waiting for its answer

    def step(self, records: list | None = None, error: Exception | None = None) -> None:
        """Feed *records* (or throw *error*) into the evaluation, then answer its
        questions until one must wait for DNS, or it ends."""
        steps, resolver = self.steps, self.resolver
        try:
            while True:
                name, qtype = steps.throw(error) if error is not None else steps.send(records)
                error = None
                reading = resolver.cached(name, qtype)
                if reading is not None:
                    records = self._records(reading, name)
                    continue
                if not askable(name):
                    records = []  # not a DNS name: no records (a void lookup)
                    continue
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    steps.close()
                    self.done(_over_budget(self.evaluation, self.budget))
                    return
                self.asked = name
                # Nothing may follow: an exchange that answers at once resumes the check inside.
                resolver.ask(name, qtype, min(remaining, resolver.timeout), self._answered, self._failed)
                return
        except StopIteration as stop:
            self.done(_result(self.evaluation, stop.value, self.ttl))
        except Exception:  # a bug in the evaluator: the check answers, the daemon goes on
            log.failure("SPF check {ip} crashed", ip=self.evaluation.address)
            self.done(_crashed(self.evaluation))

    def _records(self, reading: Reading, name: str) -> list:
        if reading.kind != "nxdomain":  # the TTL the result rests on (answers and NODATA)
            remaining = max(0.0, reading.expires - time.time())
            self.ttl = remaining if self.ttl is None else min(self.ttl, remaining)
        return reading_records(reading, name)

    def _answered(self, reading: Reading) -> None:
        self.step(self._records(reading, self.asked))

    def _failed(self, error: Exception) -> None:
        self.step(*_lookup_failure(error))


class SPFChecker:
    """Runs SPF checks on the reactor (:class:`_Run`), their DNS through an
    :class:`~srsd.dns_async.AsyncResolver` over *resolver*.

    :param resolver: the DNS resolver (its servers, per-query timeout and cache apply).
    :param threads: checks running at once (``[spf] threads``; the name is from the days
        of a thread pool); up to ``4 * threads`` in all may wait for a turn, more answer
        temperror at once instead of queueing without bound.
    :param budget: default seconds per check.
    :param receiver: this host's name for Received-SPF comments.
    :param cache_size: results kept (:class:`~srsd.spf_cache.SPFResultCache`); 0 = none.
    :param max_ttl: seconds a kept result lives at most.
    :param exchange: how DNS requests reach the servers (default: the reactor's UDP and
        TCP; tests on a fake reactor give their own).

    The same check asked again while it runs waits for that one; a result kept in the
    cache answers at once.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
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
        self.size = threads
        self.running = 0
        self.cache = SPFResultCache(cache_size, max_ttl)
        # checks waiting for a turn: each the function that starts it
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        # (ip, sender, helo, budget) -> the callers waiting for the check under way
        self._inflight: dict[tuple[str, str, str, float], list[defer.Deferred]] = {}

    @property
    def pending(self) -> int:
        """Checks running or waiting for a turn."""
        return self.running + len(self._queue)

    @property
    def max_pending(self) -> int:
        return 4 * self.size

    def cached(self, ip: str, sender: str, helo: str) -> SPFResult | None:
        """The kept result of this check, if there is one (no check is started)."""
        return self.cache.get(ip, sender, helo, time.monotonic())

    def check(self, ip: str, sender: str, helo: str, budget: float | None = None) -> defer.Deferred:
        """check_host() on the reactor: a Deferred firing with an :class:`SPFResult`
        within *budget* seconds (temperror on overrun or overload); never fails
        unless the caller cancels it (which cancels only the caller's wait)."""
        result = self.cached(ip, sender, helo)
        if result is not None:
            return defer.succeed(result)
        # Per budget too: a caller with a short one must not wait on a long one.
        budget = self.budget if budget is None else budget
        key = (ip, sender, helo, budget)
        mine: defer.Deferred = defer.Deferred()
        waiting = self._inflight.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._inflight[key] = [mine]

        def finished(result: SPFResult) -> None:
            self.cache.put(ip, sender, helo, result, time.monotonic())
            for d in self._inflight.pop(key):
                if not d.called:  # a caller that cancelled its wait is skipped
                    d.callback(result)

        self._run(ip, sender, helo, budget, finished)
        return mine

    def _run(self, ip: str, sender: str, helo: str, budget: float, finished: Callable[[SPFResult], None]) -> None:
        identity = "mailfrom" if sender else "helo"
        if self.pending >= self.max_pending:
            finished(SPFResult("temperror", "SPF checker overloaded", identity))
            return
        try:
            evaluation = Evaluation(ip, sender, helo, self.receiver or "localhost")
        except ValueError:
            finished(SPFResult("temperror", f"SPF check failed: bad client address {ip!r}", identity))
            return
        started = time.monotonic()

        def done(result: SPFResult) -> None:
            self.running -= 1
            if debugging():
                log.debug(
                    "SPF {identity} {ip} {sender!r} helo={helo!r}: {result} in {ms:.1f} ms",
                    identity=identity, ip=ip, sender=sender, helo=helo, result=result.result,
                    ms=(time.monotonic() - started) * 1000,
                )  # fmt: skip
            finished(result)
            self._start_waiting()

        def start() -> None:
            if expiry is not None:
                expiry.cancel()
            self.running += 1
            _Run(self.async_resolver, evaluation, started + budget, budget, done).step()

        expiry = None
        if self.running < self.size:
            start()
            return

        def expired() -> None:  # no turn came within the budget
            self._queue.remove(start)
            finished(_over_budget(evaluation, budget))

        expiry = self.reactor.callLater(budget, expired)
        self._queue.append(start)

    def _start_waiting(self) -> None:
        while self._queue and self.running < self.size:
            self._queue.popleft()()

    def check_all(self, ips: Iterable[str], sender: str, helo: str, budget: float | None = None) -> defer.Deferred:
        """Check *sender* from each of *ips* concurrently: Deferred[list[SPFResult]]."""
        return defer.gatherResults([self.check(ip, sender, helo, budget) for ip in ips])
