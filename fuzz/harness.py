"""What every atheris target in ``fuzz/`` shares: instrumentation, the entry point, corpus
replay, chunkings, invariant checks and a wire adapter run over ``StringTransport``.

A target is a module ``fuzz/fuzz_<parser>.py`` with ``test_one_input(data: bytes) -> None``
that returns for every input or raises (a crash: an invariant broke, or the parser raised
what it must not). Run as ``python3 -m fuzz.fuzz_<parser> [libFuzzer flags] [corpus dirs]``
it fuzzes under atheris; imported (tests, ``fuzz/run.py --replay``) it is a plain function.

This module imports nothing of srsd: atheris only instruments modules imported inside
:func:`instrumented`, so an srsd module imported here first would go uninstrumented.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import authres
import authres.core
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

__all__ = [
    "FUZZ_DIR",
    "Target",
    "check_authres",
    "chunkings",
    "corpus_files",
    "expect",
    "feed",
    "instrumented",
    "main",
    "no_failure_logged",
    "replay",
    "text",
]

FUZZ_DIR = Path(__file__).resolve().parent

#: ``test_one_input``: one input in, None out; raises on a crash
Target = Callable[[bytes], None]
_AUTHRES_FEATURES = authres.all_features()


def instrumented(module_name: str, *packages: str) -> contextlib.AbstractContextManager[Any]:
    """Instrument srsd (and *packages*) for coverage while the block imports them, but only
    when *module_name* (the target's ``__name__``) is ``"__main__"`` and not ``--replay``:
    imported by a test or replayed, the target is plain code, atheris's hooks stay out."""
    if module_name != "__main__" or "--replay" in sys.argv[1:]:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["srsd", *packages])


def main(test_one_input: Target, argv: list[str] | None = None) -> None:
    """The target's ``__main__``: atheris's fuzzing loop over libFuzzer's *argv*
    (``sys.argv``), or with ``--replay PATH...`` each corpus file once, no atheris."""
    argv = list(sys.argv if argv is None else argv)
    if "--replay" in argv[1:]:
        paths = [a for a in argv[1:] if a != "--replay"]
        print(f"replayed {replay(test_one_input, paths)} inputs")
        return
    import atheris

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def corpus_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files under *paths* (files or directories, recursively), sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        found += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return found


def replay(test_one_input: Target, paths: Iterable[str | Path]) -> int:
    """Run *test_one_input* once on each file under *paths*; the number of inputs run.

    :raises Exception: what the target raised, with the file named in a note.
    """
    count = 0
    for path in corpus_files(paths):
        try:
            test_one_input(path.read_bytes())
        except Exception as exc:
            exc.add_note(f"fuzz input: {path}")
            raise
        count += 1
    return count


def expect(condition: object, message: str, *context: object) -> None:
    """An invariant: raise AssertionError(*message*, *context*) unless *condition* holds.
    Not ``assert``, which ``python -O`` would remove."""
    if not condition:
        raise AssertionError(message, *context)


def text(data: bytes) -> str:
    """*data* as srsd's wire adapters decode keys (UTF-8, bytes kept as surrogates)."""
    return data.decode("utf-8", "surrogateescape")


def chunkings(data: bytes) -> list[list[bytes]]:
    """Two ways to cut *data* into reads: whole, and cut at offsets 1, 3, 6, 10, ... from
    the start and as many from the end (n-1, n-3, ...: a read ending just before a final
    newline): a cut at every distance up to ~sqrt(2n) from either end, in O(sqrt n) reads."""
    cuts = set()
    step, at = 1, 1
    while at < len(data):
        cuts.update((at, len(data) - at))
        step += 1
        at += step
    bounds = [0, *sorted(cuts), len(data)]
    return [[data], [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]]


def feed(factory: Any, chunks: Iterable[bytes]) -> tuple[bytes, bool]:
    """Feed *chunks* to a new connection of *factory* over a StringTransport, then close it.

    :returns: (everything written back, whether the server closed the connection).
    :raises AssertionError: a failure was logged (:func:`no_failure_logged`).
    """
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    with no_failure_logged():
        proto.makeConnection(transport)
        for chunk in chunks:
            if transport.disconnecting:
                break  # a real transport reads no more after loseConnection
            proto.dataReceived(chunk)
        proto.connectionLost(None)
    return transport.value(), transport.disconnecting


@contextlib.contextmanager
def no_failure_logged() -> Iterator[None]:
    """Fail when the block logs a failure: srsd logs what it caught and answered with
    its temporary failure or error action, a bug no caller would see otherwise.

    :raises AssertionError: with the first failure's traceback.
    """
    with capturedLogs() as events:
        yield
    failures = [e["log_failure"] for e in events if e.get("log_failure") is not None]
    expect(not failures, "failure logged", *(f.getTraceback() for f in failures[:1]))


def check_authres(value: str) -> authres.core.AuthenticationResultsHeader:
    """Parse an Authentication-Results field value (folded or not) as an RFC 8601 reader
    would: what srsd writes there must read back. ASCII only: authres, which readers such
    as dkimpy's ARC sealer (at the next hop) use, skips a field with anything else (RFC 6532
    UTF-8 is for SMTPUTF8 messages only).

    :raises AssertionError: it does not parse (an injected comment, a broken token, a
        non-ASCII character), or holds a line break that is not folding.
    """
    unfolded = re.sub(r"\r\n[ \t]", " ", value)
    expect("\r" not in unfolded and "\n" not in unfolded, "line break in Authentication-Results", value)
    expect(unfolded.isascii(), "non-ASCII in Authentication-Results", value)
    try:
        return authres.core.AuthenticationResultsHeader.parse_value(_AUTHRES_FEATURES, unfolded)
    except authres.core.AuthResError as exc:
        raise AssertionError("Authentication-Results does not parse", value, str(exc)) from None
