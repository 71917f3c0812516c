#!/usr/bin/env python3
"""Forged SRS addresses against srsd's reverse decision: how many get through?

    python3 bench/forged_srs.py [--count 1000000] [--seed 1] [--json FILE]

Builds srsd's :class:`srsd.rewrite.Rewriter` from a real configuration (two secrets,
libsrs2 defaults: hash 4, minimum 4, 21 days) and asks it to reverse *count* forged
addresses of these kinds, each in random case and either base64 alphabet:

* ``random-srs0`` / ``random-srs1``: random hash, random (mostly still valid)
  timestamp, random domains and local parts, any separator;
* ``tampered``: a genuine address with one field changed (local part, domain,
  timestamp, first hop, one hash character);
* ``short-hash``: a genuine hash cut below hash_minimum;
* ``other-secret``: signed with a secret srsd does not hold;
* ``expired`` / ``future``: a genuine signature over a timestamp outside the window.

"Forged" is decided by an independent check written here from the scheme (HMAC-SHA1
over the lower-cased fields, base64, case-insensitive prefix, timestamp window): a random
hash that happens to be the real one (about 1 in 35^4 per secret) is counted as a
chance hit and left out. Positive controls (genuine addresses, in every case and
alphabet variant) must all reverse, so a Rewriter that refused everything would fail.
Exit status 1 when a forged address was reversed or a control was not.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # srsd from this checkout

from srsd.config import parse_config  # noqa: E402
from srsd.rewrite import FOUND, Rewriter, rewriter_from_config  # noqa: E402

DOMAIN = "fwd.example"
HASH_LENGTH = HASH_MINIMUM = 4
MAX_AGE = 21
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
HASH_CHARS = B64 + "-_"
LOCAL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.+-_=ABCXYZ"


# -- the scheme, written independently of srsd.srs ---------------------------------


def day_stamp(day: int) -> str:
    return B32[(day >> 5) & 31] + B32[day & 31]


def full_hash(secret: bytes, data: str) -> str:
    return base64.b64encode(hmac.digest(secret, data.encode("utf-8").lower(), "sha1")).decode()


def fields(address: str) -> tuple[str, str, str, str] | None:
    """(tag, hash, signed data, timestamp or "") of an SRS address at DOMAIN, else None."""
    local, _, domain = address.rpartition("@")
    if domain.lower() != DOMAIN or len(local) < 5 or local[4] not in "=+-":
        return None
    tag = local[:4].upper()
    if tag == "SRS0":
        parts = local[5:].split("=", 3)
        if len(parts) != 4:
            return None
        h, tt, orig_domain, orig_local = parts
        return tag, h, tt + orig_domain + orig_local, tt
    if tag == "SRS1":
        parts = local[5:].split("=", 2)
        if len(parts) != 3:
            return None
        h, hop, opaque = parts
        return tag, h, hop + opaque, ""
    return None


def stamp_valid(tt: str, today: int) -> bool:
    if len(tt) != 2 or any(c.upper() not in B32 for c in tt):
        return False
    then = B32.index(tt[0].upper()) * 32 + B32.index(tt[1].upper())
    return (today % 1024 - then) % 1024 <= MAX_AGE


def genuine(address: str, secrets: list[bytes], today: int) -> bool:
    """Whether *address* carries a valid signature by one of *secrets* (the spec)."""
    parsed = fields(address)
    if parsed is None:
        return False
    tag, h, data, tt = parsed
    if not HASH_MINIMUM <= len(h) <= 27 or (tag == "SRS0" and not stamp_valid(tt, today)):
        return False
    given = h.replace("-", "+").replace("_", "/").lower()
    return any(full_hash(s, data)[: len(h)].lower() == given for s in secrets)


def mint_srs0(secret: bytes, local: str, domain: str, day: int, sep: str = "=") -> str:
    tt = day_stamp(day)
    return f"SRS0{sep}{full_hash(secret, tt + domain + local)[:HASH_LENGTH]}={tt}={domain}={local}@{DOMAIN}"


def mint_srs1(secret: bytes, hop: str, opaque: str, sep: str = "=") -> str:
    return f"SRS1{sep}{full_hash(secret, hop + opaque)[:HASH_LENGTH]}={hop}={opaque}@{DOMAIN}"


# -- generators ------------------------------------------------------------------


def _word(rng: random.Random, low: int = 1, high: int = 12, chars: str = LOCAL_CHARS) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(low, high)))


def _domain(rng: random.Random) -> str:
    return f"{_word(rng, 1, 10, 'abcdefghijklmnopqrstuvwxyz0123456789-')}.{rng.choice(['com', 'org', 'example', 'de'])}"


def _hash(rng: random.Random, n: int = HASH_LENGTH) -> str:
    return "".join(rng.choice(HASH_CHARS) for _ in range(n))


def _recent_day(rng: random.Random, today: int) -> int:
    return today - rng.randint(0, MAX_AGE)


def _mangle(rng: random.Random, address: str) -> str:
    """Random case of the SRS parts, maybe base64url, maybe the domain upper-cased."""
    local, _, domain = address.rpartition("@")
    if rng.random() < 0.5:  # base64url, in the hash only (PostSRSd >= 2.2.6)
        h, sep, rest = local[5:].partition("=")
        local = local[:5] + h.translate(str.maketrans("+/", "-_")) + sep + rest
    how = rng.random()
    if how < 0.25:
        local = local.lower()
    elif how < 0.5:
        local = local.upper()
    elif how < 0.75:
        local = "".join(c.swapcase() if rng.random() < 0.5 else c for c in local)
    if rng.random() < 0.2:
        domain = domain.upper()
    return f"{local}@{domain}"


def _genuine_parts(rng: random.Random, today: int) -> tuple[str, str, int, str]:
    return _word(rng), _domain(rng), _recent_day(rng, today), rng.choice("=+-")


def forged(rng: random.Random, secrets: list[bytes], today: int) -> tuple[str, str]:
    """One forged candidate: (kind, address)."""
    r = rng.random()
    sep = rng.choice("=+-")
    if r < 0.35:
        day = _recent_day(rng, today) if rng.random() < 0.9 else rng.randrange(1 << 20)
        kind = "random-srs0"
        address = f"SRS0{sep}{_hash(rng)}={day_stamp(day)}={_domain(rng)}={_word(rng)}@{DOMAIN}"
    elif r < 0.55:
        kind = "random-srs1"
        opaque = f"{rng.choice('=+-')}{_hash(rng)}={day_stamp(rng.randrange(1024))}={_domain(rng)}={_word(rng)}"
        address = f"SRS1{sep}{_hash(rng)}={_domain(rng)}={opaque}@{DOMAIN}"
    elif r < 0.80:
        kind = "tampered"
        local, domain, day, sep = _genuine_parts(rng, today)
        secret = rng.choice(secrets)
        what = rng.randrange(5)
        if what == 0:
            address = mint_srs0(secret, local, domain, day, sep).replace(f"={local}@", f"={local}x@")
        elif what == 1:
            address = mint_srs0(secret, local, domain, day, sep).replace(f"={domain}=", f"={domain}.evil=", 1)
        elif what == 2:
            minted = mint_srs0(secret, local, domain, day, sep)
            address = minted.replace(f"={day_stamp(day)}=", f"={day_stamp(day - 1 - rng.randint(0, 5))}=", 1)
        elif what == 3:
            opaque = f"={_hash(rng)}={day_stamp(day)}={domain}={local}"
            address = mint_srs1(secret, "hop.example", opaque, sep).replace("=hop.example=", "=evil.example=")
        else:
            minted = mint_srs0(secret, local, domain, day, sep)
            i = 5 + rng.randrange(HASH_LENGTH)
            same = {minted[i].lower(), {"+": "-", "/": "_"}.get(minted[i], "")}  # case and alphabet fold
            other = rng.choice([c for c in HASH_CHARS if c.lower() not in same])
            address = minted[:i] + other + minted[i + 1 :]
    elif r < 0.87:
        kind = "short-hash"
        local, domain, day, sep = _genuine_parts(rng, today)
        minted = mint_srs0(rng.choice(secrets), local, domain, day, sep)
        cut = rng.randint(0, HASH_MINIMUM - 1)
        address = minted[: 5 + cut] + minted[5 + HASH_LENGTH :]
    elif r < 0.94:
        kind = "other-secret"
        local, domain, day, sep = _genuine_parts(rng, today)
        address = mint_srs0(rng.randbytes(16), local, domain, day, sep)
    else:
        local, domain, _, sep = _genuine_parts(rng, today)
        if rng.random() < 0.5:
            kind, day = "expired", today - MAX_AGE - 1 - rng.randrange(1000 - MAX_AGE)
        else:
            kind, day = "future", today + 1 + rng.randrange(1000 - MAX_AGE)
        address = mint_srs0(rng.choice(secrets), local, domain, day, sep)
    return kind, _mangle(rng, address)


def control(rng: random.Random, secrets: list[bytes], today: int) -> tuple[str, str]:
    """A genuine address (SRS0 at any valid age, or SRS1) and where it must reverse to."""
    local, domain, day, sep = _genuine_parts(rng, today)
    secret = rng.choice(secrets)
    if rng.random() < 0.7:
        return _mangle(rng, mint_srs0(secret, local, domain, day, sep)), f"{local}@{domain}".lower()
    opaque = f"={_hash(rng)}={day_stamp(day)}={domain}={local}"
    return _mangle(rng, mint_srs1(secret, "hop.example", opaque, sep)), f"SRS0{opaque}@hop.example".lower()


# -- the run ---------------------------------------------------------------------


@dataclass
class Report:
    count: int
    seed: int
    forged: int = 0
    forged_reversed: int = 0
    chance_hits: int = 0  # random candidates that carry the real signature: not forged
    expected_chance_hits: float = 0.0
    controls: int = 0
    controls_reversed: int = 0
    seconds: float = 0.0
    reverses_per_second: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    reversed_examples: list[str] = field(default_factory=list)
    chance_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.forged_reversed == 0 and self.controls_reversed == self.controls


def srsd_rewriter(secrets: list[bytes]) -> Rewriter:
    """srsd's Rewriter from a real configuration file holding *secrets*."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "secrets"
        path.write_bytes(b"\n".join(secrets) + b"\n")
        path.chmod(0o600)
        config = parse_config({"srs": {"domain": DOMAIN, "secrets_file": str(path), "max_age_days": MAX_AGE}})
    return rewriter_from_config(config)


