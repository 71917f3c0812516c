"""Fixtures for the end-to-end tests: SMTP sink, srsd, private Postfix.

One srsd and one sink serve the whole module; Postfix is started once per
protocol (`postfix` is parametrized over the snippet files). On any failure
the report gets srsd's output, the Postfix maillog and queue, and what the
sink received (tests/conftest.py). SRSD_E2E_KEEP=1 keeps the Postfix temp dirs.
"""

from __future__ import annotations

import os

import pytest

from tests.srsd_daemon import SrsdDaemon, serving

from .postfix_instance import PostfixInstance, render_snippet
from .smtp_sink import SmtpSink

SRS_DOMAIN = "fwd.example"
LOCAL_DOMAINS = ["fwd.example", "local.example"]
FORWARDING_ALIAS = "fwd-user@fwd.example"
FORWARD_TARGET = "someone@remote.example"

SNIPPETS = {"tcp_table": "main.cf.tcp_table", "socketmap": "main.cf.socketmap"}


@pytest.fixture(scope="module")
def sink():
    smtp_sink = SmtpSink().start()
    yield smtp_sink
    smtp_sink.stop()


def e2e_srsd(tmp_path_factory, name: str, **options) -> SrsdDaemon:
    """srsd for the end-to-end tests (see SrsdDaemon for *options*): SRS_DOMAIN with
    LOCAL_DOMAINS, and every endpoint must accept a connection once it is ready."""
    return SrsdDaemon(
        tmp_path_factory.mktemp(name), srs={"domain": SRS_DOMAIN, "local_domains": LOCAL_DOMAINS}, probe=True, **options
    )


@pytest.fixture(scope="module")
def srsd(tmp_path_factory):
    with serving(e2e_srsd(tmp_path_factory, "srsd")) as process:
        yield process


@pytest.fixture(scope="module", params=sorted(SNIPPETS))
def postfix(request, sink, srsd):
    """A running private Postfix configured with ``srsd postfix-snippet MODE`` as printed
    for this srsd's config: the settings of the shipped snippet file, with this srsd's ports."""
    printed = srsd.cli("postfix-snippet", request.param)
    assert printed.returncode == 0, printed
    snippet = printed.stdout

    def settings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    assert settings(snippet) == settings(render_snippet(SNIPPETS[request.param], srsd.ports)), snippet
    instance = PostfixInstance(
        relay_port=sink.port,
        local_domains=LOCAL_DOMAINS,
        virtual_aliases={FORWARDING_ALIAS: FORWARD_TARGET},
        extra_main_cf=snippet,
        label=request.param,
    )
    try:
        instance.start()
        yield instance
    finally:
        instance.stop(remove=not os.environ.get("SRSD_E2E_KEEP"))
