"""The spending caps as the shell must keep them while it executes a plan."""

from __future__ import annotations

from collections.abc import Sequence

from cloudproxy_cli.core import messages
from cloudproxy_cli.core.plan import ActionOutcome, DeleteAction, Plan
from cloudproxy_cli.core.policy import InstancePolicy


def create_refused(plan: Plan, policy: InstancePolicy, done: Sequence[ActionOutcome]) -> str | None:
    """Why the next create of ``plan`` must not run, or ``None`` when it may.

    The plan leaves room under MAX_SCALING assuming its deletes succeed; a delete that failed
    leaves its proxy in place, so a create made regardless would exceed the cap. A failed
    create counts as existing too: the provider may have made the VM anyway (a ghost create).
    """
    if policy.max_scaling is None:
        return None
    deleted = sum(1 for o in done if isinstance(o.action, DeleteAction) and o.ok)
    created = sum(1 for o in done if not isinstance(o.action, DeleteAction))
    existing = len(plan.observed) - deleted + created
    if existing < policy.max_scaling:
        return None
    return messages.create_skipped_over_max(policy.max_scaling, existing)
