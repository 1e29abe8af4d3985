"""The reconcile rules of ``behaviour.md`` as pure functions: observe → plan, one step per rule."""

# ``reconcile`` runs the steps below in order. Each reads the ``Fleet`` (what was observed)
# and records what it decides in the call's ``RunDecisions``; neither escapes the call.

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from cloudproxy_cli.core import messages
from cloudproxy_cli.core.model import InstanceKey, ProbeKind, ProbeResult, Proxy
from cloudproxy_cli.core.phase import advance_rollout
from cloudproxy_cli.core.plan import CreateAction, DeleteAction, DeleteKind, Plan
from cloudproxy_cli.core.policy import InstancePolicy, Strategy
from cloudproxy_cli.core.state import (
    Deferral,
    InstanceState,
    OperationStrategy,
    ProbeFailure,
    ProxyRecord,
    RecycleOperation,
)


def is_aged(proxy: Proxy, policy: InstancePolicy, now: datetime) -> bool:
    """``AGE_LIMIT > 0`` and ``now - created_at > AGE_LIMIT``."""
    limit = policy.age_limit
    return bool(limit) and limit is not None and now - proxy.created_at > limit


class Fleet(NamedTuple):
    """What this run observed of one instance, with the health history brought up to date."""

    proxies: tuple[Proxy, ...]  # oldest first, so that the plan does not depend on list order
    by_id: Mapping[str, Proxy]
    health: Mapping[str, ProbeResult]
    healthy: frozenset[str]
    records: Mapping[str, ProxyRecord]
    first_sight: frozenset[str]  # proxies this run sees without any history
    pending: frozenset[str]  # booting: not yet healthy, still within PENDING_TIMEOUT
    aged: frozenset[str]
    mass_failure: bool = False


@dataclass
class RunDecisions:
    """The decisions of one ``reconcile`` call so far, in the order they were taken."""

    key: InstanceKey
    policy: InstancePolicy
    now: datetime
    removed: dict[str, DeleteAction] = field(default_factory=dict)
    deferrals: list[Deferral] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    caps: list[str] = field(default_factory=list)  # caps that held back a create, once each

    def cap_reached(self, setting: str, warning: str) -> None:
        if setting not in self.caps:
            self.caps.append(setting)
            self.warnings.append(warning)

    intents: list[str] = field(default_factory=list)  # the log as a dry run words it

    def note(self, line: str, intent: str) -> None:
        """One event for the log: in the spec's words, and as a dry run words it."""
        self.log.append(line)
        self.intents.append(intent)

    def age(self, proxy: Proxy) -> timedelta:
        return self.now - proxy.created_at

    def remove(self, proxy: Proxy, kind: DeleteKind, reason: str) -> None:
        if proxy.id not in self.removed:
            self.removed[proxy.id] = DeleteAction(proxy.id, proxy.address, kind, reason)

    def defer(self, proxy: Proxy, reason: str) -> None:
        self.deferrals.append(Deferral(proxy.id, proxy.address, reason))
        noun = self.policy.resource_noun
        self.note(
            messages.deferred(self.key, noun, proxy.label, reason),
            messages.would_defer(self.key, noun, proxy.label, reason),
        )

    def complete(self, op: RecycleOperation) -> None:
        if op.old_id is not None:
            name = op.old_address or op.old_id
            self.note(messages.completed(name, self.key), messages.would_complete(name, self.key))


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
    run = RunDecisions(key, policy, now)
    fleet = health_history(observed, health, state, policy, now=now)
    fleet = detect_mass_failure(run, fleet)
    detect_rejected_credentials(run, fleet)
    ops, retries = carry_operations(run, fleet, state.operations)
    if not fleet.mass_failure:
        remove_unhealthy(run, fleet)
    ops = select_recycles(run, fleet, ops, retries)
    creates, ops = scale(run, fleet, ops)
    still_open = close_operations(run, fleet, ops, creates)
    deletes = tuple(run.removed.values())
    return Plan(
        key=key,
        observed=fleet.proxies,
        healthy_ids=fleet.healthy,
        creates=creates,
        deletes=deletes,
        # A deferred proxy may still go this run as surplus; then it is not "deferred".
        deferrals=tuple(d for d in run.deferrals if d.proxy_id not in run.removed),
        next_state=InstanceState(
            records=fleet.records,
            operations=still_open,
            snapshot=state.snapshot,
            firewall_id=state.firewall_id,
            # Recycles that completed in this plan; those its deletes complete count later.
            rollout=advance_rollout(
                state.rollout, active=True, completed=_completed(state, still_open), now=now
            ),
            firewall_checked_at=state.firewall_checked_at,
        ),
        warnings=tuple(run.warnings),
        log=tuple(run.log),
        intents=dry_run_log(run, deletes, creates),
        effective_min_available=policy.effective_min_available(),
        aged_ids=fleet.aged,
        pending_ids=fleet.pending,
        probe_failures=probe_failures(fleet),
        caps_reached=tuple(run.caps),
    )


