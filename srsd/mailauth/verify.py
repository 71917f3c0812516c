"""DKIM (RFC 6376 6) and ARC (RFC 8617 5.2) verification of an incoming message.

srsd verifies *every* signature (dkimpy's ``dkim.verify`` checks only the first), maps
each outcome to an RFC 8601 result keyword, and looks every key up once through
:mod:`key_lookup <srsd.mailauth.key_lookup>` so a missing key, an unusable key and a
temporary DNS failure are told apart.

It verifies from the (name, value) fields and the body the milter holds, with the
signer's canonicalization (:mod:`srsd.mailauth.canonical`): the message is not
parsed again, and the fields and body it canonicalizes are the ones the signing that
follows hashes. A signature is read as dkimpy reads it (its tag-list parser and field
checks, ``dkim.util.parse_tag_value`` and ``dkim.validate_signature_fields``); the
key step is one OpenSSL call (``cryptography``). Why not dkimpy's ``DKIM.verify``:
docs/dkim.md, "Verifying without dkimpy's message objects". Blocking, no sockets:
runs on the milter's worker threads.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from srsd.mailauth.canonical import (
    ARC_FIELDS,
    MAX_ARC_INSTANCE,
    arc_sets,
    body_digest,
    body_for,
    canonical_fields,
    selected,
    simple_fields,
    without_b,
)
from srsd.mailauth.dkimpy_setup import MIN_RSA_BITS
from srsd.mailauth.key_lookup import DKIMTemporaryError, KeyLookup
from srsd.mailauth.message import HeaderField, raw_value

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


class _Refused(Exception):
    """A signature that cannot be checked: ``result`` (neutral, permerror, temperror)
    and the reason."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result, self.reason = result, reason


@dataclass(frozen=True)
class _Key:
    """A DKIM key record (RFC 6376 3.6.1) ready to verify with."""

    kind: bytes  # k=: b"rsa" or b"ed25519"
    bits: int
    public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    hashes: frozenset[bytes] | None  # h=: the hash algorithms allowed, None = any
    strict_identity: bool  # t=s: i= must be in d= itself, not a subdomain


_DIGESTS = {b"sha256": hashes.SHA256(), b"sha1": hashes.SHA1()}  # noqa: S303 (rsa-sha1 is still verified)
_H_SEPARATOR = re.compile(rb"\s*:\s*")
_WHITESPACE = re.compile(rb"\s+")


def _signed_names(tags: dict[bytes, bytes]) -> list[bytes]:
    """h=: the field names a signature covers, lower case, in order (RFC 6376 3.5)."""
    return [name.lower() for name in _H_SEPARATOR.split(tags[b"h"].strip())]


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


def _tags(value: str) -> dict[bytes, bytes]:
    """A signature's tag-list (RFC 6376 3.2), as dkimpy reads it.

    :raises _Refused: neutral, not a tag-list (a duplicate tag, a tag without ``=``).
    """
    try:
        return dkim.util.parse_tag_value(raw_value(value))
    except dkim.util.InvalidTagValueList as exc:
        raise _Refused("neutral", f"malformed signature: {exc}") from None


@functools.lru_cache(maxsize=512)
def _parsed_key(record: bytes) -> _Key:
    """The key in TXT *record* (RFC 6376 3.6.1), parsed once per record text.

    :raises _Refused: permerror: not a key record, a key not for email, a key type
        other than rsa and ed25519, an RSA key under :data:`MIN_RSA_BITS`.
    """
    try:
        # dkimpy's reading of the record: version, k=, p= (SubjectPublicKeyInfo or
        # RSAPublicKey), s=. Its parsers raise what they like on a bad one:
        # DKIMException, binascii.Error, and AssertionError from its ASN.1 reader (a p=
        # that is not a key; found by fuzz/fuzz_headers.py).
        pk, bits, kind, _tlsrpt = dkim.evaluate_pk(b"key", record)
        tags = dkim.util.parse_tag_value(record)
    except Exception as exc:
        raise _Refused("permerror", f"unusable key: {str(exc) or type(exc).__name__}"[:200]) from None
    if kind is None:
        raise _Refused("permerror", "key not for email")
    if kind == b"rsa" and bits < MIN_RSA_BITS:
        raise _Refused("permerror", f"key too small ({bits} bits)")
    try:
        if kind == b"rsa":
            public = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]).public_key()
        else:
            public = ed25519.Ed25519PublicKey.from_public_bytes(bytes(pk))
    except ValueError as exc:  # numbers OpenSSL refuses (an even exponent: fuzz/fuzz_headers.py)
        raise _Refused("permerror", f"unusable key: {exc}"[:200]) from None
    allowed = tags.get(b"h")
    flags = {flag.strip() for flag in tags.get(b"t", b"").split(b":")}
    return _Key(
        kind,
        bits,
        public,
        frozenset(_H_SEPARATOR.split(allowed.strip().lower())) if allowed else None,
        b"s" in flags,
    )


