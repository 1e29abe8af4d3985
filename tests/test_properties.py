"""Hypothesis drives random fleets through many cron runs and checks the invariants after each."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudproxy_cli.core.model import ProbeResult, ProbeTarget, Proxy
from cloudproxy_cli.core.plan import DeleteKind, Plan
from cloudproxy_cli.core.policy import Strategy
from cloudproxy_cli.core.reconcile import reconcile
from cloudproxy_cli.core.state import InstanceState, OperationStrategy
from tests.support.fakes import FakeProber
from tests.support.harness import Harness, policy

AGE_LIMIT_S = 3600
RUN_EVERY_S = 60


class FlakyProber(FakeProber):
    """Fails the probes of the ids in ``flaky`` for one run (a network hiccup)."""

    flaky: frozenset[str] = frozenset()

    def probe(self, targets: Sequence[ProbeTarget]) -> dict[str, ProbeResult]:
        results = super().probe(targets)
        for pid in self.flaky & results.keys():
            results[pid] = ProbeResult(False, "timed out")
        return results


policies = st.builds(
    lambda enabled, min_available, batch, strategy, min_scaling, extra: policy(
        enabled=enabled,
        min_available=min_available,
        batch_size=batch,
        strategy=strategy,
        min_scaling=min_scaling,
        age_limit_s=AGE_LIMIT_S,
        max_scaling=None if extra is None else min_scaling + extra,
    ),
    st.booleans() | st.just(True),
    st.integers(0, 8),
    st.integers(1, 4),
    st.sampled_from(Strategy),
    st.integers(1, 8),
    st.none() | st.integers(1, 3),
)

# One VM of the starting fleet: (age in seconds, healthy at the start?)
vms = st.tuples(st.integers(0, 3 * AGE_LIMIT_S), st.booleans())


def check_run(h: Harness, plan: Plan) -> None:
    """The invariants that must hold after every single run."""
    p = h.policy
    by_id = {x.id: x for x in plan.observed}
    healthy = plan.healthy_ids
    state = h.store.state.instance(str(h.key))
    opened = [op for op in state.operations if op.opened_at == h.clock.now() and op.old_id]
    recycle_ops = [op for op in state.operations if op.strategy != OperationStrategy.ADOPTED]

    # In flight never exceeds the batch because of a recycle opened by this run.
    if p.rolling.enabled:
        assert len(recycle_ops) <= p.rolling.batch_size
        if opened:
            assert len(state.operations) <= p.rolling.batch_size

    age_kinds = (DeleteKind.RECYCLE, DeleteKind.AGED, DeleteKind.SURGE_COMPLETE)
    for d in plan.deletes:
        proxy = by_id[d.proxy_id]
        # No proxy that is not aged is ever recycled for age.
        if d.kind in age_kinds:
            assert h.clock.now() - proxy.created_at > timedelta(seconds=AGE_LIMIT_S), d
        # Health deletions only ever hit proxies that failed their probe.
        if d.kind in (DeleteKind.STUCK, DeleteKind.BROKEN):
            assert d.proxy_id not in healthy, d

    # A recycle never pushes availability below the effective minimum.
    recycled_healthy = [
        d for d in plan.deletes if d.kind == DeleteKind.RECYCLE and d.proxy_id in healthy
    ]
    if p.rolling.enabled and p.rolling.strategy == Strategy.REPLACE and recycled_healthy:
        gone = {d.proxy_id for d in plan.deletes if d.kind != DeleteKind.SURPLUS}
        assert len(healthy - gone) >= plan.effective_min_available

    # Oldest first: no deferred proxy is older than a healthy proxy selected this run.
    # (Selections opened this run, from the plan: a retried delete is not a new selection.)
    selected = [
        op.old_id
        for op in plan.next_state.operations
        if op.opened_at == h.clock.now() and op.old_id in healthy
    ]
    for pid in selected:
        for deferral in plan.deferrals:
            if deferral.proxy_id in healthy:
                a, b = by_id[pid], by_id[deferral.proxy_id]
                assert (a.created_at, a.id) < (b.created_at, b.id), (pid, deferral)


@settings(
    max_examples=int(os.environ.get("CLOUDPROXY_PROPERTY_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    pol=policies,
    fleet=st.lists(vms, min_size=0, max_size=10),
    chaos=st.lists(
        st.tuples(
            st.integers(30, 400),  # boot time of what this run creates
            st.sets(st.integers(0, 40), max_size=3),  # flaky probe indices this run
            st.booleans(),  # provider refuses deletes this run
            st.booleans(),  # provider refuses creates this run
            st.none() | st.integers(0, 40),  # a VM that dies for good this run
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_many_runs_keep_the_invariants(
    pol: object,
    fleet: list[tuple[int, bool]],
    chaos: list[tuple[int, set[int], bool, bool, int | None]],
) -> None:
    h = Harness(pol)  # type: ignore[arg-type]
    h.prober = FlakyProber(h.cloud)
    for i, (age, ready) in enumerate(fleet):
        h.provider.add(f"start-{i}", age_s=age, ready=ready)

    # Chaotic phase: random boot times, probe hiccups, refused calls, deaths.
    for boot_s, flaky, no_delete, no_create, dies in chaos:
        ids = sorted(h.cloud.vms)
        h.cloud.boot_seconds = boot_s
        h.prober.flaky = frozenset(ids[i] for i in flaky if i < len(ids))
        h.provider.fail_delete, h.provider.fail_create = no_delete, no_create
        if dies is not None and dies < len(ids):
            h.cloud.vms[ids[dies]].dead = True
        report = h.run()
        plan = report.instances[0].plan
        assert plan is not None
        check_run(h, plan)
        h.clock.advance(RUN_EVERY_S)

    # Healthy phase: every VM answers, calls succeed. Everything aged now must go eventually.
    for vm in h.cloud.vms.values():
        vm.dead = False
    h.prober.flaky = frozenset()
    h.provider.fail_delete = h.provider.fail_create = False
    h.cloud.boot_seconds = 90
    aged_now = {
        vm.id
        for vm in h.cloud.vms.values()
        if h.clock.now() - vm.created_at > timedelta(seconds=AGE_LIMIT_S)
    }
    for _ in range(80):
        report = h.run()
        plan = report.instances[0].plan
        assert plan is not None
        check_run(h, plan)
        if not aged_now & h.ids():
            break
        h.clock.advance(RUN_EVERY_S)
    assert not aged_now & h.ids(), "every aged proxy is recycled once the fleet is healthy"
    assert len(h.ids()) >= pol.min_scaling  # type: ignore[attr-defined]


@given(
    pol=policies,
    fleet=st.lists(vms, min_size=0, max_size=12),
    seed=st.randoms(use_true_random=False),
)
def test_same_plan_for_shuffled_input(pol: object, fleet: list[tuple[int, bool]], seed) -> None:  # type: ignore[no-untyped-def]
    h = Harness(pol)  # type: ignore[arg-type]
    for i, (age, _) in enumerate(fleet):
        h.provider.add(f"p{i}", age_s=age)
    proxies: list[Proxy] = h.provider.list_proxies()
    health = {p.id: ProbeResult(ok) for p, (_, ok) in zip(proxies, fleet, strict=True)}
    shuffled = list(proxies)
    seed.shuffle(shuffled)
    now = h.clock.now()
    a = reconcile(h.key, proxies, health, InstanceState(), h.policy, now=now)
    b = reconcile(h.key, shuffled, health, InstanceState(), h.policy, now=now)
    assert a == b