def run(count: int, seed: int = 1, make_rewriter: Callable[[list[bytes]], Rewriter] = srsd_rewriter) -> Report:
    """Reverse *count* forged candidates (plus 1 % controls) through the Rewriter
    *make_rewriter* builds (srsd's own by default; tests pass a weakened one)."""
    rng = random.Random(seed)
    secrets = [rng.randbytes(24).hex().encode(), rng.randbytes(24).hex().encode()]
    rewriter = make_rewriter(secrets)
    now = time.time()
    today = int(now) // 86400
    report = Report(count, seed)
    kinds: Counter[str] = Counter()
    chance_per_random = 2 * (116 / 4096) ** HASH_LENGTH  # P(case-folded base64 char matches) per secret
    n_controls = max(1, count // 100)
    started = time.perf_counter()
    for i in range(count + n_controls):
        if i % 101 == 100 and report.controls < n_controls:
            address, want = control(rng, secrets, today)
            report.controls += 1
            answer = rewriter.reverse(address, now)
            report.controls_reversed += answer.status == FOUND and answer.text.lower() == want
            continue
        if report.forged + report.chance_hits >= count:
            continue
        kind, address = forged(rng, secrets, today)
        if kind.startswith("random"):
            report.expected_chance_hits += chance_per_random
        if genuine(address, secrets, today):
            report.chance_hits += 1
            report.chance_examples.append(f"{kind}: {address}")
            continue
        kinds[kind] += 1
        report.forged += 1
        if rewriter.reverse(address, now).status == FOUND:
            report.forged_reversed += 1
            if len(report.reversed_examples) < 10:
                report.reversed_examples.append(address)
    report.seconds = round(time.perf_counter() - started, 2)
    report.reverses_per_second = round((report.forged + report.controls) / max(report.seconds, 1e-9))
    report.expected_chance_hits = round(report.expected_chance_hits, 2)
    report.by_kind = dict(sorted(kinds.items()))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="forged candidates (default 10^6)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    report = run(args.count, args.seed)
    print(f"forged addresses tried:   {report.forged} (seed {report.seed})")
    print(f"  by kind:                {', '.join(f'{k} {v}' for k, v in report.by_kind.items())}")
    print(f"forged addresses reversed: {report.forged_reversed} (rate {report.forged_reversed / report.forged:.2e})")
    print(f"chance hits left out:     {report.chance_hits} (expected {report.expected_chance_hits})")
    print(f"controls reversed:        {report.controls_reversed}/{report.controls}")
    print(f"time:                     {report.seconds} s, {report.reverses_per_second} reverse checks/s")
    for example in report.chance_examples[:10]:
        print(f"  chance hit: {example}")
    for example in report.reversed_examples:
        print(f"  REVERSED: {example}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
