"""DKIM (RFC 6376 6) and ARC (RFC 8617 5.2) verification of an incoming message.

dkimpy does the canonicalization and cryptography; srsd verifies *every*
signature (dkimpy's ``dkim.verify`` checks only the first), maps each outcome to an
RFC 8601 result keyword, and looks every key up once through :mod:`key_lookup
<srsd.mailauth.key_lookup>` so a missing key, an unusable key and a temporary DNS
failure are told apart. Blocking, no sockets: runs on the milter's worker threads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dkim

from srsd.mailauth.dkimpy_setup import MIN_RSA_BITS, QUIET
from srsd.mailauth.key_lookup import DKIMTemporaryError, KeyLookup

__all__ = ["SignatureResult", "ARCResult", "verify_signatures", "verify_arc"]


@dataclass(frozen=True)
class SignatureResult:
    """One DKIM-Signature's outcome (RFC 8601 2.7.1 result keywords).

    ``result``: pass, fail, neutral (malformed signature), permerror (no usable
    key), temperror (key lookup failed for now). ``reason`` a short text for the
    A-R comment and logs.
    """

    result: str
    reason: str = ""
    domain: str = ""
    selector: str = ""
    identity: str = ""
    algorithm: str = ""
    b: str = ""  # the b= value, whitespace removed


@dataclass(frozen=True)
class ARCResult:
    """ARC chain validation (RFC 8617 5.2): ``cv`` is none, pass or fail;
    ``sealable`` False when no new set may be added (a set already says cv=fail,
    an ARC field claims instance 50 or more or has no instance, or the chain could not
    be checked now);
    ``temporary`` True when a DNS failure prevented the check."""

    cv: str
    reason: str = ""
    instances: int = 0
    sealable: bool = True
    temporary: bool = False


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


def verify_signatures(message: bytes, dnsfunc: KeyLookup, limit: int = 8) -> list[SignatureResult]:
    """Verify every DKIM-Signature of *message* (topmost first; at most *limit*).

    dkimpy's ``dkim.verify`` only looks at the first signature; this asks
    ``DKIM.verify(idx=i)`` for each and maps the outcome to an A-R result.
    """
    try:
        verifier = dkim.DKIM(message, logger=QUIET, minkey=MIN_RSA_BITS)
    except dkim.DKIMException as exc:
        return [SignatureResult("permerror", f"unparsable message: {exc}")]
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    results = []
    for idx in range(min(count, limit)):
        results.append(_verify_one(verifier, idx, dnsfunc))
    return results


def _verify_one(verifier: Any, idx: int, dnsfunc: KeyLookup) -> SignatureResult:
    sigheaders = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    try:
        tags = dkim.util.parse_tag_value(sigheaders[idx])
    except Exception:
        tags = {}
    info = {
        "domain": _text(tags.get(b"d")),
        "selector": _text(tags.get(b"s")),
        "identity": _text(tags.get(b"i")),
        "algorithm": _text(tags.get(b"a")),
        "b": re.sub(r"\s+", "", _text(tags.get(b"b"))),
    }
    try:
        prep = verifier.verify_headerprep(idx)
    except dkim.DKIMException as exc:
        return SignatureResult("neutral", f"malformed signature: {exc}", **info)
    if not prep:
        return SignatureResult("neutral", "malformed signature", **info)
    sig, include_headers, _ = prep
    name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    # Look the key up once here, to tell "no key" and "bad key" from a bad signature.
    try:
        record = dnsfunc(name)
    except DKIMTemporaryError as exc:
        return SignatureResult("temperror", f"key lookup: {exc}", **info)
    if not record:
        return SignatureResult("permerror", "no key for signature", **info)
    try:
        _pk, keysize, ktag, _tlsrpt = dkim.evaluate_pk(name, record)
    except Exception as exc:
        # The record is the signer's DNS data, and dkimpy's parsers raise what they like on
        # a bad one: DKIMException, binascii.Error, and AssertionError from its ASN.1
        # reader (a p= that is not a key; found by fuzz/fuzz_headers.py).
        return SignatureResult("permerror", f"unusable key: {str(exc) or type(exc).__name__}"[:200], **info)
    if ktag is None:
        return SignatureResult("permerror", "key not for email", **info)
    if ktag == b"rsa" and keysize < MIN_RSA_BITS:
        return SignatureResult("permerror", f"key too small ({keysize} bits)", **info)
    try:
        ok = verifier.verify(idx=idx, dnsfunc=lambda _name, timeout=5: record)
    except dkim.DKIMException as exc:
        reason = str(exc)
        if "body hash mismatch" in reason:
            return SignatureResult("fail", "body hash mismatch", **info)
        return SignatureResult("fail", reason[:200], **info)
    except ValueError as exc:
        # dkimpy decodes bh= and b= only here, and lets binascii.Error escape: a message
        # with one bad signature made the milter fail at every attempt (fuzz/fuzz_headers.py)
        return SignatureResult("neutral", f"malformed signature: {exc}"[:200], **info)
    except DKIMTemporaryError as exc:  # pragma: no cover - the record is already in hand
        return SignatureResult("temperror", str(exc), **info)
    if ok:
        return SignatureResult("pass", "", **info)
    return SignatureResult("fail", "signature did not verify", **info)


def verify_arc(message: bytes, dnsfunc: KeyLookup) -> ARCResult:
    """Validate the ARC chain of *message* (RFC 8617 5.2) with ``dkim.arc_verify``."""
    try:
        cv, results, reason = dkim.arc_verify(message, logger=QUIET, dnsfunc=dnsfunc, minkey=MIN_RSA_BITS)
    except DKIMTemporaryError as exc:
        return ARCResult("fail", f"temporary DNS error: {exc}", sealable=False, temporary=True)
    except Exception as exc:  # dkimpy lets parsing errors of odd chains escape
        return ARCResult("fail", f"{type(exc).__name__}: {exc}"[:200], sealable=_sealable(message, 0))
    instances = max((r.get("instance", 0) for r in results), default=0)
    if cv is None:
        # A set already reported cv=fail: the chain has ended (RFC 8617 5.1 step 1).
        return ARCResult("fail", _text_or(reason), instances, sealable=False)
    text = cv.decode("ascii")
    reason = "" if text != "fail" else _text_or(reason)
    return ARCResult(text, reason, instances, sealable=_sealable(message, instances))


def _sealable(message: bytes, instances: int) -> bool:
    """Whether a new set may go on *message*, whose chain validated *instances* sets:

    * the highest i= of its ARC fields, read as the sealer reads it
      (:func:`srsd.mailauth.sign.seal_message`), is under 50: the sealer refuses past
      that, and the results of a chain that failed need not show it (an ARC field
      claiming i=112 made every attempt to seal the message fail; fuzz/fuzz_signing.py);
    * every ARC field has an instance of 1 or more: one without (or with ``i=0``)
      belongs to no set, and verifiers disagree on what a seal over it covers (dkimpy's
      picks ARC fields by position and instance 0 as one below 1, so it hashed such a
      field instead of ours and our set failed; fuzz/fuzz_signing.py).
    """
    try:
        arc = dkim.ARC(message, logger=QUIET)
        highest, numbered = arc.sorted_arc_headers()
    except dkim.DKIMException:  # dkimpy cannot read the message: nor can it seal it
        return True
    fields = sum(1 for name, _ in arc.headers if name.lower().rstrip() in dkim.ARC.ARC_HEADERS)
    return max(instances, highest) < 50 and fields == sum(1 for i, _ in numbered if i >= 1)


def _text_or(reason: Any) -> str:
    return str(reason)[:200]