def _validate(tags: dict[bytes, bytes], *args: Any) -> None:
    """``dkim.validate_signature_fields(tags, *args)``, with its own slips taken for what
    they are, a malformed signature (an ``i=`` as long as ``d=`` raised IndexError in
    it: fuzz/corpus/headers/crash-identity-as-long-as-domain).

    :raises _Refused: neutral.
    """
    try:
        dkim.validate_signature_fields(tags, *args)
    except dkim.DKIMException as exc:
        raise _Refused("neutral", f"malformed signature: {exc}"[:200]) from None
    except (IndexError, TypeError, ValueError) as exc:
        raise _Refused("neutral", f"malformed signature: {type(exc).__name__} in its tags") from None


def _key(tags: dict[bytes, bytes], dnsfunc: KeyLookup) -> _Key:
    """The key the signature's s= and d= name (RFC 6376 6.1.2), checked against a=.

    :raises _Refused: temperror (the lookup failed for now), permerror (no key, an
        unusable key, or one a= may not use).
    """
    name = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
    try:
        record = dnsfunc(name)
    except DKIMTemporaryError as exc:
        raise _Refused("temperror", f"key lookup: {exc}") from None
    if not record:
        raise _Refused("permerror", "no key for signature")
    key = _parsed_key(bytes(record))
    kind, _, hash_name = tags[b"a"].partition(b"-")
    if kind != key.kind:
        raise _Refused("permerror", f"key type {key.kind.decode()} does not match a={tags[b'a'].decode()}")
    if key.hashes is not None and hash_name not in key.hashes:
        raise _Refused("permerror", f"key does not allow {hash_name.decode()}")
    return key


def _signature_valid(key: _Key, hash_name: bytes, digest: bytes, b: bytes) -> bool:
    """Whether *b* (the b= tag's text) signs *digest*: RSASSA-PKCS1-v1_5 (RFC 8017 8.2.2)
    or Ed25519 over the digest (RFC 8463 3).

    :raises _Refused: neutral, b= is not base64.
    """
    try:
        signature = base64.b64decode(_WHITESPACE.sub(b"", b))
    except binascii.Error as exc:
        raise _Refused("neutral", f"malformed signature: {exc}"[:200]) from None
    try:
        if key.kind == b"rsa":
            key.public.verify(signature, digest, padding.PKCS1v15(), Prehashed(_DIGESTS[hash_name]))
        else:
            key.public.verify(signature, digest)
    except InvalidSignature:
        return False
    return True


def _body_matches(body: bytes, tags: dict[bytes, bytes], algorithm: bytes, hash_name: bytes) -> bool:
    """Whether bh= is the hash of the canonical body, its first l= bytes if given
    (RFC 6376 3.7, 3.5; an l= past the body's end counts the whole body, as dkimpy does).

    :raises _Refused: neutral, bh= is not base64.
    """
    try:
        want = base64.b64decode(_WHITESPACE.sub(b"", tags[b"bh"]))
    except binascii.Error as exc:
        raise _Refused("neutral", f"malformed signature: {exc}"[:200]) from None
    try:
        length = int(tags[b"l"]) if b"l" in tags else None
    except ValueError:  # dkimpy's tag check lets an empty l= through (fuzz/fuzz_headers.py)
        raise _Refused("neutral", "malformed signature: l= is not a number") from None
    return body_digest(body_for(body, algorithm), hash_name.decode(), length) == want


def _header_digest(hash_name: bytes, lines: Sequence[bytes], own: bytes) -> bytes:
    """The hash of the signed fields' canonical *lines*, then the signature field
    itself, *own* (b= empty, no final CRLF; RFC 6376 3.7)."""
    h = hashes.Hash(_DIGESTS[hash_name])
    for line in lines:
        h.update(line)
    h.update(own)
    return h.finalize()


class _Message:
    """The fields and body of one message, canonicalized as a signature asks."""

    def __init__(self, headers: Sequence[HeaderField], body: bytes) -> None:
        self.headers, self.body = headers, body
        self.relaxed = canonical_fields(headers)
        self._simple: list[tuple[str, bytes]] | None = None

    def fields(self, algorithm: bytes) -> list[tuple[str, bytes]]:
        if algorithm == b"relaxed":
            return self.relaxed
        if self._simple is None:
            self._simple = simple_fields(self.headers)
        return self._simple


