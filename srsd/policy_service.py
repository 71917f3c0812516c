"""The SPF policy service: runs the checks a policy request needs and remembers each
message's verdict, so every recipient of a message gets the same answer and the
header is added once.

The decisions are :mod:`srsd.spf_policy`'s (pure); this module adds what needs the
reactor: the SPF checks on the :class:`~srsd.spf.SPFChecker` (Deferreds), the
per-message memory (an LRU) and the log line per verdict. The wire is
:mod:`srsd.protocols.policy`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from srsd import metrics
from srsd.config import PolicySettings
from srsd.log_limit import LimitedLog
from srsd.spf import SPFResult
from srsd.spf_policy import (
    DUNNO,
    PolicyRequest,
    Rules,
    Verdict,
    decide,
    error_action,
    for_state,
    parse_request,
    plan_checks,
    screen,
)

__all__ = ["PolicyService"]

log = Logger(namespace="srsd.policy")
limited = LimitedLog(log)


@dataclass
class _Message:
    """One message's verdict, or the requests waiting for it."""

    verdict: Verdict | None = None
    waiting: list[defer.Deferred] = field(default_factory=list)


class PolicyService:
    """Answers Postfix policy requests; one instance per daemon.

    :param settings: the ``[policy]`` section.
    :param checker: an :class:`~srsd.spf.SPFChecker` (anything with its ``check``).
    :param receiver: this host's name in headers srsd writes itself.
    :param max_messages: messages whose verdicts are remembered (LRU), so that
        every recipient of a message gets the same decision and the header is
        added once. Postfix sends a message's requests over one connection within
        one SMTP transaction, so this only needs to cover concurrent transactions.
    """

    def __init__(self, settings: PolicySettings, checker: Any, receiver: str = "", *, max_messages: int = 4096) -> None:
        self.checker = checker
        self.rules = Rules(settings, receiver)
        self.max_messages = max_messages
        self._messages: OrderedDict[tuple[str, ...], _Message] = OrderedDict()

    def reconfigure(self, settings: PolicySettings, checker: Any = None, receiver: str | None = None) -> None:
        """Apply a reloaded configuration; remembered verdicts are kept (a message
        in flight keeps its decision and gets no second header)."""
        self.rules = Rules(settings, self.rules.receiver if receiver is None else receiver)
        if checker is not None:
            self.checker = checker

    def error_action(self) -> str:
        """See :func:`error_action`; the protocol answers malformed requests with it."""
        return error_action(self.rules)

    # -- one request ------------------------------------------------------------------

    def handle(self, attrs: dict[str, str]) -> defer.Deferred:
        """Answer one request: a Deferred firing with the action (never failing)."""
        try:
            return self._handle(attrs)
        except Exception:
            log.failure("policy: request {attrs!r} failed", attrs=attrs)
            return defer.succeed(self.error_action())

    def _handle(self, attrs: dict[str, str]) -> defer.Deferred:
        rules = self.rules
        request = parse_request(attrs)
        if isinstance(request, Verdict):
            metrics.count_policy_action(request.action)
            if request.reason.startswith("nothing to check"):
                log.debug("policy: {reason}: DUNNO", reason=request.reason)
            else:
                limited.info("policy", "policy: {reason}: DUNNO", reason=request.reason)
            return defer.succeed(request.action)
        key = request.message_key
        known = self._messages.get(key) if key is not None else None
        if known is not None:
            self._messages.move_to_end(key)
            if known.verdict is not None:
                return defer.succeed(for_state(known.verdict.repeat, request.state))
            d: defer.Deferred = defer.Deferred()
            known.waiting.append(d)
            return d.addCallback(lambda verdict: for_state(verdict.repeat, request.state))
        early = screen(request, rules)
        if early is not None:
            if early.action != DUNNO and key is not None:
                self._remember(key, _Message(early))
            self._log(request, early)
            return defer.succeed(for_state(early.action, request.state))
        message = _Message()
        if key is not None:
            self._remember(key, message)
        try:
            outcome = self._evaluate(request, rules)
        except Exception:
            return defer.succeed(self._crashed(Failure(), request, key, message))
        if isinstance(outcome, Verdict):  # every result was kept: decided now, no Deferred chain
            return defer.succeed(self._decided(outcome, request, key, message))
        outcome.addCallback(self._decided, request, key, message)
        outcome.addErrback(self._crashed, request, key, message)
        return outcome

    def _remember(self, key: tuple[str, ...], message: _Message) -> None:
        self._messages[key] = message
        while len(self._messages) > self.max_messages:
            self._messages.popitem(last=False)

    def _evaluate(self, request: PolicyRequest, rules: Rules) -> Verdict | defer.Deferred:
        """The verdict now when the checker has every result the plan needs kept (its
        result cache), else a Deferred of it."""
        plan = plan_checks(request, rules)
        # (ip, sender, helo) of each check; a result known without one; None: not checked
        wanted: list[tuple[str, str, str] | SPFResult | None] = [
            (request.ip, "", request.helo)
            if plan.helo
            else (SPFResult("none", plan.helo_none, "helo") if plan.helo_none else None),
            (request.ip, request.sender, request.helo) if plan.mail_from else None,
            *((request.ip, "postmaster@" + domain, domain) for domain in plan.whitelist_domains),
        ]

        def combine(results: list[Any]) -> Verdict:
            helo, mail_from, *listed = results
            metrics.count_spf("policy", (helo, mail_from))
            passes = [dom for dom, r in zip(plan.whitelist_domains, listed, strict=True) if r.result == "pass"]
            passed = passes[0] if passes else ""
            return decide(request, rules, helo, mail_from, passed)

        cached = getattr(self.checker, "cached", None)
        if cached is not None:
            kept = [cached(*w) if isinstance(w, tuple) else w for w in wanted]
            if all(k is not None for k, w in zip(kept, wanted, strict=True) if w is not None):
                return combine(kept)
        checks = [self.checker.check(*w) if isinstance(w, tuple) else defer.succeed(w) for w in wanted]
        return defer.gatherResults(checks, consumeErrors=True).addCallback(combine)

    def _decided(self, verdict: Verdict, request: PolicyRequest, key: Any, message: _Message) -> str:
        message.verdict = verdict
        self._log(request, verdict)
        waiting, message.waiting = message.waiting, []
        for d in waiting:
            d.callback(verdict)
        return for_state(verdict.action, request.state)

    def _crashed(self, failure: Any, request: PolicyRequest, key: Any, message: _Message) -> str:
        log.failure("policy: deciding for {ip} <{sender}> failed", failure, ip=request.ip, sender=request.sender)
        if key is not None and self._messages.get(key) is message:
            del self._messages[key]  # the next recipient tries again
        action = self.error_action()
        waiting, message.waiting = message.waiting, []
        for d in waiting:
            d.callback(Verdict(action, "error", "internal error"))
        return action

    def _log(self, request: PolicyRequest, verdict: Verdict) -> None:
        metrics.count_policy_action(verdict.action)
        if verdict.action == DUNNO and verdict.result == "skipped":
            log.debug(
                "policy {instance}: {ip}: {reason}", instance=request.instance, ip=request.ip, reason=verdict.reason
            )
            return
        limited.info(
            "policy",
            "{qid}: policy {instance}: client={ip} helo={helo!r} from=<{sender}>: {reason} -> {action}",
            qid=request.queue_id or "NOQUEUE",
            instance=request.instance or "-",
            ip=request.ip,
            helo=request.helo,
            sender=request.sender,
            reason=verdict.reason,
            action=verdict.action if verdict.refuses else verdict.action.split(":", 1)[0],
        )
