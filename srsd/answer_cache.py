"""The replies of SRS lookups that cannot change before the day ends, by request bytes.

A forward rewrite carries today's timestamp and a reverse checks an address's age
in days: both are pure functions of the key, the configuration and the UTC day
number (:mod:`srsd.srs`). So the reply to a repeated request (cleanup looks every
result up again; smtpd and cleanup both ask the reverse map for each recipient)
is the one already sent, until 00:00 UTC or a reload. Which answers qualify is
decided by :meth:`srsd.srs_maps.SRSMaps.cacheable`; this module only keeps them.

Keyed by the request exactly as it arrived (``get KEY\\n``, a whole netstring), so
a hit skips decoding, deciding and encoding: the adapters look here first
(:mod:`srsd.protocols.base`). One cache per endpoint and process; bounded by
entry count, the oldest half dropped when full (no bookkeeping on a hit).
"""

from __future__ import annotations

import time
from itertools import islice

__all__ = ["AnswerCache"]

_DAY = 86400


class AnswerCache:
    """Reply bytes by request bytes, valid until the next 00:00 UTC; each with the
    (map, outcome) a replay counts as (srsd.metrics), so counts stay per lookup.

    :param max_entries: replies kept (>= 1); when full the oldest half goes.

    The hot path reads :attr:`entries` and :attr:`until` directly (a method call
    costs as much as the lookup it saves); :meth:`put` is the only writer.
    """

    __slots__ = ("entries", "until", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, max_entries)
        self.entries: dict[bytes, tuple[bytes, tuple[str, str]]] = {}
        self.until = 0.0  # time.time() past which the entries are yesterday's

    def get(self, request: bytes) -> bytes | None:
        """The reply cached for *request*, or None (none, or from a past day)."""
        entry = self.entries.get(request)
        if entry is not None and time.time() < self.until:
            return entry[0]
        return None

    def put(self, request: bytes, reply: bytes, outcome: tuple[str, str]) -> None:
        """Remember *reply* for *request* until the day ends; *outcome*: what a replay counts as."""
        now = time.time()
        if now >= self.until:
            self.entries.clear()
            self.until = (int(now) // _DAY + 1) * _DAY
        elif len(self.entries) >= self.max_entries:
            for old in list(islice(self.entries, len(self.entries) // 2 or 1)):
                del self.entries[old]
        self.entries[request] = (reply, outcome)

    def clear(self) -> None:
        """Forget every reply (a reload: new secrets or domains change answers)."""
        self.entries.clear()
