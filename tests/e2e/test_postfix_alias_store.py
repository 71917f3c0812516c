"""Long senders through a real Postfix: the alias store (SQLite, and one Redis for a fleet).

* ``postfix_s`` + ``srsd_s``: one host, the default SQLite store, ``--workers 2``.
* ``postfix_a`` + ``srsd_a`` (tcp_table snippet) and ``postfix_b`` + ``srsd_b`` (socketmap
  snippet): two forwarders behind one MX name, same secrets, one private redis-server.
* ``upstream``: a Postfix without srsd standing for the Internet's sending MTA, relaying to
  ``postfix_a``: when ``postfix_a`` answers 4xx (Redis down), it is this queue that defers
  and retries, as a real sender's would.

Every message relayed onwards lands in the module's SMTP sink; bounces are submitted as
the next hop's MTA would send them (null sender, to the SRS address).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets

import pytest

from tests.redis_server import RedisServer
from tests.srsd_daemon import serving

from .conftest import FORWARD_TARGET, FORWARDING_ALIAS, LOCAL_DOMAINS, e2e_srsd
from .postfix_instance import PostfixInstance, render_snippet
from .test_postfix_srs import delivered, new_marker, submit

ALIAS = re.compile(r"^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}==[A-Z2-7]{16}@fwd\.example$")
SIXTY = "bounces+9876543210-abcdefghijk=example.org@lists.example.net"  # 60 octets


def long_sender(tag: str) -> str:
    """A VERP-style list bounce address, unique per message, 60+ octets."""
    return f"bounces+{tag}-{secrets.token_hex(6)}=example.org@mailer.lists.example.net"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet_secret():
    return secrets.token_urlsafe(32)


def _srsd(tmp_path_factory, name: str, **options):
    return serving(e2e_srsd(tmp_path_factory, name, **options))


def _fleet_node(tmp_path_factory, name: str, redis_server: RedisServer, secret: str):
    """One forwarder of the fleet: the fleet's secret, the shared Redis."""
    store = redis_server.store_settings() | {"timeout": 1.0}
    return _srsd(tmp_path_factory, name, secrets_lines=[secret], sections={"store": store})


@pytest.fixture(scope="module")
def srsd_s(tmp_path_factory):
    with _srsd(tmp_path_factory, "srsd-sqlite", workers=2) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def srsd_a(tmp_path_factory, redis_server, fleet_secret):
    with _fleet_node(tmp_path_factory, "srsd-a", redis_server, fleet_secret) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def srsd_b(tmp_path_factory, redis_server, fleet_secret):
    with _fleet_node(tmp_path_factory, "srsd-b", redis_server, fleet_secret) as daemon:
        yield daemon


@contextlib.contextmanager
def _postfix(label: str, relay_port: int, snippet: str = "", *, myhostname: str = "", aliases=None):
    instance = PostfixInstance(
        relay_port=relay_port,
        local_domains=LOCAL_DOMAINS if not myhostname else [],
        virtual_aliases={FORWARDING_ALIAS: FORWARD_TARGET} if aliases is None else aliases,
        extra_main_cf=snippet,
        label=label,
    )
    if myhostname:
        # Another name than the forwarders': Postfix's smtp client refuses a peer that
        # greets with its own myhostname (a mail loop).
        main_cf = instance.config_dir / "main.cf"
        main_cf.write_text(main_cf.read_text().replace("myhostname = mx.fwd.example", f"myhostname = {myhostname}"))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))


@pytest.fixture(scope="module")
def postfix_s(sink, srsd_s):
    with _postfix("alias-sqlite", sink.port, render_snippet("main.cf.tcp_table", srsd_s.ports)) as instance:
        yield instance


@pytest.fixture(scope="module")
def postfix_a(sink, srsd_a):
    with _postfix("alias-a", sink.port, render_snippet("main.cf.tcp_table", srsd_a.ports)) as instance:
        yield instance


@pytest.fixture(scope="module")
def postfix_b(sink, srsd_b):
    with _postfix("alias-b", sink.port, render_snippet("main.cf.socketmap", srsd_b.ports)) as instance:
        yield instance


@pytest.fixture(scope="module")
def upstream(postfix_a):
    with _postfix("alias-upstream", postfix_a.smtpd_port, myhostname="upstream.example", aliases={}) as instance:
        yield instance


def forwarded(postfix, sink, sender: str):
    received = delivered(postfix, sink, submit(postfix, sender, FORWARDING_ALIAS))
    assert received.rcpt_tos == (FORWARD_TARGET,), received
    return received


def bounce_reaches(postfix, sink, srs_address: str, sender: str) -> None:
    """A DSN to *srs_address* submitted to *postfix* must arrive at *sender*, To: restored."""
    bounce = delivered(postfix, sink, submit(postfix, "", srs_address))
    assert (bounce.mail_from, bounce.rcpt_tos) == ("", (sender,)), bounce
    assert bounce.headers["To"] == sender


