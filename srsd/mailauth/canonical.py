"""DKIM canonicalization (RFC 6376 3.4) and field selection, shared by srsd's signer
(:mod:`srsd.mailauth.sign`) and verifier (:mod:`srsd.mailauth.verify`).

Both work on the (name, value) fields and the body the milter holds, so a message is
never parsed again, and the verifier's canonical fields are the ones the signer then
hashes (one memo). ARC instances (RFC 8617 4.2.1) are read here too, the same way for
the sealer and the validator.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence

import dkim.canonicalization
from dkim import ARC

from srsd.mailauth.dkimpy_setup import canonical_body
from srsd.mailauth.message import HeaderField, raw_value

__all__ = [
    "ARC_FIELDS",
    "MAX_ARC_INSTANCE",
    "arc_sets",
    "body_for",
    "canonical_fields",
    "body_digest",
    "forget_fields",
    "relaxed_header",
    "selected",
    "simple_fields",
    "without_b",
]

#: the highest ARC instance (RFC 8617 4.2.1)
MAX_ARC_INSTANCE = 50

#: the fields of an ARC set, in the order an ARC-Seal hashes them (RFC 8617 5.1.1)
ARC_FIELDS = ("arc-authentication-results", "arc-message-signature", "arc-seal")

_NEWLINE = re.compile(rb"\r?\n")
_WSP = re.compile(rb"[\t ]+")
# an ARC field's instance: the first i= of the relaxed value (dkimpy's own reading)
_INSTANCE = ARC.INSTANCE_RE
# where a b= tag's value starts: dkimpy's dkim.RE_BTAG without its value part, whose
# backtracking cost ~50 µs a field (RFC 6376 3.7: b= is hashed empty)
_B_START = re.compile(rb"[;\s]b(?:(?:\s*\r?\n)?\s+)?=")
_B_VALUE = re.compile(rb"[\sa-zA-Z0-9+/=]*")
_FWS_CHARS = b" \t\r\n\x0b\x0c"


def relaxed_header(name: str, value: str) -> bytes:
    """RFC 6376 3.4.2 "relaxed" for one field: ``name:value`` with the name in lower
    case, the value unfolded, each run of WSP one space, WSP removed at both ends, and
    CRLF. Undecodable bytes (kept by the milter as lone surrogates) go back as bytes."""
    raw = value.encode("utf-8", "surrogateescape")
    if b"\n" in raw or b"\t" in raw or b"  " in raw:  # most fields need none of this
        unfolded = raw.replace(b"\r\n", b"").replace(b"\n", b"")
        if b"\r" in unfolded or b"\x0b" in unfolded or b"\x0c" in unfolded:
            raw = _WSP.sub(b" ", unfolded)  # whitespace that is not WSP: kept as it is
        else:
            raw = b" ".join(unfolded.split())  # one pass for the usual folded field
    return name.lower().rstrip().encode("utf-8", "surrogateescape") + b":" + raw.strip() + b"\r\n"


_short_relaxed = functools.lru_cache(maxsize=2048)(relaxed_header)


def forget_fields() -> None:
    """Empty the field and body digest memos (benchmarks: each message's fields
    canonicalized and its body hashed once, counted)."""
    _short_relaxed.cache_clear()
    _digests.clear()


def canonical_fields(headers: Sequence[HeaderField]) -> list[tuple[str, bytes]]:
    """(name, :func:`relaxed_header`) of each field; fields of up to 1,000 characters
    come from a memo (a forwarded message is read for each signature checked and each
    made; 2,048 such fields are a few MB at most, whatever they hold)."""
    return [(name, _short_relaxed(name, value) if len(value) <= 1000 else relaxed_header(name, value))
            for name, value in headers]  # fmt: skip


def simple_fields(headers: Sequence[HeaderField]) -> list[tuple[str, bytes]]:
    """(name, RFC 6376 3.4.1 "simple" ``name:value CRLF``) of each field: the field as is
    (the lines of :func:`srsd.mailauth.message.message_bytes`)."""
    return [(name, name.encode("utf-8", "surrogateescape") + b":" + raw_value(value) + b"\r\n")
            for name, value in headers]  # fmt: skip


def without_b(name: str, value: str, relaxed: bool) -> bytes:
    """The signature field *name*: *value* as its own signature hashes it: the b= value
    removed, canonicalized, and no final CRLF (RFC 6376 3.7)."""
    emptied = _b_emptied(raw_value(value))
    if relaxed:
        return relaxed_header(name, emptied.decode("utf-8", "surrogateescape"))[:-2]
    return name.encode("utf-8", "surrogateescape") + b":" + emptied


def _b_emptied(raw: bytes) -> bytes:
    """*raw* with every b= value removed, as ``dkim.RE_BTAG.sub(rb"\\1", raw)``: after
    each ``b=``, the longest run of whitespace and base64 characters that ends in a
    base64 character (tested against dkimpy's on random fields)."""
    out = []
    position = 0
    while (match := _B_START.search(raw, position)) is not None:
        start = match.end()
        end = _B_VALUE.match(raw, start).end()
        while end > start and raw[end - 1] in _FWS_CHARS:
            end -= 1
        if raw[end:] in (b"\n", b"\r\n"):  # RE_BTAG's (?:\r?\n\Z)?
            end = len(raw)
        out.append(raw[position:start])
        position = end
    if not out:
        return raw
    out.append(raw[position:])
    return b"".join(out)


def selected(canonical: Sequence[tuple[str, bytes]], names: Sequence[bytes]) -> list[bytes]:
    """The canonical fields h= *names* picks (RFC 6376 5.4.2): for each name, the last
    occurrence not yet picked, going up the header; a name with none left picks nothing."""
    by_name: dict[bytes, list[bytes]] = {}
    for name, line in canonical:
        by_name.setdefault(name.lower().rstrip().encode("utf-8", "surrogateescape"), []).append(line)
    picked = []
    for name in names:
        left = by_name.get(name)
        if left:
            picked.append(left.pop())
    return picked


def body_for(body: bytes, algorithm: bytes) -> bytes:
    """*body* canonicalized by *algorithm* (``relaxed``, RFC 6376 3.4.4, from the body
    memo; or ``simple``, 3.4.3).

    :raises ValueError: another algorithm.
    """
    if algorithm == b"relaxed":
        return canonical_body(body)
    if algorithm == b"simple":
        return dkim.canonicalization.correct_empty_body(dkim.canonicalization.strip_trailing_lines(body))
    raise ValueError(f"unknown body canonicalization {algorithm!r}")


_digests: dict[tuple[bytes, str, int | None], bytes] = {}
_DIGEST_MEMO_BODIES = 8
_DIGEST_MEMO_LARGEST = 1024 * 1024


def body_digest(canonical: bytes, hash_name: str, length: int | None = None) -> bytes:
    """The *hash_name* (``sha256``, ``sha1``) digest of a canonical body, its first
    *length* bytes when given (l=, RFC 6376 3.5): a forwarded message's body is hashed
    for the signature checked, the ARC-Message-Signature checked, and each one made."""
    key = (canonical, hash_name, length)
    done = _digests.get(key)
    if done is None:
        done = hashlib.new(hash_name, canonical if length is None else canonical[:length]).digest()
        if len(canonical) <= _DIGEST_MEMO_LARGEST:
            if len(_digests) >= _DIGEST_MEMO_BODIES:
                _digests.clear()  # under the GIL: a racing reader only misses
            _digests[key] = done
    return done


def arc_sets(canonical: Sequence[tuple[str, bytes]]) -> tuple[dict[tuple[int, str], list[int]], int]:
    """Where the ARC fields of a message (its :func:`canonical_fields`) are: their
    positions in it by (instance, lower-case name), each list top first; and how many
    ARC fields have no instance of 1 or more (they belong to no set: a sealer must not
    seal over them, RFC 8617 4.2.1)."""
    sets: dict[tuple[int, str], list[int]] = {}
    unnumbered = 0
    for position, (name, line) in enumerate(canonical):
        lowered = name.lower().rstrip()
        if lowered not in ARC_FIELDS:
            continue
        match = _INSTANCE.search(line, line.index(b":"))
        if match is None or int(match.group(1)) < 1:
            unnumbered += 1
        else:
            sets.setdefault((int(match.group(1)), lowered), []).append(position)
    return sets, unnumbered
