"""DomainSet and Networks: the membership rules shared by rewriting, policy and mail authentication."""

import pytest

from srsd.domains import DomainSet, Networks


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