def test_a_60_octet_sender_leaves_short_and_its_bounce_returns(postfix_s, sink, srsd_s):
    assert len(SIXTY) == 60
    received = forwarded(postfix_s, sink, SIXTY)

    assert ALIAS.match(received.mail_from), received
    assert len(received.mail_from.split("@")[0]) <= 64
    assert received.headers["From"] == SIXTY  # only the envelope changes
    reverse = srsd_s.cli("reverse", received.mail_from)
    assert (reverse.returncode, reverse.stdout.strip()) == (0, SIXTY), reverse

    bounce_reaches(postfix_s, sink, received.mail_from, SIXTY)
    # smtpd checks the recipient with a lower-cased key: the alias reverses in any case.
    bounce_reaches(postfix_s, sink, received.mail_from.lower(), SIXTY)
    assert srsd_s.wait_for_log(f"forward {SIXTY} -> {received.mail_from}: new alias")


def test_a_forged_alias_is_an_unknown_user(postfix_s, sink):
    address = forwarded(postfix_s, sink, long_sender("forged")).mail_from
    forged = "SRS0=" + ("A" if address[5] not in "Aa" else "B") + address[6:]
    with postfix_s.smtp() as client:
        assert client.mail("")[0] == 250
        code, text = client.rcpt(forged)
    assert code == 550 and b"User unknown" in text, (code, text)


def test_the_other_node_accepts_the_bounce(postfix_a, postfix_b, sink, srsd_a, srsd_b):
    """Two forwarders, one Redis: what one mints, the other reverses, both ways round."""
    sender_a, sender_b = long_sender("via-a"), long_sender("via-b")
    via_a = forwarded(postfix_a, sink, sender_a).mail_from
    via_b = forwarded(postfix_b, sink, sender_b).mail_from
    assert ALIAS.match(via_a) and ALIAS.match(via_b)

    bounce_reaches(postfix_b, sink, via_a, sender_a)
    bounce_reaches(postfix_a, sink, via_b, sender_b)
    # Each alias was minted (stored) by one node only and reversed by the other.
    assert srsd_a.wait_for_log(f"forward {sender_a} -> {via_a}: new alias")
    assert f"forward {sender_a} ->" not in srsd_b.log_text()


def test_redis_down_postfix_defers_then_nothing_is_lost(upstream, postfix_a, postfix_b, sink, redis_server, srsd_a):
    """Redis stopped mid-run: postfix_a answers 4xx, the sending MTA keeps the mail and
    retries; once Redis is back every message is delivered once, and every bounce returns."""
    before = [(long_sender(f"before{i}"), new_marker()) for i in range(10)]
    during = [(long_sender(f"during{i}"), new_marker()) for i in range(10)]

    def send(batch):
        for sender, marker in batch:
            with upstream.smtp() as client:
                assert client.mail(sender)[0] == 250
                assert client.rcpt(FORWARDING_ALIAS)[0] == 250
                body = f"From: {sender}\r\nTo: {FORWARDING_ALIAS}\r\nSubject: {marker}\r\n\r\n{marker}\r\n"
                assert client.data(body.encode())[0] == 250

    send(before)
    for _sender, marker in before:
        sink.wait_for(marker, timeout=30)

    redis_server.stop()
    try:
        send(during)
        # postfix_a cannot rewrite the sender: it answers 451, upstream keeps the mail.
        log = upstream.wait_for_maillog("status=deferred", timeout=30)
        deferred = [line for line in log.splitlines() if "status=deferred" in line]
        assert all("451 4.3.0" in line for line in deferred), deferred
        assert all(not sink.matching(marker) for _sender, marker in during)
        # A bounce to an alias meanwhile: a temporary refusal at RCPT, never a 5xx.
        first_alias = sink.matching(before[0][1])[0].mail_from
        with postfix_a.smtp() as client:
            assert client.mail("")[0] == 250
            code, text = client.rcpt(first_alias)
        assert 400 <= code < 500, (code, text)
        assert srsd_a.wait_for_log("the alias store did not answer")
    finally:
        redis_server.start()

    upstream.flush()
    deliveries = {marker: sink.wait_for(marker, timeout=60) for _sender, marker in during}
    upstream.wait_for_empty_queue(timeout=30)

    counted = {"sent": 0, "delivered": 0, "bounces returned": 0}
    for sender, marker in before + during:
        counted["sent"] += 1
        copies = sink.matching(marker)
        assert len(copies) == 1, (sender, copies)  # once: no loss, no duplicate
        received = copies[0]
        assert ALIAS.match(received.mail_from) and received.rcpt_tos == (FORWARD_TARGET,), received
        counted["delivered"] += 1
        bounce_reaches(postfix_b, sink, received.mail_from, sender)  # the other node, after the restart
        counted["bounces returned"] += 1
    assert counted == {"sent": 20, "delivered": 20, "bounces returned": 20}, counted
    assert len(deliveries) == 10