def dry_run_log(
    run: RunDecisions, deletes: Sequence[DeleteAction], creates: Sequence[CreateAction]
) -> tuple[str, ...]:
    """What a dry run logs: the run's events as intentions, then each action it would take."""
    noun = run.policy.resource_noun
    return (
        *run.intents,
        *(messages.would_delete(d.address or d.proxy_id, run.key, d.reason) for d in deletes),
        *(messages.would_create(noun, run.key, c.reason) for c in creates),
    )


def _completed(state: InstanceState, still_open: Sequence[RecycleOperation]) -> int:
    open_ids = {op.op_id for op in still_open}
    return sum(1 for op in state.operations if op.old_id is not None and op.op_id not in open_ids)


def probe_failures(fleet: Fleet) -> tuple[ProbeFailure, ...]:
    """Why each probed proxy that failed did, oldest proxy first."""
    return tuple(
        ProbeFailure(p.label, str(r.reason_kind), r.detail)
        for p in fleet.proxies
        if (r := fleet.health.get(p.id)) is not None and not r.ok
    )


# -- health history -----------------------------------------------------------------------------


def health_history(
    observed: Sequence[Proxy],
    health: Mapping[str, ProbeResult],
    state: InstanceState,
    policy: InstancePolicy,
    *,
    now: datetime,
) -> Fleet:
    """The observed fleet, oldest first, with each proxy's record updated by this run's probe."""
    proxies = tuple(sorted(observed, key=lambda p: (p.created_at, p.id)))
    healthy = frozenset(
        p.id for p in proxies if p.ip is not None and (r := health.get(p.id)) and r.ok
    )
    records: dict[str, ProxyRecord] = {}
    first_sight: set[str] = set()
    for p in proxies:
        rec = state.records.get(p.id)
        if rec is None:
            first_sight.add(p.id)
            # Without history we cannot tell a booting proxy from a broken one; an old one is
            # treated as established so that it must fail several runs before we remove it.
            established = now - p.created_at > policy.pending_timeout
            rec = ProxyRecord(p.id, first_seen_at=now, established=established)
        if p.id in healthy:
            rec = rec._replace(established=True, consecutive_failures=0, last_healthy_at=now)
        else:
            rec = rec._replace(consecutive_failures=rec.consecutive_failures + 1)
        records[p.id] = rec
    pending = frozenset(
        p.id
        for p in proxies
        if p.id not in healthy
        and not records[p.id].established
        and now - p.created_at <= policy.pending_timeout
    )
    return Fleet(
        proxies=proxies,
        by_id={p.id: p for p in proxies},
        health=health,
        healthy=healthy,
        records=records,
        first_sight=frozenset(first_sight),
        pending=pending,
        aged=frozenset(p.id for p in proxies if is_aged(p, policy, now)),
    )


# -- mass failure -------------------------------------------------------------------------------


def detect_mass_failure(run: RunDecisions, fleet: Fleet) -> Fleet:
    """Many proxies that should answer failing at once point at the prober or the network."""
    policy = run.policy
    expected = [
        p for p in fleet.proxies if fleet.records[p.id].established or p.id not in fleet.pending
    ]
    failing = [p for p in expected if p.id not in fleet.healthy]
    enough = len(failing) >= policy.mass_failure_min_count
    mass_failure = enough and len(failing) > policy.mass_failure_share * len(expected)
    if mass_failure:
        run.warnings.append(messages.mass_failure(len(failing), len(expected), run.key))
    return fleet._replace(mass_failure=mass_failure)


def detect_rejected_credentials(run: RunDecisions, fleet: Fleet) -> None:
    """Every probed proxy (two or more) answering 401/407 means our credentials changed."""
    probed = [r for p in fleet.proxies if (r := fleet.health.get(p.id)) is not None]
    if len(probed) >= 2 and all(r.reason_kind == ProbeKind.AUTH for r in probed):
        run.warnings.append(messages.credentials_rejected(len(probed), run.key))


# -- carry operations ---------------------------------------------------------------------------


