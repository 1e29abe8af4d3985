"""The rollout phase (core/phase.py), per phase, and the progress tracking real runs record."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cloudproxy_cli.core.phase import (
    Phase,
    PhaseView,
    advance_rollout,
    aged_waiting,
    degraded_reasons,
    rollout_phase,
)
from cloudproxy_cli.core.policy import RollingPolicy, Strategy
from cloudproxy_cli.core.state import (
    Deferral,
    InstanceSnapshot,
    InstanceState,
    OperationStrategy,
    RecycleOperation,
    Rollout,
)
from tests.support.fakes import T0
from tests.support.harness import Harness, policy

ROLLING = RollingPolicy(enabled=True, min_available=3, batch_size=2)
DEADLINE = timedelta(seconds=1800)
IPS = tuple(f"127.0.0.{n}" for n in range(1, 6))


def recycle(n: int, *, strategy: OperationStrategy = OperationStrategy.REPLACE) -> RecycleOperation:
    return RecycleOperation(f"op{n}", T0, strategy, old_id=f"p{n}", old_address=IPS[n])


def adopted(n: int) -> RecycleOperation:
    return RecycleOperation(f"adopted-{n}", T0, OperationStrategy.ADOPTED, replacement_id=f"n{n}")


def snap(**kw: object) -> InstanceSnapshot:
    base = InstanceSnapshot(last_update=T0, healthy_ips=IPS, effective_min_available=3)
    return base._replace(**kw)  # type: ignore[arg-type]


def phase_of(
    s: InstanceSnapshot | None, state: InstanceState, rolling: RollingPolicy = ROLLING
) -> PhaseView:
    return rollout_phase(s, state, rolling, now=T0, progress_deadline=DEADLINE)


# -- one test per phase --------------------------------------------------------------------------


def test_idle_when_nothing_is_aged_and_nothing_recycles() -> None:
    view = phase_of(snap(), InstanceState())
    assert view.phase == Phase.IDLE and view.text == "idle" and view.finished
    never = phase_of(None, InstanceState())
    assert never.phase == Phase.IDLE and "never reconciled" in never.text


def test_rolling_counts_completed_in_flight_and_waiting_recycles() -> None:
    state = InstanceState(
        operations=(recycle(0), recycle(1)),
        rollout=Rollout(started_at=T0, last_progress_at=T0, completed=2),
    )
    view = phase_of(snap(aged_ips=IPS[2:]), state)
    assert view.phase == Phase.ROLLING and not view.finished
    # 2 done + 2 in flight + 3 aged waiting.
    assert (view.text, view.completed, view.total) == ("rolling 2 of 7", 2, 7)


def test_a_surge_old_proxy_still_serving_is_recycling_not_waiting() -> None:
    s = snap(aged_ips=IPS[:1], pending_recycle_ips=IPS[:1])
    assert aged_waiting(s) == ()
    state = InstanceState(operations=(recycle(0, strategy=OperationStrategy.SURGE),))
    assert phase_of(s, state).text == "rolling 0 of 1"


def test_blocked_by_min_available_when_no_recycle_can_start() -> None:
    deferral = Deferral("p0", IPS[0], "would leave 2 healthy, below the minimum of 3")
    s = snap(healthy_ips=IPS[:3], aged_ips=IPS[:3], deferred=(deferral,))
    view = phase_of(s, InstanceState())
    assert view.phase == Phase.BLOCKED_MIN and view.text == "blocked: min available"
    assert view.reasons == (f"{IPS[0]}: would leave 2 healthy, below the minimum of 3",)
    # Surge creates first: the minimum does not hold it back.
    surge = ROLLING._replace(strategy=Strategy.SURGE)
    assert phase_of(s, InstanceState(), surge).phase == Phase.ROLLING


def test_blocked_by_a_batch_full_of_other_operations() -> None:
    state = InstanceState(operations=(adopted(1), adopted(2)))
    view = phase_of(snap(aged_ips=IPS[:1]), state)
    assert view.phase == Phase.BLOCKED_BATCH and view.text == "blocked: batch full"


def test_stalled_when_no_recycle_completed_within_the_deadline() -> None:
    started = T0 - timedelta(seconds=2000)
    state = InstanceState(operations=(recycle(0),), rollout=Rollout(started_at=started))
    view = phase_of(snap(aged_ips=IPS[1:2]), state)
    assert view.phase == Phase.STALLED
    assert view.text == "stalled: no recycle completed for 2000 s"
    # Progress 10 minutes ago resets the clock.
    fresh = state._replace(rollout=Rollout(started, T0 - timedelta(seconds=600), 1))
    assert phase_of(snap(aged_ips=IPS[1:2]), fresh).phase == Phase.ROLLING


# -- progress tracking ---------------------------------------------------------------------------


def test_advance_rollout_starts_progresses_and_ends() -> None:
    later = T0 + timedelta(seconds=60)
    started = advance_rollout(None, active=True, completed=0, now=T0)
    assert started == Rollout(started_at=T0)
    progressed = advance_rollout(started, active=True, completed=2, now=later)
    assert progressed == Rollout(started_at=T0, last_progress_at=later, completed=2)
    assert advance_rollout(progressed, active=False, completed=1, now=later) is None


def test_runs_record_when_the_rollout_started_and_each_completed_recycle() -> None:
    h = Harness(policy(min_scaling=3, min_available=2, batch_size=1))
    for n in range(3):
        h.provider.add(f"p{n}", age_s=4000 - n)
    h.run()  # p0 goes (replace), its replacement boots
    first = h.store.state.instance(str(h.key)).rollout
    assert first == Rollout(started_at=h.clock.now())
    assert h.snapshot().rollout == first
    h.clock.advance(120)
    h.run()  # the replacement is healthy: p0's recycle completes, p1's opens
    second = h.store.state.instance(str(h.key)).rollout
    assert second == Rollout(
        started_at=first.started_at, last_progress_at=h.clock.now(), completed=1
    )
    for _ in range(6):
        h.clock.advance(120)
        h.run()
    state = h.store.state.instance(str(h.key))
    assert state.operations == () and state.rollout is None  # done: forgotten
    assert h.snapshot().rollout is None


def test_a_run_records_when_the_next_proxy_will_age() -> None:
    h = Harness(policy(min_scaling=2, age_limit_s=3600))
    h.provider.add("old", age_s=3000)
    h.provider.add("young", age_s=100)
    h.run()
    assert h.snapshot().next_age_at == h.clock.now() + timedelta(seconds=600)


# -- degraded ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("healthy", "pending", "degraded"), [(3, 0, False), (2, 0, True), (1, 2, False), (0, 0, True)]
)
def test_degraded_when_healthy_and_booting_proxies_are_below_the_effective_minimum(
    healthy: int, pending: int, degraded: bool
) -> None:
    p = policy(min_scaling=5, min_available=3)
    s = snap(healthy_ips=IPS[:healthy], pending=pending)
    reasons = degraded_reasons(s, p)
    assert bool(reasons) is degraded
    if degraded:
        assert reasons == (
            f"{healthy} healthy and {pending} booting proxies, below the effective minimum of 3",
        )


def test_degraded_when_the_rollout_stalled() -> None:
    p = policy(min_scaling=5)._replace(progress_deadline=timedelta(seconds=300))
    rollout = Rollout(started_at=T0 - timedelta(seconds=301))
    assert degraded_reasons(snap(rollout=rollout), p) == (
        "rollout stalled: no recycle completed for 301 s (ROLLING_PROGRESS_DEADLINE 300 s)",
    )
    assert degraded_reasons(snap(rollout=rollout._replace(started_at=T0)), p) == ()
    assert degraded_reasons(None, p) == ()
