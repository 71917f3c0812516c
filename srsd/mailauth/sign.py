"""DKIM signing (RFC 6376 5) and ARC sealing (RFC 8617 5.1) of a message as it leaves.

dkimpy builds the fields; the RSA step runs in OpenSSL once
:func:`srsd.mailauth.dkimpy_setup.install` ran. Signatures are relaxed/relaxed,
``i=@domain``, with From over-signed. Blocking, no sockets: runs on the milter's
worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import dkim

from srsd.mailauth.dkimpy_setup import QUIET
from srsd.mailauth.keys import SigningKey
from srsd.mailauth.message import HeaderField, message_bytes
from srsd.mailauth.results import authserv_id_of

__all__ = ["sign_message", "seal_message"]


def _split_field(line: bytes) -> HeaderField:
    """dkimpy's ``b"Name: value\\r\\n"`` -> (name, value): the leading space kept,
    CRLF folding, no final CRLF (the form of :class:`srsd.mailauth.message.Message` fields;
    the milter codec turns CRLF into the bare LF Postfix wants)."""
    text = line.decode("ascii")
    name, _, value = text.partition(":")
    return name, value.removesuffix("\r\n")


def _signed_fields(headers: Sequence[HeaderField], wanted: Sequence[str]) -> list[bytes]:
    """h= for *headers*: each wanted field once per occurrence present, then From
    once more (over-signed: a second From cannot be added). Absent fields are not
    listed, so a later hop may add them (List-Id, ...) without breaking us."""
    present: dict[str, int] = {}
    for name, _ in headers:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    out: list[bytes] = []
    seen: set[str] = set()
    for name in wanted:
        lowered = name.lower()
        if lowered in seen:
            continue
        seen.add(lowered)
        out += [lowered.encode("ascii")] * present.get(lowered, 0)
    out.append(b"from")
    return out


def sign_message(
    headers: Sequence[HeaderField],
    body: bytes,
    key: SigningKey,
    domain: str,
    selector: str,
    signed_headers: Sequence[str],
) -> HeaderField:
    """A DKIM-Signature (relaxed/relaxed, ``i=@domain``) for the message made of
    *headers* and *body*, as (name, value) ready for a milter insert."""
    message = message_bytes(headers, body)
    signer = dkim.DKIM(message, logger=QUIET, signature_algorithm=key.algorithm.encode("ascii"))
    line = signer.sign(
        selector.encode("ascii"),
        domain.encode("ascii"),
        key.dkimpy_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=_signed_fields(headers, signed_headers),
    )
    return _split_field(line)


def _arc_readable(headers: Sequence[HeaderField], authserv_id: str) -> list[HeaderField]:
    """*headers* without the Authentication-Results fields dkimpy's sealing has no use
    for: another authserv-id's (it skips them) and those not UTF-8 (it decodes every one
    and raised UnicodeDecodeError: a stray 8-bit byte in any earlier hop's field failed
    every delivery attempt; found by fuzz/fuzz_signing.py). No ARC signature covers them
    (RFC 8617 4.1.2: an AMS never signs Authentication-Results; an AS signs ARC fields),
    so the set made is the one the whole message would get."""
    wanted = authserv_id.lower()
    return [
        (name, value)
        for name, value in headers
        if name.lower() != "authentication-results" or (authserv_id_of(value) == wanted and _is_utf8(value))
    ]


def _is_utf8(text: str) -> bool:
    """No undecodable byte (the milter keeps each as a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def seal_message(
    headers: Sequence[HeaderField],
    body: bytes,
    key: SigningKey,
    domain: str,
    selector: str,
    authserv_id: str,
    signed_headers: Sequence[str],
    timestamp: int | None = None,
) -> list[HeaderField]:
    """The next ARC set for the message: [ARC-Seal, ARC-Message-Signature,
    ARC-Authentication-Results], newest first, as (name, value) pairs.

    dkimpy builds the ARC-Authentication-Results from the ``Authentication-Results``
    fields in *headers* whose authserv-id is *authserv_id*, and takes cv from their
    ``arc=`` result; with no such field it seals nothing (returns []).
    ARC is rsa-sha256 only (RFC 8617 4.1).
    """
    if key.key_type != "rsa":
        raise ValueError("ARC sets are signed with rsa-sha256 only (RFC 8617)")
    message = message_bytes(_arc_readable(headers, authserv_id), body)
    sealer = dkim.ARC(message, logger=QUIET, signature_algorithm=b"rsa-sha256")
    lines = sealer.sign(
        selector.encode("ascii"),
        domain.encode("ascii"),
        key.dkimpy_key,
        authserv_id.encode("ascii"),
        include_headers=_signed_fields(headers, signed_headers),
        timestamp=timestamp,
    )
    return [_split_field(line) for line in lines]