def carry_operations(
    run: RunDecisions, fleet: Fleet, operations: Sequence[RecycleOperation]
) -> tuple[list[RecycleOperation], list[Proxy]]:
    """The operations still open after what this run observed, and the old proxies of replace
    operations whose deletion failed earlier (to retry). Adopts unknown booting proxies."""
    ops: list[RecycleOperation] = []
    retries: list[Proxy] = []
    for op in operations:
        op = _observe_operation(op, fleet)
        replacement = op.replacement_id
        if op.strategy == OperationStrategy.ADOPTED and replacement is None:
            continue  # the adopted proxy is gone: nothing left to wait for
        if replacement is not None and replacement in fleet.healthy:
            if op.old_id is None or op.old_deleted:
                run.complete(op)
                continue
            # The replacement serves, so the old proxy (kept serving by surge) can go now.
            old = fleet.by_id[op.old_id]
            run.removed[old.id] = DeleteAction(
                old.id,
                old.address,
                DeleteKind.SURGE_COMPLETE,
                messages.replacement_healthy(fleet.by_id[replacement].label),
                closes_operation=op.op_id,
            )
        elif (
            op.strategy == OperationStrategy.REPLACE
            and op.old_id is not None
            and op.old_id in fleet.by_id
            and not op.old_deleted
        ):
            # Selected in an earlier run but its deletion failed: retry it below, under the
            # same availability rule as a fresh selection (the fleet may have changed since).
            retries.append(fleet.by_id[op.old_id])
        ops.append(op)
    return ops + _adopt(fleet, ops, now=run.now), retries


def _observe_operation(op: RecycleOperation, fleet: Fleet) -> RecycleOperation:
    """Bring an operation up to date: is its old proxy gone, does its replacement still exist?"""
    old_present = op.old_id is not None and op.old_id in fleet.by_id
    return op._replace(
        old_deleted=op.old_deleted or (op.old_id is not None and not old_present),
        replacement_id=op.replacement_id if op.replacement_id in fleet.by_id else None,
    )


def _adopt(
    fleet: Fleet, ops: Sequence[RecycleOperation], *, now: datetime
) -> list[RecycleOperation]:
    # A booting proxy we have no record of (lost state, or a crash between create and save)
    # may be some recycle's replacement: count it as in flight until it is healthy.
    known_replacements = {op.replacement_id for op in ops if op.replacement_id}
    return [
        RecycleOperation(f"adopted-{p.id}", now, OperationStrategy.ADOPTED, replacement_id=p.id)
        for p in fleet.proxies
        if p.id in fleet.first_sight and p.id in fleet.pending and p.id not in known_replacements
    ]


# -- remove unhealthy ---------------------------------------------------------------------------


def remove_unhealthy(run: RunDecisions, fleet: Fleet) -> None:
    """Stuck proxies (never healthy within PENDING_TIMEOUT) and broken ones (failed too often)."""
    policy = run.policy
    for p in fleet.proxies:
        if (
            p.id not in fleet.healthy
            and not fleet.records[p.id].established
            and p.id not in fleet.pending
        ):
            run.remove(p, DeleteKind.STUCK, messages.stuck(policy.pending_timeout, run.age(p)))
    for p in fleet.proxies:
        rec = fleet.records[p.id]
        if (
            p.id not in fleet.healthy
            and rec.established
            and rec.consecutive_failures >= policy.failures_before_replace
        ):
            detail = r.detail if (r := fleet.health.get(p.id)) else "no address"
            run.remove(p, DeleteKind.BROKEN, messages.broken(rec.consecutive_failures, detail))


# -- select recycles ----------------------------------------------------------------------------


@dataclass
class _Budget:
    """Counts that each selection changes: healthy proxies left, and proxies that will exist."""

    available: int
    existing: int
    minimum: int


def select_recycles(
    run: RunDecisions, fleet: Fleet, ops: list[RecycleOperation], retries: Sequence[Proxy]
) -> list[RecycleOperation]:
    """Aged proxies to recycle, oldest first; returns the open operations with the new ones."""
    ops_old = {op.old_id for op in ops if op.old_id}
    candidates = [
        p
        for p in fleet.proxies
        if p.id in fleet.aged
        and p.id not in run.removed
        and p.id not in ops_old
        and p.id not in fleet.pending
    ]
    if not run.policy.rolling.enabled:
        _recycle_at_once(run, [*retries, *candidates])
        return ops
    return _rolling_select(run, fleet, ops, retries, candidates)