def _canonicalization(tags: dict[bytes, bytes], default: bytes) -> tuple[bytes, bytes]:
    """c=: (header, body) algorithms (RFC 6376 3.5: "simple" when absent or for the
    body when not named).

    :raises _Refused: neutral, an algorithm other than simple and relaxed.
    """
    header, _, body = tags.get(b"c", default).lower().partition(b"/")
    body = body or b"simple"
    if header not in (b"simple", b"relaxed") or body not in (b"simple", b"relaxed"):
        raise _Refused("neutral", f"malformed signature: invalid c= value {tags[b'c']!r}")
    return header, body


def _message_signature_valid(
    message: _Message, name: str, value: str, tags: dict[bytes, bytes], key: _Key, default_c: bytes
) -> tuple[bool, str]:
    """Check a DKIM-Signature or ARC-Message-Signature: its body hash, then its
    signature over the fields h= names (RFC 6376 6.1.3). Returns (valid, why not)."""
    header_c, body_c = _canonicalization(tags, default_c)
    hash_name = tags[b"a"].partition(b"-")[2]
    if not _body_matches(message.body, tags, body_c, hash_name):
        return False, "body hash mismatch"
    include = _signed_names(tags)
    if b"from" in include:
        include.append(b"from")  # dkimpy's: a second From above the signed one fails it
    lines = selected(message.fields(header_c), include)
    digest = _header_digest(hash_name, lines, without_b(name, value, header_c == b"relaxed"))
    if _signature_valid(key, hash_name, digest, tags[b"b"]):
        return True, ""
    return False, "signature did not verify"


def verify_signatures(
    headers: Sequence[HeaderField], body: bytes, dnsfunc: KeyLookup, limit: int = 8
) -> list[SignatureResult]:
    """Verify every DKIM-Signature of the message (topmost first; at most *limit*).

    :param headers: the message's (name, value) fields, top first, as the milter holds them.
    :param body: the body, CRLF line ends.
    :param dnsfunc: the key lookup (:func:`srsd.mailauth.key_lookup.txt_lookup`).
    :returns: one :class:`SignatureResult` a signature.
    """
    signatures = [(name, value) for name, value in headers if name.lower().rstrip() == "dkim-signature"]
    if not signatures:
        return []
    message = _Message(headers, body)
    return [_verify_one(message, name, value, dnsfunc) for name, value in signatures[:limit]]


def _verify_one(message: _Message, name: str, value: str, dnsfunc: KeyLookup) -> SignatureResult:
    try:
        tags = _tags(value)
    except _Refused as refused:
        return SignatureResult(refused.result, refused.reason)
    info = {
        "domain": _text(tags.get(b"d")),
        "selector": _text(tags.get(b"s")),
        "identity": _text(tags.get(b"i")),
        "algorithm": _text(tags.get(b"a")),
        "b": _text(_WHITESPACE.sub(b"", tags.get(b"b", b""))),
    }
    try:
        _validate(tags)
        if b"from" not in _signed_names(tags):
            raise _Refused("neutral", "malformed signature: h= does not sign From (RFC 6376 6.1.1)")
        _canonicalization(tags, b"simple/simple")
    except _Refused as refused:
        return SignatureResult(refused.result, refused.reason, **info)
    try:
        key = _key(tags, dnsfunc)
        if key.strict_identity and b"i" in tags:
            domain = tags[b"i"].rpartition(b"@")[2].lower()
            if domain != tags[b"d"].lower():
                return SignatureResult("permerror", "key (t=s) does not allow i= in a subdomain", **info)
        valid, why = _message_signature_valid(message, name, value, tags, key, b"simple/simple")
    except _Refused as refused:
        return SignatureResult(refused.result, refused.reason, **info)
    if valid:
        return SignatureResult("pass", "", **info)
    return SignatureResult("fail", why, **info)


def verify_arc(headers: Sequence[HeaderField], body: bytes, dnsfunc: KeyLookup) -> ARCResult:
    """Validate the ARC chain of the message (RFC 8617 5.2).

    The sets are read by instance (the i= of each ARC field, as the sealer reads them):
    every instance from 1 to the highest must have exactly one of each field; the newest
    ARC-Message-Signature must verify, and every ARC-Seal, each over the sets up to its
    own; instance 1 says cv=none and the others cv=pass. An ARC field without an
    instance belongs to no set: it is left out of the validation, and no new set may be
    sealed over it.

    :param headers: the message's (name, value) fields, top first.
    :param body: the body, CRLF line ends.
    :param dnsfunc: the key lookup; a temporary failure gives cv=fail, ``temporary``.
    """
    message = _Message(headers, body)
    sets, unnumbered = arc_sets(message.relaxed)
    newest = max((i for i, _ in sets), default=0)
    sealable = unnumbered == 0 and newest < MAX_ARC_INSTANCE
    if not newest:
        return ARCResult("none", "", 0, sealable=sealable)
    try:
        cv, reason = _validate_chain(message, sets, newest, dnsfunc)
    except _Refused as refused:
        if refused.result == "temperror":
            return ARCResult("fail", f"temporary DNS error: {refused.reason}", sealable=False, temporary=True)
        return ARCResult("fail", refused.reason, newest, sealable=sealable)
    if cv is None:
        # A set already reported cv=fail: the chain has ended (RFC 8617 5.1 step 1).
        return ARCResult("fail", reason, newest, sealable=False)
    return ARCResult(cv, reason, newest, sealable=sealable)


