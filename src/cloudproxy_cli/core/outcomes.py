"""Folding what the shell really did (each action's outcome) into the next state."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from cloudproxy_cli.core import messages
from cloudproxy_cli.core.model import Proxy
from cloudproxy_cli.core.phase import advance_rollout
from cloudproxy_cli.core.plan import ActionOutcome, CreateAction, DeleteAction, Plan
from cloudproxy_cli.core.policy import InstancePolicy
from cloudproxy_cli.core.snapshot import build_snapshot
from cloudproxy_cli.core.state import InstanceState, ProxyRecord, RecycleOperation


def apply_outcomes(
    plan: Plan,
    outcomes: Iterable[ActionOutcome],
    *,
    now: datetime,
    policy: InstancePolicy,
    update_snapshot: bool = True,
) -> tuple[InstanceState, tuple[str, ...]]:
    """Fold what really happened into the next state. Returns the state and extra log lines.

    A created proxy is recorded (booting) and attached to its operation; a successful delete
    drops the proxy's record, marks its operation's old proxy gone and closes the operation it
    completes. Failed actions change nothing, so the next run retries them.
    """
    records = dict(plan.next_state.records)
    ops = {op.op_id: op for op in plan.next_state.operations}
    log: list[str] = []
    created: list[Proxy] = []
    deleted: set[str] = set()
    completed = 0
    for outcome in outcomes:
        action = outcome.action
        if not outcome.ok:
            continue
        if isinstance(action, CreateAction):
            if outcome.created is not None:
                created.append(outcome.created)
                _fold_create(action, outcome.created, records, ops, now=now)
            continue
        deleted.add(action.proxy_id)
        closed = _fold_delete(action, records, ops)
        if closed is not None:
            completed += closed.old_id is not None
            log.append(messages.completed(closed.old_address or str(closed.old_id), plan.key))
    # Still a rollout while a recycle is open or an aged proxy is left.
    active = bool(ops) or bool(plan.aged_ids - deleted)
    state = InstanceState(
        records=records,
        operations=tuple(ops.values()),
        firewall_id=plan.next_state.firewall_id,
        rollout=advance_rollout(
            plan.next_state.rollout, active=active, completed=completed, now=now
        ),
        firewall_checked_at=plan.next_state.firewall_checked_at,
    )
    snapshot = plan.next_state.snapshot
    if update_snapshot:
        snapshot = build_snapshot(plan, state, created, deleted, now=now, policy=policy)
    return state._replace(snapshot=snapshot), tuple(log)


def _fold_create(
    action: CreateAction,
    proxy: Proxy,
    records: dict[str, ProxyRecord],
    ops: dict[str, RecycleOperation],
    *,
    now: datetime,
) -> None:
    records[proxy.id] = ProxyRecord(proxy.id, first_seen_at=now)
    if action.for_operation in ops:
        op = ops[action.for_operation]
        ops[op.op_id] = op._replace(replacement_id=proxy.id)


def _fold_delete(
    action: DeleteAction,
    records: dict[str, ProxyRecord],
    ops: dict[str, RecycleOperation],
) -> RecycleOperation | None:
    """Forget the deleted proxy; returns the operation its deletion closes, if any."""
    records.pop(action.proxy_id, None)
    for op_id, op in list(ops.items()):
        if op.old_id == action.proxy_id:
            op = op._replace(old_deleted=True)
        if op.replacement_id == action.proxy_id:
            op = op._replace(replacement_id=None)
        ops[op_id] = op
    if action.closes_operation in ops:
        return ops.pop(action.closes_operation)
    return None
