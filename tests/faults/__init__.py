"""Faults, counted: srsd killed, reloaded, cut off from DNS and attacked by hostile
clients, through a real Postfix where mail flows (issue 13, item 2).

Each scenario in :mod:`tests.faults.scenarios` runs one fault and returns its figures
(:class:`tests.faults.measure.Outcome`: inputs, answers, failures, messages lost,
srsd's peak RSS, answer times). The pytest modules here run them at CI size and
assert on the counts; ``python3 -m tests.faults.battery`` runs them at full size and
prints the table recorded in docs/reliability.md.
"""
