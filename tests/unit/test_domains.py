"""DomainSet and Networks: the membership rules shared by rewriting, policy and mail authentication."""

import pytest

from srsd.domains import DomainSet, Networks, read_address


def test_exact_and_parent_entries():
    d = DomainSet(["Example.COM.", ".parent.org", "", "# a comment", "  spaced.example  "])
    assert "example.com" in d and "EXAMPLE.com." in d and "spaced.example" in d
    assert "sub.example.com" not in d  # exact only
    assert "a.parent.org" in d and "a.b.PARENT.org" in d
    assert "parent.org" not in d  # ".parent" means subdomains only
    assert "" not in d and "org" not in d and "xparent.org" not in d
    assert len(d) == 3 and list(d) == ["example.com", "spaced.example", ".parent.org"]
    assert not DomainSet([]) and "x.example" not in DomainSet([])


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("127.0.0.1", True),
        ("::ffff:127.0.0.1", True),  # v4-mapped, as Postfix may write it
        ("::1", True),
        ("192.0.2.7", True),  # matches the ::ffff:192.0.2.0/120 entry
        ("::ffff:192.0.2.7", True),
        ("192.0.2.77", False),
        ("10.0.0.1", False),
        ("not an address", False),
        ("", False),
    ],
)
def test_networks_treat_v4_mapped_as_v4(address, inside):
    networks = Networks(["127.0.0.0/8", "::1", "::ffff:192.0.2.0/124"])
    assert (address in networks) is inside


def test_networks_refuse_garbage_and_allow_host_bits():
    assert "192.0.2.200" in Networks(["192.0.2.129/25"])
    with pytest.raises(ValueError):
        Networks(["example.org"])
    assert not Networks([]) and "127.0.0.1" not in Networks([])


@pytest.mark.parametrize(
    "entries",
    [
        ["127.0.0.0/8", "::1"],
        ["192.0.2.0/24", "2001:db8::/32", "::ffff:198.51.100.0/120"],
        ["10.0.0.0/8", "0.0.0.0/0"],
        ["::/0"],
        ["::ffff:0:0/96"],
        ["198.51.100.7", "fe80::/10"],
    ],
)
def test_networks_integer_test_agrees_with_ipaddress(entries):
    """The integer test (inet_pton) answers as the ipaddress objects do, on random
    addresses of both families, v4-mapped ones and the odd forms only ipaddress reads."""
    import ipaddress
    import random

    rng = random.Random(entries[0])
    addresses = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "::ffff:192.0.2.9", "198.51.100.7", "fe80::1%eth0",
                 "01.2.3.4", "x", "", "1.2.3", "::", "0.0.0.0", "::FFFF:198.51.100.7", "1.2\x00.3.4"]  # fmt: skip
    for _ in range(2000):
        if rng.random() < 0.5:
            addresses.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:
            value = rng.getrandbits(128) if rng.random() < 0.5 else (0xFFFF << 32) | rng.getrandbits(32)
            addresses.append(str(ipaddress.IPv6Address(value)))
    networks = Networks(entries)
    assert [a in networks for a in addresses] == [networks._contains_parsed(a) for a in addresses]


def test_read_address_writes_what_ipaddress_writes():
    """read_address's fast path (inet_pton/inet_ntop) gives ipaddress's text and bytes, an
    IPv4-mapped address as IPv4, on random addresses of every form Postfix can send and some
    it cannot; what ipaddress refuses, read_address refuses."""
    import ipaddress
    import random

    rng = random.Random(7)
    texts = ["::ffff:192.0.2.1", "::FFFF:C000:0201", "::1.2.3.4", "::", "::1", "1::", "2001:db8:0:1::1",
             "2001:DB8::0:0:1", "fe80::1%eth0", "64:ff9b::192.0.2.1", "01.2.3.4", "1.2.3", "x", "", "1.2\x00.3.4",
             "0.0.0.0", "255.255.255.255", "2001:0db8:0000:0000:0000:ff00:0042:8329"]  # fmt: skip
    for _ in range(3000):
        shape = rng.random()
        if shape < 0.3:
            texts.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        elif shape < 0.8:  # runs of zero groups, the forms inet_ntop and ipaddress compress
            groups = [rng.choice((0, 0, 0, rng.getrandbits(16))) for _ in range(8)]
            texts.append(":".join(f"{g:x}" for g in groups))
        else:
            texts.append(str(ipaddress.IPv6Address((0xFFFF << 32) | rng.getrandbits(32))).upper())
    for text in texts:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            with pytest.raises(ValueError):
                read_address(text)
            continue
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        assert read_address(text) == (str(address), address.packed), text
