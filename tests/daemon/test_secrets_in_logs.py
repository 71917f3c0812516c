"""Secrets never reach a log or a terminal: srsd at log level debug, every endpoint
driven through its answers and refusals, a reload and a refused reload; then the log,
and what ``check-config`` and the other commands print (errors included), are searched
for every SRS secret and every line of the DKIM private key, as text and as hex/base64."""

from __future__ import annotations

import base64
import secrets
import signal
import socket
import time

import pytest

from srsd.mailauth.keys import generate_key
from srsd.srs import SRS
from tests.lookup_clients import milter_message, netstring, policy_request
from tests.protocols import milter_wire as w
from tests.srsd_daemon import ALL_ENDPOINTS, SRS_DOMAIN

NEW = "Sekr1t-new-" + secrets.token_hex(12)
OLD = "Sekr1t-old-" + secrets.token_hex(12)


def forms(secret: str) -> list[str]:
    """The secret and the ways code tends to print bytes."""
    raw = secret.encode()
    return [secret, raw.hex(), base64.b64encode(raw).decode().rstrip("="), repr(raw)[2:-1]]


def exchange(sock: socket.socket, data: bytes, until: bytes | None = None, timeout: float = 10.0) -> bytes:
    """Send *data*, read until *until* is in the reply or the server closes."""
    sock.sendall(data)
    sock.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (until is None or until not in out):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        out += chunk
    return out


@pytest.fixture
def dkim_key(tmp_path):
    path = tmp_path / "s1.private"
    generate_key(str(path), "rsa-sha256", 2048)
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]
    return str(path), lines


def test_no_secret_in_any_log_or_output(srsd_factory, dns_server, dkim_key, tmp_path):
    key_path, key_lines = dkim_key
    dns_server.add("orig.example", {"TXT": "v=spf1 ip4:192.0.2.1 -all"})
    sections = {
        "log": {"level": "debug"},
        "dns": {"nameservers": [dns_server.address], "timeout": 1.0},
        "dkim": {"selector": "s1", "key_file": key_path},
        "limits": {"max_request_bytes": 512},
    }
    daemon = srsd_factory(secrets_lines=[NEW, OLD], endpoints=ALL_ENDPOINTS, sections=sections)
    old_srs = SRS([OLD], SRS_DOMAIN)
    now = time.time()

    # -- SRS maps: found, not found, every refusal --------------------------------
    with daemon.tcp_table("forward") as fwd:
        for key in ["alice@orig.example", "SRS0=abcd=AB=orig.example=carol@hop1.example", "bob@local.example",
                    "", "user", "@orig.example", "x" * 600 + "@orig.example", "a%zz@orig.example"]:  # fmt: skip
            fwd.request(key)
            fwd.read()
        minted = fwd.lookup("forward", "dave@orig.example")[1]
    genuine = old_srs.forward("erin@orig.example", now)
    refused = [
        minted,  # found
        genuine,  # found, with the second secret
        minted[:5] + next(c for c in "ABC" if c != minted[5].upper()) + minted[6:],  # forged hash
        old_srs.forward("frank@orig.example", now - 40 * 86400),  # expired
        minted[:5] + minted[7:],  # hash below hash_minimum
        "SRS0=abcd=AB=orig.example@" + SRS_DOMAIN,  # malformed
        minted.replace("@" + SRS_DOMAIN, "@elsewhere.example"),  # not our domain
        "SRS1=xxxx=hop.example==abcd=AB=o.example=c@" + SRS_DOMAIN,  # forged SRS1
    ]
    with daemon.tcp_table("reverse") as rev:
        for key in refused:
            rev.lookup("reverse", key)
        rev.send(b"bogus request\n" + b"get " + b"y" * 2000 + b"\n")
        rev.nothing_pending(0.3)
    with daemon.socketmap() as sm:
        for map_name, key in [("forward", "alice@orig.example"), ("reverse", refused[2]), ("nomap", "x@y.example")]:
            sm.request(map_name, key)
            sm.read()
    with daemon.connect("socketmap") as raw:
        exchange(raw, netstring(b"reverse " + b"z" * 2000) + b"12:bad", timeout=1)
    with daemon.connect("socketmap") as raw:
        exchange(raw, b"not a netstring,", timeout=1)

    # -- policy: pass, fail, garbage ----------------------------------------------
    with daemon.connect("policy") as pol:
        for request in (policy_request(), policy_request(client_address="192.0.2.9"), b"junk line\n\n"):
            exchange(pol, request, until=b"\n\n")

    # -- milter: a local message signed, an incoming one verified, junk -------------
    for address, sender, rcpt in (
        ("127.0.0.1", "alice@local.example", "bob@remote.example"),  # local submission: signed
        ("192.0.2.1", "alice@orig.example", "bob@local.example"),  # incoming: verified
    ):
        session = w.session_start(address=address) + w.message_events(
            "4ABC", sender, [rcpt], [("From", f" {sender}"), ("Subject", " hi")], [b"Hello\r\n"]
        )
        with daemon.connect("milter") as mil:
            replies = milter_message(mil, session)
            mil.sendall(w.QUIT)
        assert any(r[0] in "ih" and r[-2] in ("DKIM-Signature", "Authentication-Results") for r in replies), replies
    with daemon.connect("milter") as mil:
        exchange(mil, b"\x00\x00\x00\x05Zjunk" + b"\xff" * 20, timeout=1)

    # -- reloads: one that works, one refused ---------------------------------------
    daemon.reload()
    daemon.secrets_path.write_bytes(NEW.encode() + b"x" * 1100 + b"\n")
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_for_log("reload refused")
    daemon.write_secrets([NEW, OLD])
    daemon.reload()
    daemon.assert_running()

    # -- the commands an admin runs -------------------------------------------------
    outputs = []
    for args in (["check-config"], ["forward", "alice@orig.example"], ["reverse", refused[2]],
                 ["reverse", genuine], ["dns-records"]):  # fmt: skip
        done = daemon.cli(*args)
        outputs.append(done.stdout + done.stderr)
    daemon.secrets_path.write_bytes(NEW.encode() + b"x" * 1100 + b"\n")
    broken = daemon.cli("check-config")
    assert broken.returncode == 1
    outputs.append(broken.stdout + broken.stderr)
    daemon.write_secrets([NEW, OLD])

    log = daemon.log_text()
    assert daemon.stop() == 0
    log += daemon.log_text()
    # The log really covers what was driven (else the search proves nothing).
    for expected in ("reverse", "refused", "policy", "milter", "reloaded", "reload refused"):
        assert expected in log, expected
    haystack = (log + "\n".join(outputs)).lower()
    for secret in (NEW, OLD):
        for form in forms(secret):
            assert form.lower() not in haystack, f"secret ({form!r}) found"
    for line in key_lines:
        assert line.lower() not in haystack, "DKIM private key material found"
    assert "dkim-signature" in log.lower() or "signed" in log.lower(), "no signing happened"
