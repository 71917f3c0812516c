"""The pure SRS scheme: REFERENCE.md's vectors and the rules around them."""

import pytest

from srsd.srs import SRS, BadHash, BadTimestamp, MalformedAddress, NotSRS, TooLong, srs_tag

NOW = 1795521600  # 2026-11-24T12:00:00Z, day 20781, TT "JN"
DAY = 86400


@pytest.fixture
def srs():
    return SRS(["tops3cr3t", "old-secret"], "fwd.example")


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("alice@example.com", "SRS0=Fl1s=JN=example.com=alice@fwd.example"),
        ("Bob.Smith@Example.COM", "SRS0=+Pz6=JN=Example.COM=Bob.Smith@fwd.example"),
        ("x+tag@sub.example.org", "SRS0=kgrK=JN=sub.example.org=x+tag@fwd.example"),
        (
            "SRS0=abcd=AB=orig.example=carol@hop1.example",
            "SRS1=KIT+=hop1.example==abcd=AB=orig.example=carol@fwd.example",
        ),
        (
            "SRS1=wxyz=hop1.example==abcd=AB=orig.example=carol@hop2.example",
            "SRS1=KIT+=hop1.example==abcd=AB=orig.example=carol@fwd.example",
        ),
    ],
)
def test_reference_vectors(srs, sender, expected):
    assert srs.forward(sender, NOW) == expected


def test_round_trip_srs0(srs):
    assert srs.reverse(srs.forward("alice@example.com", NOW), NOW) == "alice@example.com"


def test_srs1_reverses_to_first_hop(srs):
    out = srs.reverse("SRS1=KIT+=hop1.example==abcd=AB=orig.example=carol@fwd.example", NOW)
    assert out == "SRS0=abcd=AB=orig.example=carol@hop1.example"


def test_old_secret_verifies_but_does_not_sign(srs):
    assert srs.reverse("SRS0=0Ijj=JN=example.com=alice@fwd.example", NOW) == "alice@example.com"
    assert srs.forward("alice@example.com", NOW) != "SRS0=0Ijj=JN=example.com=alice@fwd.example"


def test_reverse_is_case_insensitive(srs):
    addr = srs.forward("Bob.Smith@Example.COM", NOW)
    assert srs.reverse(addr.lower(), NOW) == "bob.smith@example.com"
    assert srs.reverse(addr.upper(), NOW) == "BOB.SMITH@EXAMPLE.COM"


def test_reverse_accepts_urlsafe_alphabet(srs):
    # PostSRSd >= 2.2.6 mints -Pz6 where the standard alphabet gives +Pz6.
    assert srs.reverse("SRS0=-Pz6=JN=Example.COM=Bob.Smith@fwd.example", NOW) == "Bob.Smith@Example.COM"


def test_urlsafe_emission():
    srs = SRS(["tops3cr3t"], "fwd.example", urlsafe_hash=True)
    assert srs.forward("Bob.Smith@Example.COM", NOW) == "SRS0=-Pz6=JN=Example.COM=Bob.Smith@fwd.example"


@pytest.mark.parametrize("sep", ["+", "-"])
def test_separator(sep):
    srs = SRS(["tops3cr3t"], "fwd.example", separator=sep)
    out = srs.forward("alice@example.com", NOW)
    assert out.startswith(f"SRS0{sep}Fl1s=JN=")
    assert srs.reverse(out, NOW) == "alice@example.com"
    # Any separator reverses, whatever this instance emits.
    assert srs.reverse("SRS0=Fl1s=JN=example.com=alice@fwd.example", NOW) == "alice@example.com"


def test_timestamp_window(srs):
    addr = srs.forward("alice@example.com", NOW)
    assert srs.reverse(addr, NOW + 21 * DAY) == "alice@example.com"  # age 21: still valid
    with pytest.raises(BadTimestamp):
        srs.reverse(addr, NOW + 22 * DAY)
    with pytest.raises(BadTimestamp):
        srs.reverse(addr, NOW - DAY)  # from the future


def test_timestamp_wraps_the_1024_day_cycle():
    srs = SRS(["s3cret"], "fwd.example")
    day = 1024 * 20 + 1023  # TT "77"
    addr = srs.forward("u@example.org", day * DAY)
    assert "=77=" in addr
    assert srs.reverse(addr, (day + 5) * DAY) == "u@example.org"  # "today" is 4 after wrap


@pytest.mark.parametrize("tt", ["J", "JNA", "J1", "0N", ""])
def test_malformed_timestamp_rejected_before_hashing(srs, tt):
    with pytest.raises(BadTimestamp):
        srs.reverse(f"SRS0=Fl1s={tt}=example.com=alice@fwd.example", NOW)