def _validate_chain(
    message: _Message, sets: dict[tuple[int, str], list[int]], newest: int, dnsfunc: KeyLookup
) -> tuple[str | None, str]:
    """(cv, reason) of the chain of *newest* sets; cv None: a set says cv=fail.

    :raises _Refused: temperror, a key lookup failed for now.
    """
    for instance in range(newest, 0, -1):
        for kind in ARC_FIELDS:
            count = len(sets.get((instance, kind), ()))
            if count != 1:
                return "fail", f"ARC set i={instance} has {count} {kind} fields"
    seals = {}
    for instance in range(newest, 0, -1):
        name, value = message.headers[sets[(instance, "arc-seal")][0]]
        try:
            seals[instance] = (name, value, _tags(value))
        except _Refused as refused:
            return "fail", f"ARC-Seal i={instance}: {refused.reason}"
        if seals[instance][2].get(b"cv") == b"fail":
            return None, f"ARC-Seal i={instance} reported failure, the chain is terminated"
    # The newest ARC-Message-Signature (RFC 8617 5.2 step 3): older ones may be broken
    # by the changes later hops made, which is what their seals vouch for.
    why = _unless_valid(f"ARC-Message-Signature i={newest}", _message_signature_of_set, message, sets, newest, dnsfunc)
    if why:
        return "fail", why
    for instance in range(newest, 0, -1):
        why = _unless_valid(f"ARC-Seal i={instance}", _seal_of_set, message, sets, instance, seals[instance], dnsfunc)
        if why:
            return "fail", why
    return "pass", ""


def _unless_valid(label: str, check: Any, *args: Any) -> str:
    """"" when *check(*args)* gives (True, ""); else why not, after *label*.

    :raises _Refused: temperror (a key lookup failed for now: the chain is not judged).
    """
    try:
        valid, why = check(*args)
    except dkim.DKIMException as exc:
        return f"{label}: {exc}"[:200]
    except _Refused as refused:
        if refused.result == "temperror":
            raise
        return f"{label}: {refused.reason}"
    return "" if valid else f"{label}: {why}"


def _message_signature_of_set(
    message: _Message, sets: dict[tuple[int, str], list[int]], instance: int, dnsfunc: KeyLookup
) -> tuple[bool, str]:
    """The ARC-Message-Signature of *instance* checked as a DKIM signature (RFC 8617 4.1.2)."""
    name, value = message.headers[sets[(instance, "arc-message-signature")][0]]
    tags = _tags(value)
    _validate(tags, [b"i", b"a", b"b", b"bh", b"d", b"h", b"s"], True)
    if b"arc-seal" in _signed_names(tags):
        raise _Refused("neutral", "signs ARC-Seal (RFC 8617 4.1.2)")
    return _message_signature_valid(message, name, value, tags, _key(tags, dnsfunc), b"relaxed/relaxed")


def _seal_of_set(
    message: _Message,
    sets: dict[tuple[int, str], list[int]],
    instance: int,
    seal: tuple[str, str, dict[bytes, bytes]],
    dnsfunc: KeyLookup,
) -> tuple[bool, str]:
    """The ARC-Seal of *instance*: over the sets up to its own, in instance order, itself
    last with b= empty (RFC 8617 4.1.3, 5.1.1)."""
    name, value, tags = seal
    _validate(tags, [b"i", b"a", b"b", b"cv", b"d", b"s"], True)
    if b"h" in tags:
        raise _Refused("neutral", "has h= (RFC 8617 4.1.3)")
    if tags[b"cv"] != (b"none" if instance == 1 else b"pass"):
        raise _Refused("neutral", f"reported invalid status {_text(tags[b'cv'])}")
    key = _key(tags, dnsfunc)
    covered = [message.relaxed[sets[(i, kind)][0]][1] for i in range(1, instance + 1) for kind in ARC_FIELDS]
    digest = _header_digest(b"sha256", covered[:-1], without_b(name, value, True))
    return _signature_valid(key, b"sha256", digest, tags[b"b"]), "did not validate"
