"""Each SRS map answer, counted and, when an admin would ask about it, logged.

:class:`~srsd.srs_maps.SRSMaps` hands every answer it decides to
:meth:`LookupOutcomes.record`. Every answer is counted by map and outcome (a reason
name from :data:`REASONS` for not-found answers: the ``srsd_lookups_total``,
``srsd_forward_unchanged_total``, ``srsd_reverse_unchanged_total`` and
``srsd_srs_refusals_total`` metrics). At 50 000 lookups a second a line per lookup
would be a flood, so only these get an ``info`` line, each at most once per key and
UTC day and through the rate limit of its kind (:mod:`srsd.log_limit`):

* ``forward_rewritten``: ``forward SENDER -> SRS: rewritten`` (the SRS address is the
  same all day, so one line gives the mapping for every message of the day);
* ``forward_unchanged``: a sender SPF-aware rewriting keeps, and a sender left alone
  for an unusual reason (malformed, result too long); not the every-message reasons
  (null sender, local domain, our own SRS address looked up again, canonical(5)'s
  ``user`` and ``@domain`` keys): those are only counted;
* ``reverse_reversed``: ``reverse SRS -> ORIGINAL: reversed`` (keys compared in lower
  case: smtpd asks in lower case, cleanup as received);
* ``reverse_refused``: an SRS address at our domain that does not verify (forged,
  stale, mangled);
* ``lookup_temp`` (warn): an answer of TEMP decided in the core.

tcp_table and socketmap requests carry no Postfix queue id: these lines have none.
``log.level = "debug"`` logs every lookup instead (no limit).
"""

from __future__ import annotations

from twisted.logger import Logger

from srsd import metrics
from srsd.log_limit import LimitedLog, once_per_day
from srsd.rewrite import FOUND, NOTFOUND, Answer

__all__ = ["LookupOutcomes", "REASONS", "SPF_KEPT", "reason_of"]

log = Logger(namespace="srsd")
limited = LimitedLog(log)

#: the text of a forward answer keeping a sender whose SPF authorizes our egress
SPF_KEPT = "SPF of the sender authorizes our egress IPs"

#: fixed not-found texts of :mod:`srsd.rewrite` (and :data:`SPF_KEPT`) -> reason name
REASONS = {
    "null sender": "null_sender",
    "not a complete address": "fallback_key",  # canonical(5)'s "user" and "@domain" keys
    "already rewritten": "already_rewritten",
    "local domain": "local_domain",
    SPF_KEPT: "spf_pass",
    "not an SRS address": "not_srs",
    "not the SRS domain": "other_domain",
}
#: not-found reasons an admin does not need a line for (every message has them)
QUIET = frozenset({"null_sender", "fallback_key", "already_rewritten", "local_domain", "not_srs", "other_domain"})


def reason_of(text: str) -> str:
    """The reason name of a not-found answer's *text* (the SRS errors of :mod:`srsd.srs`
    carry the offending input, so they are told apart by their fixed part)."""
    reason = REASONS.get(text)
    if reason is not None:
        return reason
    if text.startswith("hash "):
        return "short_hash" if " shorter than " in text else "forged"
    if text.startswith("malformed timestamp"):
        return "bad_timestamp"
    if text.startswith("timestamp "):
        return "expired"
    if text.startswith("rewritten address longer"):
        return "too_long"
    if text.startswith(("not local@domain", "no @ in", "SRS0 ", "SRS1 ")):
        return "malformed"
    if text.startswith("alias "):  # not in the alias store (expired, wiped), or no store configured
        return "unknown_alias"
    return "other"


_rewritten = once_per_day()
_reversed = once_per_day()
_unchanged = once_per_day()


class LookupOutcomes:
    """Counts and logs the answers of one :class:`~srsd.srs_maps.SRSMaps`.

    :param debug: log every lookup at debug level as well.
    """

    def __init__(self, *, debug: bool = False) -> None:
        self.debug = debug
        self.counts = metrics.lookup_outcomes()

    def record(self, map_name: str, key: str, answer: Answer, detail: str = "") -> Answer:
        """Count (and maybe log) *answer* to the lookup of *key* in *map_name*; returns it.

        :param detail: what else decided it, for the line (SPF-aware: the SPF results).
        """
        status = answer[0]
        if status == FOUND:
            self.counts[map_name, "found"] += 1
            if map_name == "forward":
                if ((key, detail) if detail else key) not in _rewritten.keys:
                    self._rewritten(key, answer[1], detail)
            elif key.lower() not in _reversed.keys:
                self._reversed(key, answer[1])
        elif status == NOTFOUND:
            reason = REASONS.get(answer[1]) or reason_of(answer[1])
            self.counts[map_name, reason] += 1
            if reason not in QUIET:
                self._unchanged(map_name, key, answer[1], reason, detail)
        else:
            self.counts[map_name, "temp"] += 1
            limited.warn(
                "lookup_temp", "{map} {key!r}: temporary failure: {text}", map=map_name, key=key, text=answer[1]
            )
        if self.debug:
            log.debug("{map} {key!r}: {status} {text}", map=map_name, key=key, status=status, text=answer[1])
        return answer

    def _rewritten(self, sender: str, srs: str, detail: str) -> None:
        _rewritten.first((sender, detail) if detail else sender)
        limited.info(
            "forward_rewritten",
            "forward {sender} -> {srs}: rewritten{detail}",
            sender=sender,
            srs=srs,
            detail=f" ({detail})" if detail else "",
        )

    def _reversed(self, address: str, original: str) -> None:
        _reversed.first(address.lower())
        limited.info(
            "reverse_reversed", "reverse {address} -> {original}: reversed", address=address, original=original
        )

    def _unchanged(self, map_name: str, key: str, text: str, reason: str, detail: str) -> None:
        if not _unchanged.first((map_name, key.lower(), detail)):
            return
        if map_name == "reverse":
            # An SRS address at our domain that does not verify: forged, stale or
            # mangled. Worth an admin's eye; it is answered not-found.
            limited.info("reverse_refused", "reverse {key!r} refused: {reason}", key=key, reason=text)
        elif reason == "spf_pass":
            limited.info(
                "forward_unchanged", "forward {sender}: kept, its SPF authorizes our egress ({summary})",
                sender=key, summary=detail,
            )  # fmt: skip
        else:
            limited.info("forward_unchanged", "forward {key!r}: left alone: {why}", key=key, why=text)
