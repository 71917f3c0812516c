"""DKIM signing (RFC 6376 5) and ARC sealing (RFC 8617 5.1) of a message as it leaves.

srsd builds these fields itself, from the (name, value) fields and body the milter
holds: each header field is canonicalized once per message and the body once
(:mod:`srsd.mailauth.canonical`, shared with the verifier), no Authentication-Results field is
parsed, and the RSA or Ed25519 step is one OpenSSL call (``cryptography``). The layout
is dkimpy's, tag for tag and fold for fold (``dkim.fold``), so a DKIM-Signature or an
ARC-Message-Signature is byte-identical to the one dkimpy 1.1.8 makes (tested). Why not
dkimpy's own ``sign``: docs/dkim.md, "Signing and verifying without dkimpy's message objects".

Signatures are relaxed/relaxed, ``i=@domain``, with From over-signed. Blocking, no
sockets: runs on the milter's worker threads.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import fold

from srsd.config import NEVER_SIGNED
from srsd.mailauth.canonical import (
    ARC_FIELDS,
    MAX_ARC_INSTANCE,
    arc_sets,
    body_digest,
    canonical_fields,
    relaxed_header,
    selected,
)
from srsd.mailauth.dkimpy_setup import canonical_body
from srsd.mailauth.keys import SigningKey
from srsd.mailauth.message import HeaderField
from srsd.mailauth.results import authserv_id_of

__all__ = ["seal_message", "sign_message"]

_PLACEHOLDER = b"0" * 60  # dkimpy's b= stand-in: it folds onto a line of its own
_SHA256 = Prehashed(hashes.SHA256())


def _signed_fields(headers: Sequence[HeaderField], wanted: Sequence[str]) -> list[bytes]:
    """h= for *headers*: each wanted field once per occurrence present, then From
    once more (over-signed: a second From cannot be added). Absent fields are not
    listed, so a later hop may add them (List-Id, ...) without breaking us.

    :raises ValueError: a field of :data:`srsd.config.NEVER_SIGNED` is wanted (``[dkim]
        signed_headers`` refuses them; this is a caller's bug).
    """
    present: dict[str, int] = {}
    for name, _ in headers:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    out: list[bytes] = []
    seen: set[str] = set()
    for name in wanted:
        lowered = name.lower()
        if lowered in NEVER_SIGNED:
            raise ValueError(f"{name} is never signed")
        if lowered in seen:
            continue
        seen.add(lowered)
        out += [lowered.encode("ascii")] * present.get(lowered, 0)
    out.append(b"from")
    return out


def _body_hash(body: bytes) -> bytes:
    """bh=: base64 SHA-256 of the relaxed body (RFC 6376 3.7)."""
    return base64.b64encode(body_digest(canonical_body(body), "sha256"))


def _sign_digest(key: SigningKey, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 of a SHA-256 digest (RFC 8017 8.2), or Ed25519 over it (RFC 8463 3)."""
    if key.key_type == "rsa":
        return key.private.sign(digest, padding.PKCS1v15(), _SHA256)
    return key.private.sign(digest)


def _signature_field(
    name: str, tags: list[tuple[bytes, bytes]], hashed: Sequence[bytes], key: SigningKey
) -> HeaderField:
    """The field *name* carrying *tags* and then ``b=``: the signature over the
    canonical fields *hashed* (in order) and this field itself with b= empty and no
    final CRLF (RFC 6376 3.7). Folded as dkimpy folds: with a 60-character b= stand-in
    first, so that b= starts a line of its own and putting the signature in refolds
    nothing before it."""
    namelen = len(name)
    unsigned = fold(b"; ".join(b"=".join(t) for t in [*tags, (b"b", _PLACEHOLDER)]), namelen=namelen)
    unsigned = unsigned[: unsigned.rindex(b"b=0") + 2]  # "... b=": the stand-in is last, maybe folded
    h = hashlib.sha256()
    for line in hashed:
        h.update(line)
    h.update(relaxed_header(name, " " + unsigned.decode("ascii"))[:-2])
    b = base64.b64encode(_sign_digest(key, h.digest()))
    value = fold(b"; ".join(b"=".join(t) for t in [*tags, (b"b", b)]) + b"\r\n", namelen=namelen)
    return name, " " + value.decode("ascii").removesuffix("\r\n")


def sign_message(
    headers: Sequence[HeaderField],
    body: bytes,
    key: SigningKey,
    domain: str,
    selector: str,
    signed_headers: Sequence[str],
    timestamp: int | None = None,
) -> HeaderField:
    """A DKIM-Signature (relaxed/relaxed, ``i=@domain``, ``t=`` *timestamp* or now, in
    seconds since the epoch) for the message made of *headers* and *body*, as (name,
    value) ready for a milter insert.

    :raises ValueError: *signed_headers* names a field of :data:`srsd.config.NEVER_SIGNED`.
    """
    include = _signed_fields(headers, signed_headers)
    d = domain.encode("ascii")
    tags = [
        (b"v", b"1"),
        (b"a", key.algorithm.encode("ascii")),
        (b"c", b"relaxed/relaxed"),
        (b"d", d),
        (b"i", b"@" + d),
        (b"q", b"dns/txt"),
        (b"s", selector.encode("ascii")),
        (b"t", str(int(time.time()) if timestamp is None else timestamp).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", _body_hash(body)),
    ]
    canonical = canonical_fields(headers)
    return _signature_field("DKIM-Signature", tags, selected(canonical, include), key)


def seal_message(
    headers: Sequence[HeaderField],
    body: bytes,
    key: SigningKey,
    domain: str,
    selector: str,
    authserv_id: str,
    signed_headers: Sequence[str],
    timestamp: int | None = None,
    *,
    cv: str,
) -> list[HeaderField]:
    """The next ARC set for the message: [ARC-Seal, ARC-Message-Signature,
    ARC-Authentication-Results], newest first, as (name, value) pairs (RFC 8617 5.1).

    :param headers: the fields as the message leaves, topmost first, our
        Authentication-Results among them: the topmost field with *authserv_id* is
        copied into the ARC-Authentication-Results (RFC 8617 4.1.1); without one,
        nothing is sealed (returns []).
    :param cv: the chain's validation on arrival (RFC 8617 4.1.3): ``none`` (no ARC
        set yet), ``pass`` (the ARC-Seal covers every set, in instance order) or
        ``fail`` (it covers the new set only, RFC 8617 5.1.2). A chain whose sets say
        nothing valid (cv ``none`` past instance 1) is not sealed either (returns []).
    :param timestamp: t=, seconds since the epoch (default now).
    :raises ValueError: an Ed25519 key (ARC is rsa-sha256 only, RFC 8617 4.1), an
        instance past :data:`MAX_ARC_INSTANCE`, cv ``pass`` or ``fail`` with no earlier
        set, a passing chain with a set not whole, or *signed_headers* naming a field
        of :data:`srsd.config.NEVER_SIGNED`.
    """
    if key.key_type != "rsa":
        raise ValueError("ARC sets are signed with rsa-sha256 only (RFC 8617)")
    wanted = authserv_id.lower()
    ours = next((v for n, v in headers if n.lower() == "authentication-results" and authserv_id_of(v) == wanted), None)
    if ours is None:
        return []
    canonical = canonical_fields(headers)
    sets, _ = arc_sets(canonical)
    instance = max((n for n, _ in sets), default=0) + 1
    if instance > MAX_ARC_INSTANCE:
        raise ValueError(f"ARC instance {instance} is past {MAX_ARC_INSTANCE} (RFC 8617 4.2.1)")
    if cv == "none" and instance > 1:
        return []  # sets that validate nothing: the chain has ended
    if cv != "none" and instance == 1:
        raise ValueError(f"cv={cv} with no earlier ARC set")
    earlier: list[bytes] = []
    if cv == "pass":
        for n in range(1, instance):
            for name in ARC_FIELDS:
                positions = sets.get((n, name), [])
                if len(positions) != 1:
                    raise ValueError(f"ARC set i={n} has {len(positions)} {name} fields")
                earlier.append(canonical[positions[0]][1])

    i = str(instance).encode("ascii")
    d, s = domain.encode("ascii"), selector.encode("ascii")
    t = str(int(time.time()) if timestamp is None else timestamp).encode("ascii")
    aar = ("ARC-Authentication-Results", f" i={instance}; {ours.lstrip()}")
    include = _signed_fields(headers, signed_headers)
    ams_tags = [(b"i", i), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", d), (b"s", s), (b"t", t),
                (b"h", b" : ".join(include)), (b"bh", _body_hash(body))]  # fmt: skip
    ams = _signature_field("ARC-Message-Signature", ams_tags, selected(canonical, include), key)
    as_tags = [(b"i", i), (b"cv", cv.encode("ascii")), (b"a", b"rsa-sha256"), (b"d", d), (b"s", s), (b"t", t)]
    seal = _signature_field("ARC-Seal", as_tags, [*earlier, relaxed_header(*aar), relaxed_header(*ams)], key)
    return [seal, ams, aar]