def _recycle_at_once(run: RunDecisions, proxies: Sequence[Proxy]) -> None:
    age_limit = run.policy.age_limit or timedelta()
    for p in proxies:
        run.remove(p, DeleteKind.AGED, messages.aged_rolling_off(run.age(p), age_limit))


def _rolling_select(
    run: RunDecisions,
    fleet: Fleet,
    ops: list[RecycleOperation],
    retries: Sequence[Proxy],
    candidates: Sequence[Proxy],
) -> list[RecycleOperation]:
    policy = run.policy
    rolling = policy.rolling
    eff_min = policy.effective_min_available()
    if candidates and policy.min_available_adjusted():
        run.warnings.append(
            messages.min_available_adjusted(
                rolling.min_available, policy.min_scaling, run.key, eff_min
            )
        )
    budget = _Budget(
        available=sum(
            1 for p in fleet.proxies if p.id in fleet.healthy and p.id not in run.removed
        ),
        existing=len(fleet.proxies) - len(run.removed),
        minimum=eff_min,
    )
    for p in retries:
        if p.id not in run.removed:
            _retry_deletion(run, fleet, p, budget)
    ops = list(ops)
    for p in candidates:
        if _select_candidate(run, fleet, p, len(ops), budget):
            ops.append(
                RecycleOperation(
                    op_id=p.id,
                    opened_at=run.now,
                    strategy=OperationStrategy(rolling.strategy),
                    old_id=p.id,
                    old_address=p.address,
                    old_created_at=p.created_at,
                )
            )
            run.note(
                messages.marked(p.label, run.key, len(ops), rolling.batch_size),
                messages.would_mark(p.label, run.key, len(ops), rolling.batch_size),
            )
    return ops


def _retry_deletion(run: RunDecisions, fleet: Fleet, p: Proxy, budget: _Budget) -> None:
    after = budget.available - 1
    if p.id not in fleet.healthy and not fleet.mass_failure:
        run.remove(p, DeleteKind.RECYCLE, messages.RETRY_UNHEALTHY)
    elif p.id in fleet.healthy and after >= budget.minimum:
        run.remove(p, DeleteKind.RECYCLE, messages.retry_delete(after, budget.minimum))
        budget.available -= 1
    else:
        run.defer(p, messages.retry_deferred(after, budget.minimum))


def _select_candidate(
    run: RunDecisions, fleet: Fleet, p: Proxy, in_flight: int, budget: _Budget
) -> bool:
    """Decide one aged proxy; true when a recycle operation opens for it."""
    policy = run.policy
    rolling = policy.rolling
    after = budget.available - 1
    if in_flight >= rolling.batch_size:
        run.note(
            messages.cannot_recycle_batch(p.label, run.key, in_flight, rolling.batch_size),
            messages.would_not_recycle_batch(p.label, run.key, in_flight, rolling.batch_size),
        )
        run.defer(p, messages.batch_full(in_flight, rolling.batch_size))
        return False
    if rolling.strategy == Strategy.SURGE:
        if policy.max_scaling is not None and budget.existing >= policy.max_scaling:
            run.defer(p, messages.no_room_to_surge(policy.max_scaling))
            run.cap_reached("MAX_SCALING", messages.surge_capped(policy.max_scaling, run.key))
            return False
        budget.existing += 1  # its replacement is created before it goes
        return True
    if p.id not in fleet.healthy:
        if fleet.mass_failure:
            run.defer(p, messages.HEALTH_IN_DOUBT)
            return False
        run.remove(p, DeleteKind.RECYCLE, messages.AGED_UNHEALTHY)
        return True
    if after >= budget.minimum:
        run.remove(p, DeleteKind.RECYCLE, messages.aged_delete(after, budget.minimum))
        budget.available -= 1
        return True
    run.note(
        messages.cannot_recycle_minimum(p.label, run.key, after, budget.minimum),
        messages.would_not_recycle_minimum(p.label, run.key, after, budget.minimum),
    )
    run.defer(p, messages.below_minimum(after, budget.minimum))
    return False


# -- scale to MIN_SCALING -----------------------------------------------------------------------


