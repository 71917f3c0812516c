"""DKIM key lookups (RFC 6376 3.6.2) through srsd's resolver, as dkimpy's ``dnsfunc``.

srsd's nameservers, cache and timeouts apply, with a per-message deadline, and a
temporary failure is told apart from a missing key (dkimpy's own lookup turns
both into "no key"). Blocking: runs on the milter's worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from srsd.dns import DNSTemporaryError, Resolver
from srsd.mailauth.keys import SigningKey, record_problem

__all__ = ["DKIMTemporaryError", "KeyLookup", "txt_lookup", "published_key_problem"]

#: dkimpy's ``dnsfunc(name, timeout=5)``: the TXT record's text, or None
KeyLookup = Callable[..., "bytes | None"]


class DKIMTemporaryError(Exception):
    """A key lookup that failed for now (timeout, SERVFAIL, deadline passed).

    Deliberately not a ``dkim.DKIMException``: dkimpy catches those and reports a
    plain "invalid", and a temporary failure must be told apart from a missing key.
    """


def txt_lookup(resolver: Resolver, deadline: float | None = None) -> KeyLookup:
    """dkimpy's ``dnsfunc(name, timeout=5)`` over srsd's resolver.

    Returns the first TXT record's character-strings joined (RFC 6376 3.6.2.2), or
    None when the name has no TXT record. *deadline* (``time.monotonic()``) caps
    every query; past it, or on a DNS timeout/SERVFAIL, raises
    :class:`DKIMTemporaryError`.
    """

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        limit = float(timeout)
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
            if limit <= 0:
                raise DKIMTemporaryError(f"no time left to look up {text}")
        try:
            answer = resolver.resolve(text.rstrip("."), "TXT", limit)
        except DNSTemporaryError as exc:
            raise DKIMTemporaryError(str(exc)) from None
        except ValueError:
            return None  # an impossible name has no key
        if answer is None:
            return None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    return dnsfunc


def published_key_problem(resolver: Resolver, name: str, key: SigningKey, timeout: float | None = None) -> str | None:
    """What keeps the key record at *name* (``selector._domainkey.domain``) from
    verifying signatures made with *key*, as published now; None when it matches.

    Blocking (worker threads, the CLI). A name with several TXT records is a problem:
    verifiers may pick any one (RFC 6376 3.6.2.2).

    :raises DKIMTemporaryError: timeout or SERVFAIL (nothing is known yet).
    """
    try:
        answer = resolver.resolve(name, "TXT", timeout)
    except DNSTemporaryError as exc:
        raise DKIMTemporaryError(str(exc)) from None
    except ValueError:
        return "not a valid DNS name"
    if answer is None:
        return "no TXT record"
    records = [b"".join(rdata.strings) for rdata in answer]
    if len(records) > 1:
        return f"{len(records)} TXT records; verifiers pick any one of them"
    return record_problem(records[0], key)
