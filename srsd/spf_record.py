"""An SPF record read into its terms (RFC 7208 4.5, 4.6, 5, 6 and the ABNF of 12).

:func:`parse_record` checks the whole record before anything is evaluated: RFC 7208 4.6
says a syntax error anywhere makes the result permerror, whatever a term before it
would have matched. Domain-specs stay unexpanded (:mod:`srsd.spf_macro` expands them
during the check, when the identity is known); their macro syntax is checked here.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

__all__ = ["DOMAIN_LETTERS", "EXPLANATION_LETTERS", "Mechanism", "Record", "SPFPermError", "SPFTempError",
           "is_spf_record", "parse_record"]  # fmt: skip


class SPFPermError(Exception):
    """check_host() returns permerror (RFC 7208 2.6.7). ``term`` is the term at fault, if one is."""

    def __init__(self, message: str, term: str = "") -> None:
        super().__init__(f"{message}: {term}" if term else message)
        self.message = message
        self.term = term


class SPFTempError(Exception):
    """check_host() returns temperror (RFC 7208 2.6.6): a DNS lookup failed or timed out."""


#: qualifier -> result (RFC 7208 4.6.2)
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
#: macro letters of a domain-spec; an explanation string may use c, r and t too (RFC 7208 7.2)
DOMAIN_LETTERS = "slodiphv"
EXPLANATION_LETTERS = DOMAIN_LETTERS + "crt"

_VERSION = re.compile(r"v=spf1(?: |\Z)", re.IGNORECASE)
_MODIFIER = re.compile(r"([a-z][a-z0-9_.\-]*)=(.*)", re.IGNORECASE | re.DOTALL)


def _macro_string(letters: str) -> re.Pattern[str]:
    """macro-string (RFC 7208 7.1): macro-expands of *letters* (transformers, delimiters),
    the escapes, and macro-literals."""
    return re.compile(rf"(?:%\{{[{letters}][0-9]*r?[.\-+,/_=]*\}}|%[%_\-]|[!-$&-~])*", re.IGNORECASE)


_MACRO_STRING = _macro_string(EXPLANATION_LETTERS)  # an unknown modifier's value
_DOMAIN_MACRO_STRING = _macro_string(DOMAIN_LETTERS)
_ENDS_WITH_MACRO = re.compile(r"(?:%\{[^}]*\}|%[%_\-])\Z")
_TOPLABEL = re.compile(r"(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9\-]*[a-z0-9])", re.IGNORECASE)
_A_OR_MX = re.compile(r"(a|mx)(?=\Z|[:/])", re.IGNORECASE)
_DUAL_CIDR = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?\Z")
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zero (ip4-network)
_IP4 = re.compile(rf"{_QNUM}(?:\.{_QNUM}){{3}}\Z")


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One directive (RFC 7208 4.6.1, 5).

    ``name`` is the mechanism in lower case; ``domain_spec`` its target, unexpanded
    (None: the domain being checked); ``cidr4``/``cidr6`` the prefix lengths of a, mx,
    ip4, ip6 (bits); ``network`` the packed address of ip4/ip6 (bytes, 4 or 16);
    ``text`` the term as written (Received-SPF's ``mechanism=``).
    """

    qualifier: str
    name: str
    domain_spec: str | None
    cidr4: int
    cidr6: int
    network: bytes
    text: str

    @property
    def result(self) -> str:
        return QUALIFIERS[self.qualifier]


@dataclass(frozen=True, slots=True)
class Record:
    """A record's mechanisms in order, and its redirect= and exp= domain-specs (RFC 7208 6)."""

    mechanisms: tuple[Mechanism, ...]
    redirect: str | None
    exp: str | None


def is_spf_record(text: str) -> bool:
    """Whether a TXT string is an SPF record: ``v=spf1`` then a space or the end (RFC 7208 4.5)."""
    return _VERSION.match(text) is not None


