"""A DNS zone that travels with the fuzz input: a stand-in for :class:`srsd.dns.Resolver`
(``resolve(name, "TXT")`` and ``exists(name)``), so DKIM keys and DMARC records are
fuzzed with the message that needs them and a seed stays valid without a key file.

An entry is ``NAME SPACE TEXT``: a TXT record *TEXT* at *NAME* (any case, a trailing dot
ignored; several entries give several records). Two texts are special: ``TEMPFAIL`` (the
name's lookups fail for now, :class:`~srsd.dns.DNSTemporaryError`) and ``NXDOMAIN``
(``exists`` says no). A name with a byte DNS cannot hold raises ValueError, as the real
resolver does.

Import it inside the target's ``instrumented()`` block: it imports :mod:`srsd.dns`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from srsd.dns import DNSTemporaryError

__all__ = ["Zone", "parse_entry"]


@dataclass(frozen=True)
class _TXT:
    """One TXT record as dnspython gives it: its character-strings (one here)."""

    strings: tuple[bytes, ...]


def parse_entry(line: str) -> tuple[str, str] | None:
    """``NAME SPACE TEXT`` -> (normalised name, text); None for a line without a space."""
    name, space, record = line.partition(" ")
    if not space or not name:
        return None
    return name.rstrip(".").lower(), record


class Zone:
    """A resolver over *entries* (``(name, text)`` from :func:`parse_entry`).

    ``queries`` counts the lookups, as a real resolver's traffic.
    """

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self.records: dict[str, list[str]] = {}
        for name, text in entries:
            self.records.setdefault(name, []).append(text)
        self.queries = 0

    def _lookup(self, name: str) -> list[str]:
        self.queries += 1
        if not name.isascii() or any(len(label) > 63 for label in name.split(".")):
            raise ValueError(f"not a DNS name: {name!r}")
        records = self.records.get(name.rstrip(".").lower(), [])
        if "TEMPFAIL" in records:
            raise DNSTemporaryError(f"{name}: SERVFAIL")
        return records

    def resolve(self, name: str, qtype: str, timeout: float | None = None) -> list[_TXT] | None:
        """TXT records at *name* (None: none); see :meth:`srsd.dns.Resolver.resolve`."""
        records = [r for r in self._lookup(name) if r != "NXDOMAIN"] if qtype == "TXT" else []
        return [_TXT((r.encode("utf-8", "surrogateescape"),)) for r in records] or None

    def exists(self, name: str, timeout: float | None = None) -> bool:
        """False for a name with an ``NXDOMAIN`` entry; see :meth:`srsd.dns.Resolver.exists`."""
        return "NXDOMAIN" not in self._lookup(name)