def scale(
    run: RunDecisions, fleet: Fleet, ops: Sequence[RecycleOperation]
) -> tuple[tuple[CreateAction, ...], list[RecycleOperation]]:
    """Creates up to MIN_SCALING (within MAX_SCALING), or surplus deletes above it."""
    policy = run.policy
    serving_old = {
        op.old_id
        for op in ops
        if op.strategy == OperationStrategy.SURGE
        and op.old_id in fleet.by_id
        and op.old_id not in run.removed
    }
    counted = [p for p in fleet.proxies if p.id not in run.removed and p.id not in serving_old]
    deficit = policy.min_scaling - len(counted)
    # A replacement being deleted this run (stuck) no longer serves its operation.
    ops = [
        op._replace(replacement_id=None) if op.replacement_id in run.removed else op for op in ops
    ]
    if deficit > 0:
        return _create(run, fleet, ops, len(counted), deficit), ops
    if deficit < 0:
        # Unhealthy first, then the oldest.
        order = sorted(counted, key=lambda p: (p.id in fleet.healthy, p.created_at, p.id))
        for p in order[:-deficit]:
            run.remove(p, DeleteKind.SURPLUS, messages.surplus(len(counted), policy.min_scaling))
    return (), ops


def _create(
    run: RunDecisions, fleet: Fleet, ops: Sequence[RecycleOperation], counted: int, deficit: int
) -> tuple[CreateAction, ...]:
    n = _within_caps(run, fleet, deficit)
    waiting = [
        op for op in ops if op.replacement_id is None and op.strategy != OperationStrategy.ADOPTED
    ]
    creates: list[CreateAction] = []
    for i in range(n):
        if i < len(waiting):
            op = waiting[i]
            reason = messages.replacement_for(op.old_address or str(op.old_id))
            creates.append(CreateAction(reason, op.op_id))
        else:
            creates.append(
                CreateAction(messages.below_min_scaling(counted + i, run.policy.min_scaling))
            )
    return tuple(creates)


def _within_caps(run: RunDecisions, fleet: Fleet, deficit: int) -> int:
    """How many of the ``deficit`` creates the caps allow. MAX_SCALING counts every proxy the
    provider lists (ours, whatever their state: a ghost create counts once it is listed) that
    this run does not delete; MAX_CREATES_PER_RUN bounds the run whatever the provider says."""
    policy = run.policy
    n = deficit
    if policy.max_scaling is not None:
        room = policy.max_scaling - (len(fleet.proxies) - len(run.removed))
        n = max(0, min(n, room))
        if n < deficit:
            run.cap_reached(
                "MAX_SCALING",
                messages.max_scaling_limits(
                    policy.max_scaling, run.key, n, deficit, policy.min_scaling
                ),
            )
    cap = max(policy.creates_cap(deficit), 0)
    if n > cap:
        run.cap_reached("MAX_CREATES_PER_RUN", messages.max_creates_reached(cap, run.key, n - cap))
        n = cap
    return n


# -- close operations ---------------------------------------------------------------------------


def close_operations(
    run: RunDecisions,
    fleet: Fleet,
    ops: Sequence[RecycleOperation],
    creates: Sequence[CreateAction],
) -> tuple[RecycleOperation, ...]:
    """The operations that stay open after this run's plan.

    Operations that will get no replacement (the fleet is at MIN_SCALING without one) close
    once their old proxy is gone: already, by a delete planned under the rules above, or, for
    surge, by deleting the old proxy now (surplus: the fleet is complete without it). A
    replace operation whose retried delete was deferred stays open: availability first.
    """
    assigned = {c.for_operation for c in creates if c.for_operation}
    still_open: list[RecycleOperation] = []
    for op in ops:
        waits = op.replacement_id is not None or op.op_id in assigned
        if waits or op.strategy == OperationStrategy.ADOPTED:
            still_open.append(op)
            continue
        if op.old_deleted:
            run.complete(op)
            continue
        _close_with_old(run, fleet, op)
        still_open.append(op)
    return tuple(still_open)


def _close_with_old(run: RunDecisions, fleet: Fleet, op: RecycleOperation) -> None:
    """Make the deletion of the operation's old proxy (planned, or a surge surplus) close it."""
    remaining = fleet.by_id.get(op.old_id) if op.old_id is not None else None
    if remaining is None:
        return
    planned = run.removed.get(remaining.id)
    if planned is not None:
        run.removed[remaining.id] = planned._replace(closes_operation=op.op_id)
    elif op.strategy == OperationStrategy.SURGE:
        run.removed[remaining.id] = DeleteAction(
            remaining.id,
            remaining.address,
            DeleteKind.SURPLUS,
            messages.no_replacement_needed(run.policy.min_scaling),
            closes_operation=op.op_id,
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
        deletes=(DeleteAction(proxy.id, proxy.address, DeleteKind.MANUAL, messages.DESTROYED),),
        deferrals=(),
        next_state=state,
        effective_min_available=policy.effective_min_available(),
    )
