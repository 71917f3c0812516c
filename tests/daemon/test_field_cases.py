"""The field cases (tests/data/field_cases.json, copied from
/work/shared/testdata/field/cases.json), each a test named for its id, run over
every protocol the case lists, against a real ``srsd serve``.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.srsd_daemon import REPO_ROOT, SRS_DOMAIN, render_config, run_cli, srs0_pattern

COPY = REPO_ROOT / "tests" / "data" / "field_cases.json"
SHARED = REPO_ROOT.parent / "shared" / "testdata" / "field" / "cases.json"
CASES = json.loads(COPY.read_text())["cases"]

NORMAL_SENDER = "user@remote.example"


def _ids(path):
    return [case["id"] for case in json.loads(path.read_text())["cases"]]


@pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} not present")
def test_field_case_copy_is_current():
    """New cases added upstream must get a test here: copy the file and add one."""
    assert _ids(COPY) == _ids(SHARED), f"update {COPY} from {SHARED} and add a test for each new id"


# -- oversize-quoted-sender -----------------------------------------------------------


def _quoted_senders() -> dict[str, str]:
    items = [f'"Parent {i} of Pupil {i} <parent{i}@school.example.org>"' for i in range(1, 21)]
    escaped = '"' + "; ".join(item.replace('"', '\\"') for item in items) + '"@lists.example.org'
    bare = '"' + "; ".join(item.strip('"') for item in items) + '"@lists.example.org'
    no_at = '"' + "; ".join(f"Parent {i} of Pupil {i} (parent{i} at school.example.org)" for i in range(1, 21))
    return {"escaped": escaped, "bare": bare, "no-at": no_at + '"@lists.example.org'}


def _oversize_quoted_sender(srsd, protocol):
    for variant, sender in _quoted_senders().items():
        assert 1000 < len(sender) < 1400
        if protocol == "tcp_table":
            client = srsd.tcp_table("forward")
        else:
            client = srsd.socketmap()
        with client:
            start = time.monotonic()
            if protocol == "tcp_table":
                client.request(sender)
            else:
                client.request("forward", sender)
            status, text = client.read()
            assert time.monotonic() - start < 5, f"{variant}: answer took longer than 5 s"
            assert status == "notfound", f"{variant}: {status} {text!r}"
            assert client.nothing_pending(), f"{variant}: more than one answer: {client.buffer!r}"
            status, text = client.lookup("forward", NORMAL_SENDER)
            assert status == "found", f"{variant}: second request on the same connection: {status} {text!r}"
            assert srs0_pattern(NORMAL_SENDER).match(text), text
            assert client.nothing_pending()


# -- srs-domain-not-a-domain ----------------------------------------------------------


def _srs_domain_not_a_domain(srsd_factory, protocol):
    assert protocol == "config"
    for domain in ("$myhostname", "net"):
        daemon = srsd_factory(start=False, srs={"domain": domain})
        daemon.prepare()
        cfg = str(daemon.config_path)

        checked = run_cli("check-config", "-c", cfg)
        assert checked.returncode != 0, f"check-config accepted domain {domain!r}: {checked.stdout}"
        assert "srs.domain" in checked.stderr, checked.stderr

        forwarded = run_cli("forward", NORMAL_SENDER, "-c", cfg)
        assert forwarded.returncode != 0
        assert "@" + domain not in forwarded.stdout

        daemon.spawn()
        code = daemon.wait_exit(timeout=10)
        assert code is not None, f"srsd serve kept running with srs.domain = {domain!r}"
        assert code != 0
        log = daemon.log_text()
        assert "srs.domain" in log, log
        assert "srsd ready" not in log


# -- malformed-foreign-srs1 -----------------------------------------------------------

FOREIGN_SRS1 = "SRS1=Xa1b=6ppn=3g=orig.example=user@hop2.example"
_DELIVERABLE_SRS0 = re.compile(r"^SRS0[=+-][^@]*@[^@.]+(\.[^@.]+)+$")


def _assert_bounce_deliverable(rewritten, reversed_status, reversed_text):
    assert reversed_status == "found", f"{rewritten!r} does not reverse: {reversed_status} {reversed_text!r}"
    assert not reversed_text.endswith("@6ppn"), reversed_text
    assert not reversed_text.startswith("SRS03g="), reversed_text
    assert reversed_text == FOREIGN_SRS1 or _DELIVERABLE_SRS0.match(reversed_text), (
        f"forward gave {rewritten!r}, whose reverse {reversed_text!r} is not deliverable"
    )


def _malformed_foreign_srs1(srsd, protocol):
    if protocol == "cli":
        cfg = srsd.workdir / "cli.toml"
        cfg.write_text(render_config(srsd.config_sections()))
        forwarded = run_cli("forward", FOREIGN_SRS1, "-c", str(cfg))
        if forwarded.returncode != 0:
            assert "not rewritten" in forwarded.stderr, forwarded.stderr
            return
        rewritten = forwarded.stdout.strip()
        assert rewritten.endswith("@" + SRS_DOMAIN), rewritten
        back = run_cli("reverse", rewritten, "-c", str(cfg))
        status = "found" if back.returncode == 0 else "notfound"
        _assert_bounce_deliverable(rewritten, status, back.stdout.strip() or back.stderr)
        return
    status, rewritten = srsd.lookup(protocol, "forward", FOREIGN_SRS1)
    if status == "notfound":
        return
    assert status == "found", (status, rewritten)
    assert rewritten.endswith("@" + SRS_DOMAIN), rewritten
    _assert_bounce_deliverable(rewritten, *srsd.lookup(protocol, "reverse", rewritten))
    # cleanup(8) looks the result up again: it must stay as it is.
    assert srsd.lookup(protocol, "forward", rewritten)[0] == "notfound"


# -- the parametrized test --------------------------------------------------------------

RUNNERS = {
    "oversize-quoted-sender": (_oversize_quoted_sender, "srsd"),
    "srs-domain-not-a-domain": (_srs_domain_not_a_domain, "srsd_factory"),
    "malformed-foreign-srs1": (_malformed_foreign_srs1, "srsd"),
}


@pytest.mark.parametrize(
    ("case_id", "protocol"),
    [pytest.param(c["id"], p, id=f"{c['id']}-{p}") for c in CASES for p in c["protocols"]],
)
def test_field_case(case_id, protocol, srsd, srsd_factory):
    assert case_id in RUNNERS, f"field case {case_id!r} has no test yet: add one to {__file__}"
    runner, fixture = RUNNERS[case_id]
    runner({"srsd": srsd, "srsd_factory": srsd_factory}[fixture], protocol)
