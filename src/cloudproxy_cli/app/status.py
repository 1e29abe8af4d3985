"""The documents the CLI prints: rolling status (the spec's shape) and a reconcile run's report."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from cloudproxy_cli.core.errors import UsageError
from cloudproxy_cli.core.phase import aged_waiting, rollout_phase
from cloudproxy_cli.core.policy import EffectiveRolling, InstancePolicy, RollingPolicy
from cloudproxy_cli.core.state import EMPTY, InstanceSnapshot, State, encode_snapshot

if TYPE_CHECKING:
    # Only run reports need these (and the reconcile core behind them): `rolling status`,
    # which starts often and fast, imports none of them.
    from cloudproxy_cli.app.service import InstanceReport, RunReport
    from cloudproxy_cli.core.plan import ActionOutcome, CreateAction, DeleteAction


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class StatusView(NamedTuple):
    """What status documents are computed against: the clock, and the settings in force."""

    now: datetime
    rolling: RollingPolicy
    stale_after: timedelta = timedelta(seconds=300)
    progress_deadline: timedelta | None = timedelta(seconds=1800)
    min_scaling: Mapping[str, int] = EMPTY  # by instance key, from config

    def effective_min(self, key: str, snap: InstanceSnapshot | None) -> int:
        """The effective minimum under the knobs in force now (they may have changed since)."""
        scaling = self.min_scaling.get(key, snap.min_scaling if snap else 0)
        return InstancePolicy(self.rolling, min_scaling=scaling).effective_min_available()


def _seconds(delta: timedelta) -> int:
    return int(delta.total_seconds())


def _operations(state: State, key: str, snap: InstanceSnapshot | None, now: datetime) -> list[Any]:
    names = snap.replacements if snap else {}
    return [
        {
            "old": op.old_address or op.old_id,
            # The replacement by address, as everything else in status; its id alongside.
            "replacement": names.get(op.op_id, op.replacement_id),
            "replacement_id": op.replacement_id,
            "strategy": op.strategy,
            "old_deleted": op.old_deleted,
            "opened_at": iso(op.opened_at),
            "age_s": _seconds(now - op.opened_at),
        }
        for op in state.instance(key).operations
    ]


def _timing(snap: InstanceSnapshot | None, view: StatusView) -> dict[str, Any]:
    """How old the last run is (and whether that is stale), and when the next proxy ages."""
    if snap is None:
        return {"last_run_age_s": None, "stale": False, "next_recycle_in_s": None}
    age = view.now - snap.last_update
    due = snap.next_age_at
    return {
        "last_run_age_s": _seconds(age),
        "stale": age > view.stale_after,
        "next_recycle_in_s": _seconds(due - view.now) if due and due > view.now else None,
    }


def _phase_doc(
    snap: InstanceSnapshot | None, state: State, key: str, view: StatusView
) -> dict[str, Any]:
    inst = state.instance(key)
    phase = rollout_phase(
        snap, inst, view.rolling, now=view.now, progress_deadline=view.progress_deadline
    )
    rollout = inst.rollout
    return {
        "phase": str(phase.phase),
        "phase_text": phase.text,
        "phase_reasons": list(phase.reasons),
        "rollout": None
        if rollout is None
        else {
            "started_at": iso(rollout.started_at),
            "last_progress_at": iso(rollout.last_progress_at),
            "completed": phase.completed,
            "total": phase.total,
        },
    }


def snapshot_doc(
    snap: InstanceSnapshot | None, state: State, key: str, view: StatusView
) -> dict[str, Any]:
    """One entry of ``status``: the spec's fields first, then our extras."""
    snap_doc = encode_snapshot(snap or InstanceSnapshot(last_update=view.now))
    if snap is None:
        snap_doc["last_update"] = None  # never reconciled yet
    waiting = aged_waiting(snap) if snap else ()
    doc: dict[str, Any] = {
        "healthy": len(snap_doc["healthy_ips"]),
        "pending": snap_doc["pending"],
        "pending_recycle": len(snap_doc["pending_recycle_ips"]),
        "recycling": len(snap_doc["recycling_ips"]),
        "last_update": snap_doc["last_update"],
        "healthy_ips": snap_doc["healthy_ips"],
        "pending_recycle_ips": snap_doc["pending_recycle_ips"],
        "recycling_ips": snap_doc["recycling_ips"],
    }
    doc.update(_phase_doc(snap, state, key, view))
    doc.update(
        {
            "unhealthy": len(snap_doc["unhealthy_ips"]),
            "aged_waiting": len(waiting),
            **_timing(snap, view),
            "in_flight": snap_doc["in_flight"],
            "operations": _operations(state, key, snap, view.now),
            "pending_ips": snap_doc["pending_ips"],
            "unhealthy_ips": snap_doc["unhealthy_ips"],
            "unhealthy_reasons": [
                {"address": f["address"], "kind": f["kind"], "reason": f["detail"]}
                for f in snap_doc["probe_failures"]
            ],
            "aged_ips": snap_doc["aged_ips"],
            "aged_waiting_ips": list(waiting),
            "deferred": [
                {"address": d["address"] or d["proxy_id"], "reason": d["reason"]}
                for d in snap_doc["deferred"]
            ],
            "min_available": view.rolling.min_available,
            "effective_min_available": view.effective_min(key, snap),
            "min_scaling": view.min_scaling.get(key, snap_doc["min_scaling"]),
            "strategy": snap_doc["strategy"],
            "last_error": snap_doc["last_error"],
            "last_error_at": snap_doc["last_error_at"],
            "warnings": snap_doc["warnings"],
        }
    )
    return doc


