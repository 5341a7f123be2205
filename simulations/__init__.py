"""Simulations of churn and rollouts at fleet scale, with the real decision code.

The engines (``tick``: numpy, 10^6 nodes; ``exact``: heapq, for validation) run one model
(``model``, ``fleet``) in which every node follows ``p2pupdate.core.updater``'s schedule,
checks the real gates (``p2pupdate.core.gates``) against real signed-document dataclasses
and asks the real capacity policy (``coordinator.policy_batch.decide_batch`` / ``coordinator.policy.decide``).
Nothing of those rules is restated here: if the simulator needed its own copy of a rule,
the rule would move into the core.  See ``README.md`` in this directory.
"""