@pytest.mark.parametrize(
    "address",
    [
        "SRS0=Fl1t=JN=example.com=alice@fwd.example",  # one char changed
        "SRS0=Fl1=JN=example.com=alice@fwd.example",  # shorter than hash_minimum
        "SRS0=Fl1sXY=JN=example.com=alice@fwd.example",  # junk after a valid hash
        "SRS0==JN=example.com=alice@fwd.example",
        "SRS0=Fl1s=JN=example.com=mallory@fwd.example",  # other user, same hash
    ],
)
def test_forged_hash_rejected(srs, address):
    with pytest.raises(BadHash):
        srs.reverse(address, NOW)


def test_longer_hash_accepted_when_it_matches():
    short = SRS(["s"], "fwd.example", hash_length=4)
    long_ = SRS(["s"], "fwd.example", hash_length=8, hash_minimum=4)
    assert short.reverse(long_.forward("a@example.org", NOW), NOW) == "a@example.org"
    with pytest.raises(BadHash):
        SRS(["s"], "fwd.example", hash_length=8, hash_minimum=8).reverse(short.forward("a@example.org", NOW), NOW)


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("alice@example.com", NotSRS),
        ("SRS2=abcd=JN=example.com=alice@fwd.example", NotSRS),
        ("SRS0=Fl1s=JN=example.com=alice", MalformedAddress),
        ("SRS0=Fl1s=JN=example.com@fwd.example", MalformedAddress),
        ("SRS0=Fl1s=JN==alice@fwd.example", MalformedAddress),
        ("SRS1=abcd=hop1.example@fwd.example", MalformedAddress),
        ("SRS1=abcd=nodot==x=JN=a=b@fwd.example", MalformedAddress),
    ],
)
def test_reverse_errors(srs, address, error):
    with pytest.raises(error):
        srs.reverse(address, NOW)


@pytest.mark.parametrize(
    "sender",
    [
        "no-at-sign",
        "user@",
        '"a@b"@example.org',
        "SRS1=garbage@example.org",
        "SRS1=Xa1b=6ppn=3g=o.example=u@h.example",
        # fuzz/corpus/srs/crash-srs0-dotless-hop: the SRS1 minted for it could not be reversed
        "SRS0=2yAB=M5=example.org=user@fnet",
        "SRS0=abcd=AB=orig.example=carol@hop1.example.",
        "user@exa=mple.org",  # reverse would split the domain at its "=" and refuse the hash
        "SRS0=abcd=AB=o.example=carol@hop=1.example",
    ],
)
def test_forward_malformed(srs, sender):
    with pytest.raises(MalformedAddress):
        srs.forward(sender, NOW)


def test_forward_too_long(srs):
    with pytest.raises(TooLong):
        srs.forward("x" * 600 + "@example.org", NOW)


def test_hash_lowercases_ascii_only():
    srs = SRS(["s"], "fwd.example")
    a = srs.forward("user@BÜCHER.example", NOW)
    b = srs.forward("user@bÜcher.example", NOW)
    c = srs.forward("user@bücher.example", NOW)
    assert a.split("=")[1] == b.split("=")[1] != c.split("=")[1]
    assert srs.reverse(a, NOW) == "user@BÜCHER.example"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hash_length": 0},
        {"hash_length": 28},
        {"hash_minimum": 5, "hash_length": 4},
        {"separator": "x"},
        {"max_age_days": 2000},
    ],
)
def test_invalid_parameters(kwargs):
    with pytest.raises(ValueError):
        SRS(["s"], "fwd.example", **kwargs)


def test_secrets_required():
    with pytest.raises(ValueError):
        SRS([], "fwd.example")
    with pytest.raises(ValueError):
        SRS([b""], "fwd.example")


@pytest.mark.parametrize("local", ["ſrs0=abcd=AB=o.example=carol", "ſRS1=abcd=hop.example==x=AB=o.example=c"])
def test_only_an_ascii_tag_is_srs(srs, local):
    # str.upper() makes "ſ" (U+017F) an "S": forward took this for SRS0, and its bounce
    # went to "SRS0=abcd...@hop1.example", not back to the sender (found by fuzz/fuzz_srs.py).
    assert srs_tag(local) is None
    sender = local + "@hop1.example"
    assert srs.reverse(srs.forward(sender, NOW), NOW) == sender
    with pytest.raises(NotSRS):
        srs.reverse(local + "@fwd.example", NOW)