def status_document(
    state: State,
    rolling: EffectiveRolling,
    instance_keys: Sequence[str],
    *,
    view: StatusView,
    provider: str | None = None,
    instance: str | None = None,
) -> dict[str, Any]:
    """`cloudproxy rolling status --json`: metadata, message, config and status per instance.

    ``instance_keys`` are the enabled instances; instances with a snapshot in the state are
    shown too. An unknown provider or instance is a ``UsageError``.
    """
    keys = sorted(set(instance_keys) | set(state.instances))
    if provider is not None:
        keys = [k for k in keys if k.split("/", 1)[0] == provider]
        if not keys:
            raise UsageError(f"unknown provider {provider!r}: no enabled instance and no state")
    if instance is not None:
        keys = [k for k in keys if k.split("/", 1)[1] == instance]
        if not keys:
            raise UsageError(f"unknown provider instance {provider}/{instance}")
    policy = rolling.policy
    return {
        "metadata": {"request_id": str(uuid.uuid4()), "timestamp": iso(view.now)},
        "message": "Rolling deployment status retrieved successfully",
        "config": {
            "enabled": policy.enabled,
            "min_available": policy.min_available,
            "batch_size": policy.batch_size,
            "strategy": str(policy.strategy),
            "sources": rolling.sources,
            "stale_after_s": _seconds(view.stale_after),
            "progress_deadline_s": None
            if view.progress_deadline is None
            else _seconds(view.progress_deadline),
        },
        "status": {k: snapshot_doc(state.instance(k).snapshot, state, k, view) for k in keys},
    }


def _action_doc(
    action: CreateAction | DeleteAction, outcome: ActionOutcome | None
) -> dict[str, Any]:
    from cloudproxy_cli.core.plan import DeleteAction

    status = "planned" if outcome is None else ("done" if outcome.ok else "failed")
    if isinstance(action, DeleteAction):
        doc: dict[str, Any] = {
            "action": "delete",
            "proxy_id": action.proxy_id,
            "address": action.address,
            "kind": str(action.kind),
            "reason": action.reason,
        }
    else:
        created = outcome.created if outcome else None
        doc = {
            "action": "create",
            "proxy_id": created.id if created else None,
            "address": created.address if created else None,
            "kind": "replacement" if action.for_operation else "scale",
            "reason": action.reason,
        }
    doc["status"] = status
    if outcome is not None and not outcome.ok:
        doc["error"] = outcome.error
    return doc


def counts_after(report: InstanceReport, policy: InstancePolicy, now: datetime) -> dict[str, int]:
    """The fleet after the run: from the snapshot, or (dry run) as if the plan had succeeded."""
    from cloudproxy_cli.core.model import Proxy
    from cloudproxy_cli.core.outcomes import apply_outcomes
    from cloudproxy_cli.core.plan import ActionOutcome

    snap = report.snapshot
    if snap is None and report.plan is not None:
        plan = report.plan
        assumed = [ActionOutcome(d, ok=True) for d in plan.deletes] + [
            ActionOutcome(c, ok=True, created=Proxy(f"planned-{n}", now))
            for n, c in enumerate(plan.creates)
        ]
        snap = apply_outcomes(plan, assumed, now=now, policy=policy)[0].snapshot
    if snap is None:
        return {}
    return {
        "healthy": len(snap.healthy_ips),
        "unhealthy": len(snap.unhealthy_ips),
        "pending": snap.pending,
        "pending_recycle": len(snap.pending_recycle_ips),
        "recycling": len(snap.recycling_ips),
        "in_flight": snap.in_flight,
    }


def run_document(
    report: RunReport,
    policies: dict[str, InstancePolicy],
    exit_code: int,
    degraded: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """`cloudproxy reconcile --json`: per instance the actions, deferrals, errors and counts."""
    instances: dict[str, Any] = {}
    for inst in report.instances:
        key = str(inst.key)
        plan = inst.plan
        # The shell executes every action in this order, one outcome each (none in a dry run).
        planned: list[CreateAction | DeleteAction] = (
            [] if plan is None else [*plan.deletes, *plan.creates]
        )
        outcomes: list[ActionOutcome | None] = [*inst.outcomes]
        outcomes += [None] * (len(planned) - len(outcomes))
        actions = [_action_doc(a, o) for a, o in zip(planned, outcomes, strict=True)]
        instances[key] = {
            "ok": not inst.failed,
            "errors": inst.errors(),
            "actions": actions,
            "deferred": []
            if plan is None
            else [{"address": d.address or d.proxy_id, "reason": d.reason} for d in plan.deferrals],
            "warnings": [] if plan is None else list(plan.warnings),
            "log": list(inst.log),
            "counts": counts_after(inst, policies[key], report.started_at),
            "degraded": list((degraded or {}).get(key, ())),
        }
    return {
        "dry_run": report.dry_run,
        "started_at": iso(report.started_at),
        "exit_code": exit_code,
        "state_warning": report.state_warning,
        "instances": instances,
    }
