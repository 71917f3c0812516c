"""DNS closed, silent and answering garbage under SPF-aware rewriting and the policy
service, with mail through a real Postfix (tests/faults/dnsfaults.py).

Budgets are CI-sized (``[dns] timeout`` 0.5 s, ``decision_budget`` 1 s,
``check_budget`` 3 s); the answer times are printed, not asserted (the machine is
shared and noisy): what must hold is that every lookup is answered and rewritten, and
every policy request gets the configured temperror action. The full run with the
default budgets is ``python3 -m tests.faults.battery`` (docs/reliability.md).
"""

from __future__ import annotations

import pytest

from tests.faults.dnsfaults import Budgets, dns_outage, dns_stack, pipelined_during_outage
from tests.faults.faultdns import MODES, FaultyDNS

BUDGETS = Budgets(dns_timeout=0.5, decision=1.0, check=3.0)


@pytest.fixture(scope="module")
def faulty_dns():
    server = FaultyDNS()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, faulty_dns):
    forwarding = dns_stack(tmp_path_factory.mktemp("faults-dns"), faulty_dns, BUDGETS)
    try:
        yield forwarding.start()
    finally:
        code = forwarding.stop()
    assert code in (0, None), f"srsd exited {code} on SIGTERM\n{forwarding.srsd.diagnostics()}"


@pytest.mark.parametrize("mode", MODES)
def test_dns_outage_answers_rewritten_and_per_policy(stack, faulty_dns, mode):
    outcome = dns_outage(stack, faulty_dns, mode, BUDGETS)
    print(outcome.report())
    assert outcome.failures == 0 and outcome.answers == outcome.inputs, outcome.report()
    if mode != "closed":
        assert f"0 DNS queries reached the {mode}" not in outcome.report(), "srsd did not ask the faulty server"


def test_pipelined_lookups_while_dns_is_silent(stack, faulty_dns):
    outcome = pipelined_during_outage(stack, faulty_dns, BUDGETS, 5000)
    print(outcome.report())
    assert outcome.failures == 0 and outcome.answers == outcome.inputs, outcome.report()
