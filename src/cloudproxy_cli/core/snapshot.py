"""What ``rolling status`` shows of one instance: its fleet after a run, or why the run failed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from cloudproxy_cli.core.model import Proxy
from cloudproxy_cli.core.plan import Plan
from cloudproxy_cli.core.policy import InstancePolicy
from cloudproxy_cli.core.state import InstanceSnapshot, InstanceState, OperationStrategy


def _labels(items: Iterable[Proxy]) -> tuple[str, ...]:
    return tuple(p.label for p in items)


def build_snapshot(
    plan: Plan,
    state: InstanceState,
    created: Sequence[Proxy],
    deleted: set[str],
    *,
    now: datetime,
    policy: InstancePolicy,
) -> InstanceSnapshot:
    """The fleet after the run's actions, as ``rolling status`` shows it."""
    remaining = [p for p in plan.observed if p.id not in deleted]
    pending = [p for p in remaining if p.id in plan.pending_ids] + list(created)
    by_id = {p.id: p for p in [*remaining, *created]}
    surge_old = {
        op.old_id
        for op in state.operations
        if op.strategy == OperationStrategy.SURGE and not op.old_deleted
    }
    return InstanceSnapshot(
        last_update=now,
        healthy_ips=_labels(p for p in remaining if p.id in plan.healthy_ids),
        pending_ips=_labels(p for p in pending if p.address),
        pending=len(pending),
        pending_recycle_ips=_labels(p for p in remaining if p.id in surge_old),
        recycling_ips=tuple(
            op.old_address or op.old_id
            for op in state.operations
            if op.old_id is not None and op.old_deleted
        ),
        unhealthy_ips=_labels(
            p for p in remaining if p.id not in plan.healthy_ids and p.id not in plan.pending_ids
        ),
        aged_ips=_labels(p for p in remaining if p.id in plan.aged_ids),
        deferred=plan.deferrals,
        in_flight=len(state.operations),
        effective_min_available=plan.effective_min_available,
        min_scaling=policy.min_scaling,
        strategy=str(policy.rolling.strategy),
        warnings=plan.warnings,
        probe_failures=plan.probe_failures,
        next_age_at=_next_age_at([*remaining, *created], policy, now),
        rollout=state.rollout,
        replacements={
            op.op_id: by_id[op.replacement_id].label
            for op in state.operations
            if op.replacement_id is not None and op.replacement_id in by_id
        },
    )


def _next_age_at(
    proxies: Sequence[Proxy], policy: InstancePolicy, now: datetime
) -> datetime | None:
    """When the next proxy that is not aged yet reaches AGE_LIMIT (``None``: none will)."""
    if not policy.age_limit:
        return None
    due = [
        p.created_at + policy.age_limit for p in proxies if p.created_at + policy.age_limit > now
    ]
    return min(due, default=None)


def failed_snapshot(
    previous: InstanceSnapshot | None, error: str, *, now: datetime
) -> InstanceSnapshot:
    """An instance whose inventory could not be read keeps its last counts and records why."""
    base = previous or InstanceSnapshot(last_update=now)
    return base._replace(last_error=error, last_error_at=now)
