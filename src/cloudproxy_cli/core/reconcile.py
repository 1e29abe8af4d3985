"""The reconcile rules of ``behaviour.md`` as pure functions: observe → plan, then fold outcomes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cloudproxy_cli.core.model import InstanceKey, ProbeResult, Proxy
from cloudproxy_cli.core.plan import (
    ActionOutcome,
    CreateAction,
    DeleteAction,
    DeleteKind,
    Plan,
)
from cloudproxy_cli.core.policy import InstancePolicy, Strategy
from cloudproxy_cli.core.state import (
    Deferral,
    InstanceSnapshot,
    InstanceState,
    ProxyRecord,
    RecycleOperation,
)

ADOPTED = "adopted"


def _secs(delta: timedelta) -> int:
    return int(delta.total_seconds())


def _name(proxy: Proxy) -> str:
    return proxy.address or proxy.id


def is_aged(proxy: Proxy, policy: InstancePolicy, now: datetime) -> bool:
    """``AGE_LIMIT > 0`` and ``now - created_at > AGE_LIMIT``."""
    limit = policy.age_limit
    return bool(limit) and limit is not None and now - proxy.created_at > limit


@dataclass
class _Run:
    """Working memory of one ``reconcile`` call (never escapes it)."""

    key: InstanceKey
    policy: InstancePolicy
    now: datetime
    removed: dict[str, DeleteAction]
    deferrals: list[Deferral]
    warnings: list[str]
    log: list[str]

    def remove(self, proxy: Proxy, kind: DeleteKind, reason: str) -> None:
        if proxy.id not in self.removed:
            self.removed[proxy.id] = DeleteAction(proxy.id, proxy.address, kind, reason)

    def defer(self, proxy: Proxy, reason: str) -> None:
        self.deferrals.append(Deferral(proxy.id, proxy.address, reason))
        self.log.append(
            f"Rolling deployment: Deferred recycling {self.key} "
            f"{self.policy.resource_noun} -> {_name(proxy)} ({reason})"
        )


def reconcile(
    key: InstanceKey,
    observed: Sequence[Proxy],
    health: Mapping[str, ProbeResult],
    state: InstanceState,
    policy: InstancePolicy,
    *,
    now: datetime,
) -> Plan:
    """Decide one run for one instance. Pure: no I/O, ``now`` is given.

    Guarantees (the rules of ``behaviour.md``):
    - with rolling on, a recycle is opened only while fewer than ``batch_size`` are open, and a
      healthy proxy is removed for age only if ``available - 1 >= effective minimum``;
      operations stay open (in flight) until the replacement is healthy, across runs;
    - aged proxies are considered oldest first; a deferred proxy keeps serving;
    - a proxy that is not aged and healthy is never removed except as surplus over MIN_SCALING;
    - an established proxy is removed for health only after ``failures_before_replace``
      failed runs in a row, and nothing is removed for health while a large share fail together;
    - the plan depends on the set of observed proxies, not on their order.
    """
    proxies = sorted(observed, key=lambda p: (p.created_at, p.id))
    by_id = {p.id: p for p in proxies}
    healthy = frozenset(
        p.id for p in proxies if p.ip is not None and (r := health.get(p.id)) and r.ok
    )
    run = _Run(key, policy, now, {}, [], [], [])

    def age(p: Proxy) -> timedelta:
        return now - p.created_at

    # -- health history -------------------------------------------------------------------------
    records: dict[str, ProxyRecord] = {}
    first_sight: set[str] = set()
    for p in proxies:
        rec = state.records.get(p.id)
        if rec is None:
            first_sight.add(p.id)
            # Without history we cannot tell a booting proxy from a broken one; an old one is
            # treated as established so that it must fail several runs before we remove it.
            rec = ProxyRecord(p.id, first_seen_at=now, established=age(p) > policy.pending_timeout)
        if p.id in healthy:
            rec = replace(rec, established=True, consecutive_failures=0, last_healthy_at=now)
        else:
            rec = replace(rec, consecutive_failures=rec.consecutive_failures + 1)
        records[p.id] = rec

    pending = frozenset(
        p.id
        for p in proxies
        if p.id not in healthy
        and not records[p.id].established
        and age(p) <= policy.pending_timeout
    )
    stuck = [
        p
        for p in proxies
        if p.id not in healthy and not records[p.id].established and p.id not in pending
    ]
    broken = [
        p
        for p in proxies
        if p.id not in healthy
        and records[p.id].established
        and records[p.id].consecutive_failures >= policy.failures_before_replace
    ]
    expected = [p for p in proxies if records[p.id].established or p.id not in pending]
    failing = [p for p in expected if p.id not in healthy]
    mass_failure = len(failing) >= policy.mass_failure_min_count and len(
        failing
    ) > policy.mass_failure_share * len(expected)
    if mass_failure:
        run.warnings.append(
            f"{len(failing)} of {len(expected)} proxies in {key} failed their health check at "
            "once: the prober or the network is the likely fault, so no proxy is removed for "
            "health and no unhealthy proxy is recycled this run"
        )

    # -- open operations ------------------------------------------------------------------------
    ops: list[RecycleOperation] = []
    retries: list[Proxy] = []
    for op in state.operations:
        old_present = op.old_id is not None and op.old_id in by_id
        replacement = op.replacement_id if op.replacement_id in by_id else None
        op = replace(
            op,
            old_deleted=op.old_deleted or (op.old_id is not None and not old_present),
            replacement_id=replacement,
        )
        if op.strategy == ADOPTED and replacement is None:
            continue  # the adopted proxy is gone: nothing left to wait for
        if replacement is not None and replacement in healthy:
            if op.old_id is None or op.old_deleted:
                _complete(run, op)
                continue
            # The replacement serves, so the old proxy (kept serving by surge) can go now.
            old = by_id[op.old_id]
            run.removed[old.id] = DeleteAction(
                old.id,
                old.address,
                DeleteKind.SURGE_COMPLETE,
                f"its replacement {_name(by_id[replacement])} is healthy",
                closes_operation=op.op_id,
            )
        elif op.strategy == Strategy.REPLACE and op.old_id in by_id and not op.old_deleted:
            # Selected in an earlier run but its deletion failed: retry it below, under the
            # same availability rule as a fresh selection (the fleet may have changed since).
            retries.append(by_id[op.old_id])
        ops.append(op)

    known_replacements = {op.replacement_id for op in ops if op.replacement_id}
    for p in proxies:
        if p.id in first_sight and p.id in pending and p.id not in known_replacements:
            # A booting proxy we have no record of (lost state, or a crash between create and
            # save) may be some recycle's replacement: count it as in flight until healthy.
            ops.append(RecycleOperation(f"adopted-{p.id}", now, ADOPTED, replacement_id=p.id))

    # -- stuck and broken proxies ---------------------------------------------------------------
    if not mass_failure:
        limit_s = _secs(policy.pending_timeout)
        for p in stuck:
            run.remove(
                p,
                DeleteKind.STUCK,
                f"never became healthy within PENDING_TIMEOUT ({limit_s} s; age {_secs(age(p))} s)",
            )
        for p in broken:
            detail = r.detail if (r := health.get(p.id)) else "no address"
            run.remove(
                p,
                DeleteKind.BROKEN,
                f"failed its health check {records[p.id].consecutive_failures} runs in a row "
                f"({detail})",
            )

    # -- age ------------------------------------------------------------------------------------
    aged = frozenset(p.id for p in proxies if is_aged(p, policy, now))
    ops_old = {op.old_id for op in ops if op.old_id}
    candidates = [
        p
        for p in proxies
        if p.id in aged and p.id not in run.removed and p.id not in ops_old and p.id not in pending
    ]
    eff_min = policy.effective_min_available()
    rolling = policy.rolling
    if not rolling.enabled:
        for p in [*retries, *candidates]:
            run.remove(
                p,
                DeleteKind.AGED,
                f"aged {_secs(age(p))} s > AGE_LIMIT {_secs(policy.age_limit or timedelta())} s; "
                "rolling deployment is off, so every aged proxy is recycled at once",
            )
    else:
        if candidates and policy.min_available_adjusted():
            run.warnings.append(
                f"ROLLING_MIN_AVAILABLE ({rolling.min_available}) is not below MIN_SCALING "
                f"({policy.min_scaling}) for {key}: using {eff_min} so that recycling can progress"
            )
        available = sum(1 for p in proxies if p.id in healthy and p.id not in run.removed)
        existing = len(proxies) - len(run.removed)
        for p in retries:
            if p.id in run.removed:
                continue
            retry = "retrying the deletion of a proxy selected for recycling"
            if p.id not in healthy and not mass_failure:
                run.remove(p, DeleteKind.RECYCLE, f"{retry} (unhealthy)")
            elif p.id in healthy and available - 1 >= eff_min:
                stay = f"available after: {available - 1} (minimum {eff_min})"
                run.remove(p, DeleteKind.RECYCLE, f"{retry}; {stay}")
                available -= 1
            else:
                run.defer(
                    p,
                    f"{retry} would reduce available proxies below minimum "
                    f"({available - 1} < {eff_min})",
                )
        for p in candidates:
            in_flight = len(ops)
            is_healthy = p.id in healthy
            if in_flight >= rolling.batch_size:
                run.log.append(
                    f"Rolling deployment: Cannot recycle {_name(p)} for {key}. Batch size reached "
                    f"({in_flight}/{rolling.batch_size} proxies recycling)"
                )
                run.defer(p, f"batch full: already recycling {in_flight}/{rolling.batch_size}")
                continue
            if rolling.strategy == Strategy.SURGE:
                if policy.max_scaling is not None and existing >= policy.max_scaling:
                    run.defer(p, f"MAX_SCALING ({policy.max_scaling}) leaves no room to surge")
                    continue
                existing += 1  # its replacement is created before it goes
            elif not is_healthy and mass_failure:
                run.defer(p, "health checks are failing across the instance; not recycling "
                             "a proxy whose health is in doubt")  # fmt: skip
                continue
            elif not is_healthy:
                run.remove(p, DeleteKind.RECYCLE, "aged and failing its health check, so "
                           "removing it costs no availability")  # fmt: skip
            elif available - 1 >= eff_min:
                run.remove(
                    p,
                    DeleteKind.RECYCLE,
                    f"aged; available after: {available - 1} (minimum {eff_min})",
                )
                available -= 1
            else:
                run.log.append(
                    f"Rolling deployment: Cannot recycle {_name(p)} for {key}. Would reduce "
                    f"available proxies below minimum ({available - 1} < {eff_min})"
                )
                run.defer(
                    p,
                    f"would reduce available proxies below minimum ({available - 1} < {eff_min})",
                )
                continue
            ops.append(
                RecycleOperation(
                    op_id=p.id,
                    opened_at=now,
                    strategy=str(rolling.strategy),
                    old_id=p.id,
                    old_address=p.address,
                    old_created_at=p.created_at,
                )
            )
            run.log.append(
                f"Rolling deployment: Marked {_name(p)} for recycling in {key}. "
                f"Currently recycling {len(ops)}/{rolling.batch_size} proxies"
            )

    # -- scale to MIN_SCALING -------------------------------------------------------------------
    creates: list[CreateAction] = []
    serving_old = {
        op.old_id
        for op in ops
        if op.strategy == Strategy.SURGE and op.old_id in by_id and op.old_id not in run.removed
    }
    counted = [p for p in proxies if p.id not in run.removed and p.id not in serving_old]
    deficit = policy.min_scaling - len(counted)
    # A replacement being deleted this run (stuck) no longer serves its operation.
    ops = [
        replace(op, replacement_id=None) if op.replacement_id in run.removed else op for op in ops
    ]
    if deficit > 0:
        n = deficit
        if policy.max_scaling is not None:
            room = policy.max_scaling - (len(proxies) - len(run.removed))
            n = max(0, min(deficit, room))
            if n < deficit:
                run.warnings.append(
                    f"MAX_SCALING ({policy.max_scaling}) for {key}: creating {n} of the "
                    f"{deficit} proxies needed to reach MIN_SCALING ({policy.min_scaling})"
                )
        waiting = [op for op in ops if op.replacement_id is None and op.strategy != ADOPTED]
        for i in range(n):
            op_for = waiting[i] if i < len(waiting) else None
            if op_for is not None:
                reason = f"replacement for {op_for.old_address or op_for.old_id}"
            else:
                reason = f"below MIN_SCALING ({len(counted) + i}/{policy.min_scaling})"
            creates.append(CreateAction(reason, op_for.op_id if op_for else None))
    elif deficit < 0:
        # Unhealthy first, then the oldest.
        order = sorted(counted, key=lambda p: (p.id in healthy, p.created_at, p.id))
        for p in order[:-deficit]:
            run.remove(
                p, DeleteKind.SURPLUS, f"above MIN_SCALING ({len(counted)}/{policy.min_scaling})"
            )

    # Operations that will get no replacement (the fleet is at MIN_SCALING without one) close
    # once their old proxy is gone: already, by a delete planned under the rules above, or, for
    # surge, by deleting the old proxy now (surplus: the fleet is complete without it). A
    # replace operation whose retried delete was deferred stays open: availability first.
    assigned = {c.for_operation for c in creates if c.for_operation}
    still_open: list[RecycleOperation] = []
    for op in ops:
        if op.replacement_id is not None or op.op_id in assigned or op.strategy == ADOPTED:
            still_open.append(op)
            continue
        if op.old_deleted:
            _complete(run, op)
            continue
        remaining = by_id.get(op.old_id) if op.old_id is not None else None
        planned = run.removed.get(remaining.id) if remaining is not None else None
        if remaining is not None and planned is not None:
            run.removed[remaining.id] = replace(planned, closes_operation=op.op_id)
        elif remaining is not None and op.strategy == Strategy.SURGE:
            run.removed[remaining.id] = DeleteAction(
                remaining.id,
                remaining.address,
                DeleteKind.SURPLUS,
                f"no replacement needed: MIN_SCALING ({policy.min_scaling}) is met without it",
                closes_operation=op.op_id,
            )
        still_open.append(op)

    return Plan(
        key=key,
        observed=tuple(proxies),
        healthy_ids=healthy,
        creates=tuple(creates),
        deletes=tuple(run.removed.values()),
        # A deferred proxy may still go this run as surplus; then it is not "deferred".
        deferrals=tuple(d for d in run.deferrals if d.proxy_id not in run.removed),
        next_state=InstanceState(
            records=records,
            operations=tuple(still_open),
            snapshot=state.snapshot,
            firewall_id=state.firewall_id,
        ),
        warnings=tuple(run.warnings),
        log=tuple(run.log),
        effective_min_available=eff_min,
        aged_ids=aged,
        pending_ids=pending,
    )


def _complete(run: _Run, op: RecycleOperation) -> None:
    if op.old_id is not None:
        run.log.append(
            f"Rolling deployment: Completed recycling {op.old_address or op.old_id} in {run.key}"
        )


def manual_delete_plan(
    key: InstanceKey, proxy: Proxy, state: InstanceState, policy: InstancePolicy
) -> Plan:
    """``cloudproxy destroy``: delete one proxy now, bypassing the rolling rules."""
    return Plan(
        key=key,
        observed=(proxy,),
        healthy_ids=frozenset(),
        creates=(),
        deletes=(DeleteAction(proxy.id, proxy.address, DeleteKind.MANUAL, "destroyed by request"),),
        deferrals=(),
        next_state=state,
        effective_min_available=policy.effective_min_available(),
    )


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
    for outcome in outcomes:
        action = outcome.action
        if not outcome.ok:
            continue
        if isinstance(action, CreateAction):
            proxy = outcome.created
            if proxy is None:
                continue
            created.append(proxy)
            records[proxy.id] = ProxyRecord(proxy.id, first_seen_at=now)
            if action.for_operation in ops:
                op = ops[action.for_operation]
                ops[op.op_id] = replace(op, replacement_id=proxy.id)
            continue
        deleted.add(action.proxy_id)
        records.pop(action.proxy_id, None)
        for op_id, op in list(ops.items()):
            if op.old_id == action.proxy_id:
                op = replace(op, old_deleted=True)
            if op.replacement_id == action.proxy_id:
                op = replace(op, replacement_id=None)
            ops[op_id] = op
        if action.closes_operation in ops:
            op = ops.pop(action.closes_operation)
            log.append(
                f"Rolling deployment: Completed recycling {op.old_address or op.old_id} "
                f"in {plan.key}"
            )
    state = InstanceState(
        records=records,
        operations=tuple(ops.values()),
        firewall_id=plan.next_state.firewall_id,
    )
    snapshot = plan.next_state.snapshot
    if update_snapshot:
        snapshot = build_snapshot(plan, state, created, deleted, now=now, policy=policy)
    return replace(state, snapshot=snapshot), tuple(log)


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

    def addrs(items: Iterable[Proxy]) -> tuple[str, ...]:
        return tuple(_name(p) for p in items)

    pending = [p for p in remaining if p.id in plan.pending_ids] + list(created)
    surge_old = {
        op.old_id for op in state.operations if op.strategy == Strategy.SURGE and not op.old_deleted
    }
    return InstanceSnapshot(
        last_update=now,
        healthy_ips=addrs(p for p in remaining if p.id in plan.healthy_ids),
        pending_ips=addrs(p for p in pending if p.address),
        pending=len(pending),
        pending_recycle_ips=addrs(p for p in remaining if p.id in surge_old),
        recycling_ips=tuple(
            op.old_address or op.old_id
            for op in state.operations
            if op.old_id is not None and op.old_deleted
        ),
        unhealthy_ips=addrs(
            p for p in remaining if p.id not in plan.healthy_ids and p.id not in plan.pending_ids
        ),
        aged_ips=addrs(p for p in remaining if p.id in plan.aged_ids),
        deferred=plan.deferrals,
        in_flight=len(state.operations),
        effective_min_available=plan.effective_min_available,
        min_scaling=policy.min_scaling,
        strategy=str(policy.rolling.strategy),
        warnings=plan.warnings,
    )


def failed_snapshot(
    previous: InstanceSnapshot | None, error: str, *, now: datetime
) -> InstanceSnapshot:
    """An instance whose inventory could not be read keeps its last counts and records why."""
    base = previous or InstanceSnapshot(last_update=now)
    return replace(base, last_error=error, last_error_at=now)
