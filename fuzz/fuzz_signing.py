"""Fuzz target: what srsd's milter does to a forwarded message's header -- Authentication-
Results, an ARC set, a DKIM signature (:mod:`srsd.mailauth.sign`) -- read back by the
next hop's verifiers: srsd's (:mod:`srsd.mailauth.verify`) and dkimpy's.

Input: a message, as for :mod:`fuzz.fuzz_headers` (whose splitting, zone and checks it
reuses): header lines, an empty line, a body; ``X-DNS: NAME TEXT`` fields are DNS.

Invariants, with srsd's own keys (ed25519 to sign, RSA to seal; their records are
srsd's, whatever the message says about those names). Only srsd is instrumented here
(twice the speed); dkimpy's branches guide :mod:`fuzz.fuzz_headers`.

* the Authentication-Results field srsd writes (SPF, every DKIM result, ARC, DMARC) parses
  back with authres, to one result per method in order (the next hop's reader; the
  ARC-Authentication-Results is a copy of it);
* signing and sealing never raise (in the milter that is a logged failure and the
  message refused for now, each time it is retried);
* sealing makes an ARC set whenever the chain could be checked;
* the message as it leaves -- DKIM-Signature, ARC set, Authentication-Results, then the
  fields it came with minus forged Authentication-Results -- verifies: srsd's signature
  passes, and the chain passes when it did not fail on arrival, in srsd's verifier and
  in dkimpy's (``DKIM.verify``, ``arc_verify``: not srsd's code).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import dkim

from fuzz.harness import expect, instrumented, main

with instrumented(__name__):
    from fuzz.fuzz_dmarc import AUTHSERV_ID
    from fuzz.fuzz_headers import authentication_results_of, read_back, split_message, verified, zone_of
    from srsd.config import DKIMSettings
    from srsd.mailauth import dkimpy_setup
    from srsd.mailauth.dkimpy_setup import QUIET
    from srsd.mailauth.key_lookup import txt_lookup
    from srsd.mailauth.keys import SigningKey, dns_record_name, generate_key
    from srsd.mailauth.message import HeaderField, message_bytes
    from srsd.mailauth.results import without_forged
    from srsd.mailauth.sign import seal_message, sign_message

__all__ = ["test_one_input"]

FORWARDER = "fwd.example.net"
_SIGNED = DKIMSettings().signed_headers


def _keys() -> tuple[SigningKey, SigningKey]:
    """srsd's signing key (ed25519) and ARC key (RSA, the smallest accepted: the fastest),
    made once per process."""
    with tempfile.TemporaryDirectory() as tmp:
        signer = generate_key(str(Path(tmp, "sig")), "ed25519-sha256")
        sealer = generate_key(str(Path(tmp, "arc")), "rsa-sha256", 1024)
    return signer, sealer


_SIGNER, _SEALER = _keys()
_OWN_ZONE = {
    dns_record_name("fuzzsig", FORWARDER): _SIGNER.txt_record(),
    dns_record_name("fuzzarc", FORWARDER): _SEALER.txt_record(),
}


def test_one_input(data: bytes) -> None:
    """*data* as a forwarded message: sealed, signed, verified again.

    :raises AssertionError: an invariant of the module docstring broke.
    """
    dkimpy_setup.install()  # RSA through OpenSSL, as the milter signs (idempotent)
    headers, body = split_message(data)
    concluded = authentication_results_of(headers, body, _OWN_ZONE)
    results, arc = concluded.field, concluded.arc
    leaving: list[HeaderField] = [results, *without_forged(headers, AUTHSERV_ID)]
    arc_set: list[HeaderField] = []
    read_back(concluded)
    if not arc.temporary and arc.sealable:  # as the milter: never seal a chain it could not check
        arc_set = seal_message(leaving, body, _SEALER, FORWARDER, "fuzzarc", AUTHSERV_ID, _SIGNED, cv=arc.cv)
        expect(arc_set, "no ARC set was made over our Authentication-Results", results)
    signature = sign_message([*arc_set, *leaving], body, _SIGNER, FORWARDER, "fuzzsig", _SIGNED)
    out = [signature, *arc_set, *leaving]
    lookup = txt_lookup(zone_of(out, _OWN_ZONE))
    own, new_arc = verified(out, body, lookup, limit=1)  # ours is on top
    expect(own and own[0].result == "pass", "srsd's own DKIM signature does not verify", out, own[:1])
    # and in a verifier that is not srsd's (dkimpy reads the message bytes itself)
    leaving_bytes = message_bytes(out, body)
    expect(dkim.DKIM(leaving_bytes, logger=QUIET).verify(idx=0, dnsfunc=lookup), "not in dkimpy", out)
    if arc_set and arc.cv in ("none", "pass"):
        expect(new_arc.cv == "pass", "srsd's ARC set does not validate", out, new_arc)
        cv = dkim.arc_verify(leaving_bytes, logger=QUIET, dnsfunc=lookup)[0]
        expect(cv == b"pass", "srsd's ARC set does not validate in dkimpy", out, cv)


if __name__ == "__main__":
    main(test_one_input)
