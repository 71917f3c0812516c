"""Fixtures for the end-to-end tests: SMTP sink, srsd, private Postfix.

One srsd and one sink serve the whole module; Postfix is started once per
protocol (`postfix` is parametrized over the snippet files). On any failure
the report gets srsd's output, the Postfix maillog and queue, and what the
sink received. SRSD_E2E_KEEP=1 keeps the Postfix temp dirs.
"""

from __future__ import annotations

import os

import pytest

from .postfix_instance import PostfixInstance, render_snippet
from .smtp_sink import SmtpSink
from .srsd_process import SrsdProcess

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


@pytest.fixture(scope="module")
def srsd(tmp_path_factory):
    process = SrsdProcess(tmp_path_factory.mktemp("srsd"), domain=SRS_DOMAIN, local_domains=LOCAL_DOMAINS)
    process.start()
    yield process
    returncode = process.stop()
    assert returncode == 0, f"srsd exited {returncode} on SIGTERM\n{process.diagnostics()}"


@pytest.fixture(scope="module", params=sorted(SNIPPETS))
def postfix(request, sink, srsd):
    """A running private Postfix configured with one snippet file as shipped."""
    snippet = render_snippet(SNIPPETS[request.param], srsd.ports)
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        diagnostics = getattr(value, "diagnostics", None)
        if callable(diagnostics):
            try:
                text = diagnostics()
            except Exception as exc:  # diagnostics must never hide the failure
                text = f"(could not collect diagnostics: {exc!r})"
            report.sections.append((f"e2e {name}", text))
