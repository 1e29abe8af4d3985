"""Where an instance's rollout stands: its phase for ``rolling status``, and progress tracking."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from cloudproxy_cli.core.policy import InstancePolicy, RollingPolicy, Strategy
from cloudproxy_cli.core.state import InstanceSnapshot, InstanceState, Rollout


class Phase(StrEnum):
    IDLE = "idle"  # nothing aged, nothing recycling
    ROLLING = "rolling"  # recycles in flight, or aged proxies the next run will pick up
    BLOCKED_MIN = "blocked: min available"  # aged proxies wait: recycling one would go below
    BLOCKED_BATCH = "blocked: batch full"  # aged proxies wait: the batch is full of non-recycles
    STALLED = "stalled"  # no recycle completed within ROLLING_PROGRESS_DEADLINE


class PhaseView(NamedTuple):
    """An instance's phase, its one-line text (``rolling 2 of 5``) and why it waits."""

    phase: Phase
    text: str
    completed: int = 0
    total: int = 0
    reasons: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.phase == Phase.IDLE


def aged_waiting(snap: InstanceSnapshot) -> tuple[str, ...]:
    """Aged proxies not yet in a recycle operation (a surge's old proxy serves, but is in one)."""
    in_op = set(snap.pending_recycle_ips)
    return tuple(a for a in snap.aged_ips if a not in in_op)


def is_stalled(rollout: Rollout | None, now: datetime, deadline: timedelta | None) -> bool:
    """True when a rollout is under way and no operation completed within ``deadline``."""
    if rollout is None or not deadline:
        return False
    return now - rollout.progressed_at > deadline


def rollout_phase(
    snap: InstanceSnapshot | None,
    state: InstanceState,
    rolling: RollingPolicy,
    *,
    now: datetime,
    progress_deadline: timedelta | None,
) -> PhaseView:
    """The phase of one instance from its last snapshot and state, under ``rolling``."""
    if snap is None:
        return PhaseView(Phase.IDLE, "idle (never reconciled)")
    waiting = aged_waiting(snap)
    recycles = [op for op in state.operations if op.old_id is not None]
    if not waiting and not state.operations:
        return PhaseView(Phase.IDLE, str(Phase.IDLE))
    done = state.rollout.completed if state.rollout else 0
    total = done + len(recycles) + len(waiting)
    reasons = tuple(f"{d.address or d.proxy_id}: {d.reason}" for d in snap.deferred)
    if is_stalled(state.rollout, now, progress_deadline):
        since = state.rollout.progressed_at if state.rollout else now
        quiet = int((now - since).total_seconds())
        text = f"stalled: no recycle completed for {quiet} s"
        return PhaseView(Phase.STALLED, text, done, total, reasons)
    if waiting and not recycles:
        if rolling.enabled and len(state.operations) >= rolling.batch_size:
            return PhaseView(Phase.BLOCKED_BATCH, str(Phase.BLOCKED_BATCH), done, total, reasons)
        # Replace deletes first: the healthy count must stay at the minimum after one goes.
        blocked = len(snap.healthy_ips) - 1 < snap.effective_min_available
        if rolling.enabled and rolling.strategy == Strategy.REPLACE and blocked:
            return PhaseView(Phase.BLOCKED_MIN, str(Phase.BLOCKED_MIN), done, total, reasons)
    return PhaseView(Phase.ROLLING, f"rolling {done} of {total}", done, total, reasons)


def advance_rollout(
    rollout: Rollout | None, *, active: bool, completed: int, now: datetime
) -> Rollout | None:
    """The rollout after a run: started when work appears, progressed when a recycle
    completes, forgotten once nothing is aged and nothing is recycling."""
    if not active:
        return None
    current = rollout or Rollout(started_at=now)
    if completed:
        current = current._replace(last_progress_at=now, completed=current.completed + completed)
    return current


def rollout_stalled(snap: InstanceSnapshot | None, policy: InstancePolicy) -> bool:
    """Whether the run that wrote ``snap`` left the instance's rollout stalled: the one test
    behind exit 6's "rollout stalled", the JSON run report's ``stalled`` and the metrics."""
    if snap is None:
        return False
    return is_stalled(snap.rollout, snap.last_update, policy.progress_deadline)


def degraded_reasons(snap: InstanceSnapshot | None, policy: InstancePolicy) -> tuple[str, ...]:
    """Why a run left this instance degraded (exit code 6): a stalled rollout, or fewer
    healthy proxies than the effective minimum with too few booting to make up for them."""
    if snap is None:
        return ()
    reasons: list[str] = []
    deadline = policy.progress_deadline
    if deadline and snap.rollout and rollout_stalled(snap, policy):
        quiet = int((snap.last_update - snap.rollout.progressed_at).total_seconds())
        reasons.append(
            f"rollout stalled: no recycle completed for {quiet} s "
            f"(ROLLING_PROGRESS_DEADLINE {int(deadline.total_seconds())} s)"
        )
    minimum = policy.effective_min_available()
    healthy = len(snap.healthy_ips)
    # Booting proxies are on their way: a fleet that is coming up is not degraded.
    if healthy + snap.pending < minimum:
        reasons.append(
            f"{healthy} healthy and {snap.pending} booting proxies, "
            f"below the effective minimum of {minimum}"
        )
    return tuple(reasons)
