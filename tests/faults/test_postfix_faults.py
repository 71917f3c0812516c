"""srsd killed and reloaded while a real Postfix forwards mail through it, counted
(tests/faults/mailflow.py, tests/faults/rotation.py).

Two stacks, one Postfix each: the tcp_table snippet with srsd's DKIM milter, and the
socketmap snippet alone. CI sizes: 200 messages; the full run is
``python3 -m tests.faults.battery`` (docs/reliability.md).
"""

from __future__ import annotations

import pytest

from tests.faults.mailflow import ForwardingStack, sigkill_during_batch
from tests.faults.rotation import sighup_rotation

STACKS = {
    # Postfix's tcp_table client retries a refused connection for ~10 s before it gives
    # up: a longer outage than that, so the failure reaches Postfix's queue.
    "tcp_table+milter": {"protocol": "tcp_table", "milter": True, "down": 12.0},
    # socketmap lookups fail at once: a short outage is enough.
    "socketmap": {"protocol": "socketmap", "milter": False, "down": 3.0},
}


@pytest.fixture(scope="module", params=sorted(STACKS))
def stack(request, tmp_path_factory):
    settings = STACKS[request.param]
    forwarding = ForwardingStack(
        tmp_path_factory.mktemp(f"faults-{settings['protocol']}"), settings["protocol"], milter=settings["milter"]
    )
    forwarding.down = settings["down"]
    try:
        yield forwarding.start()
    finally:
        code = forwarding.stop()
    assert code in (0, None), f"srsd exited {code} on SIGTERM\n{forwarding.srsd.diagnostics()}"


def test_sigkill_during_a_batch_loses_nothing(stack):
    outcome = sigkill_during_batch(stack, 200, stack.down)
    print(outcome.report())
    assert outcome.failures == 0 and outcome.lost == 0, outcome.report()
    assert outcome.answers == outcome.inputs == 200, outcome.report()
    assert outcome.counts["bounced"] == 0, outcome.report()
    # The outage did meet the mail: senders were told to retry, or queued mail was.
    assert outcome.counts["temp_refusals"] + outcome.counts["retried"] > 0, outcome.report()
    stack.postfix.wait_for_empty_queue()


def test_sighup_with_new_secrets_under_load_fails_no_lookup(stack):
    lookups, mail = sighup_rotation(stack, reloads=10, messages=100)
    print(lookups.report())
    print(mail.report())
    assert lookups.failures == 0 and lookups.answers == lookups.inputs > 0, lookups.report()
    assert mail.failures == 0 and mail.lost == 0 and mail.answers == mail.inputs, mail.report()