@functools.lru_cache(maxsize=4096)
def parse_record(text: str) -> Record:
    """*text* (an SPF record, ``v=spf1 ...``) read into a :class:`Record`.

    :raises SPFPermError: a syntax error anywhere (RFC 7208 4.6): an unknown mechanism, a
        bad address, prefix length or macro, a mechanism without its required target, a
        second redirect= or exp= (6), a target that does not end with a top label (4.6.1's
        domain-end).
    """
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, str] = {}
    for term in text.split(" ")[1:]:
        if not term:
            continue  # terms are separated by one or more spaces (4.6.1)
        modifier = _MODIFIER.fullmatch(term)
        if modifier is not None:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise SPFPermError(f"{name}= appears more than once", term)
                _check_domain_spec(value, term)
                modifiers[name] = value
            else:  # unknown modifiers are ignored, but must be well formed (6)
                _check_macro_string(value, term)
            continue
        mechanisms.append(_mechanism(term))
    return Record(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"))


def _mechanism(term: str) -> Mechanism:
    qualifier, body = ("+", term) if term[0] not in QUALIFIERS else (term[0], term[1:])
    head = _A_OR_MX.match(body)
    if head is not None:  # a, mx [":" domain-spec] [dual-cidr-length]
        name, rest = head.group(1).lower(), body[head.end() :]
        colon = rest.startswith(":")
        spec, cidr4, cidr6 = _dual_cidr(rest[1:] if colon else rest, term)
        if colon:
            _check_domain_spec(spec, term)
        elif spec:
            raise SPFPermError("Unknown mechanism found", term)
        return Mechanism(qualifier, name, spec if colon else None, cidr4, cidr6, b"", term)
    name, colon, argument = body.partition(":")
    name = name.lower()
    if name == "all" and not colon:
        return Mechanism(qualifier, name, None, 0, 0, b"", term)
    if name in ("include", "exists") and colon:
        _check_domain_spec(argument, term)
        return Mechanism(qualifier, name, argument, 32, 128, b"", term)
    if name == "ptr":
        if colon:
            _check_domain_spec(argument, term)
        return Mechanism(qualifier, name, argument if colon else None, 32, 128, b"", term)
    if name == "ip4" and colon:
        address, cidr = _cidr(argument, 32, term)
        if not _IP4.match(address):
            raise SPFPermError("Invalid IP4 address", term)
        return Mechanism(qualifier, name, None, cidr, 128, ipaddress.IPv4Address(address).packed, term)
    if name == "ip6" and colon:
        address, cidr = _cidr(argument, 128, term)
        try:
            packed = ipaddress.IPv6Address(address).packed
        except ValueError:
            raise SPFPermError("Invalid IP6 address", term) from None
        return Mechanism(qualifier, name, None, 32, cidr, packed, term)
    raise SPFPermError("Unknown mechanism found", term)


def _bits(digits: str, most: int, term: str) -> int:
    """A prefix length: no leading zero, at most *most* (ip4-cidr-length, ip6-cidr-length)."""
    if (len(digits) > 1 and digits[0] == "0") or int(digits) > most:
        raise SPFPermError("Invalid CIDR length", term)
    return int(digits)


def _cidr(argument: str, most: int, term: str) -> tuple[str, int]:
    """``address/len`` -> (address, len); no length: *most*."""
    address, slash, digits = argument.partition("/")
    if not slash:
        return address, most
    if not digits.isdigit() or not digits.isascii():
        raise SPFPermError("Invalid CIDR length", term)
    return address, _bits(digits, most, term)


def _dual_cidr(argument: str, term: str) -> tuple[str, int, int]:
    """``domain/24//64`` -> (domain, 24, 64); each length optional (dual-cidr-length)."""
    match = _DUAL_CIDR.search(argument)
    assert match is not None  # every part of it is optional
    four, six = match.group(1), match.group(2)
    cidr4 = 32 if four is None else _bits(four, 32, term)
    cidr6 = 128 if six is None else _bits(six, 128, term)
    return argument[: match.start()], cidr4, cidr6


def _check_macro_string(value: str, term: str) -> None:
    if _MACRO_STRING.fullmatch(value) is None:
        raise SPFPermError("Invalid macro", term)


def _check_domain_spec(spec: str, term: str) -> None:
    """domain-spec = macro-string domain-end (RFC 7208 7.1): well-formed macros, and the
    last label a top label (not all digits) unless the spec ends with a macro."""
    if not spec:
        raise SPFPermError("empty domain-spec", term)
    if _DOMAIN_MACRO_STRING.fullmatch(spec) is None:
        raise SPFPermError("Invalid macro", term)
    body = spec[:-1] if spec.endswith(".") else spec
    if _ENDS_WITH_MACRO.search(body):
        return
    _, dot, last = body.rpartition(".")
    if not dot or not last or not _TOPLABEL.fullmatch(last):
        raise SPFPermError("Invalid domain found (use FQDN)", term)
