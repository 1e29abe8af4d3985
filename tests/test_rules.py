"""Every rule of behaviour.md and every failure of reference-lessons.md (1-7), as tests."""

from __future__ import annotations

import logging

import pytest

from cloudproxy_cli.app.service import InstanceRuntime, destroy_proxy, run_reconcile
from cloudproxy_cli.core.errors import ProviderError, ProxyNotFoundError
from cloudproxy_cli.core.model import InstanceKey, ProbeResult
from cloudproxy_cli.core.plan import DeleteKind
from cloudproxy_cli.core.policy import RollingPolicy, Strategy, rolling_in_force
from cloudproxy_cli.core.reconcile import reconcile
from cloudproxy_cli.core.state import InstanceState, RollingOverrides
from tests.support.fakes import FakeProvider
from tests.support.harness import Harness, policy


def fleet(h: Harness, n: int, *, age_s: float = 4000, start: int = 0, **kw: object) -> list[str]:
    names = [f"p{start + i}" for i in range(n)]
    for i, name in enumerate(names):
        h.provider.add(name, age_s=age_s - i, **kw)
    return names


def last_plan(h: Harness):  # type: ignore[no-untyped-def]
    plan = h.reports[-1].instances[0].plan
    assert plan is not None
    return plan


def recycled(h: Harness) -> list[str]:
    return [d.proxy_id for d in last_plan(h).deletes if d.kind == DeleteKind.RECYCLE]


# -- rule 1: observe ---------------------------------------------------------------------------


def test_failed_list_means_no_actions_for_that_instance_and_others_go_on() -> None:
    h = Harness(policy(min_scaling=3))
    other = FakeProvider(h.cloud, "second")
    h.provider.fail_list = True
    runtimes = [
        h.runtime,
        InstanceRuntime(InstanceKey("digitalocean", "second"), other, h.policy, 8899),
    ]
    report = run_reconcile(lambda _state: runtimes, h.store, h.prober, h.clock)
    failed, ok = report.instances
    assert failed.error == "fake cloud: 503 service unavailable"
    assert failed.plan is None and failed.outcomes == ()
    # The healthy instance still scaled up to its 3 proxies; the failed one created nothing.
    assert len(ok.outcomes) == 3 and all(o.ok for o in ok.outcomes)
    assert len(h.cloud.created) == 3
    snap = h.store.state.instance("digitalocean/default").snapshot
    assert snap is not None and snap.last_error == "fake cloud: 503 service unavailable"


def test_one_list_and_one_probe_pass_per_run() -> None:
    h = Harness(policy(min_scaling=3))
    fleet(h, 3, age_s=10)
    h.run()
    assert h.provider.list_calls == 1
    assert h.prober.calls == 1


# -- rule 2: probe -----------------------------------------------------------------------------


def test_proxy_without_address_is_not_probed_nor_healthy() -> None:
    h = Harness(policy(min_scaling=1))
    vm = h.provider.add("noip", age_s=10)
    vm.ip = None
    h.run()
    snap = h.snapshot()
    assert snap.healthy_ips == ()
    assert snap.pending == 1


# -- rule 3: rolling disabled ------------------------------------------------------------------


def test_rolling_disabled_recycles_every_aged_proxy_at_once() -> None:
    h = Harness(policy(enabled=False))
    names = fleet(h, 5)
    fleet(h, 1, age_s=100, start=5)
    h.run()
    plan = last_plan(h)
    assert sorted(d.proxy_id for d in plan.deletes if d.kind == DeleteKind.AGED) == names
    assert len(plan.creates) == 4  # back to MIN_SCALING=5 with the young one
    assert "p5" in h.ids() and not set(names) & h.ids() and len(h.ids()) == 5


def test_age_limit_zero_means_nothing_ever_ages() -> None:
    h = Harness(policy(age_limit_s=0))
    fleet(h, 5, age_s=10**7)
    h.run()
    assert last_plan(h).is_empty


# -- rule 4: strategy replace -----------------------------------------------------------------


def test_oldest_first() -> None:
    h = Harness(policy(min_available=3, batch_size=1))
    h.provider.add("young", age_s=3700)
    h.provider.add("oldest", age_s=9000)
    h.provider.add("middle", age_s=5000)
    fleet(h, 2, age_s=10, start=10)
    h.run()
    assert recycled(h) == ["oldest"]


def test_candidate_counted_off_by_one_correctly() -> None:
    """Lesson 3: with 4 available and a minimum of 3, exactly one may go (4-1=3), not two."""
    h = Harness(policy(min_available=3, batch_size=4, min_scaling=4))
    fleet(h, 4)
    h.run()
    assert len(recycled(h)) == 1
    reasons = [d.reason for d in last_plan(h).deferrals]
    assert reasons == ["would reduce available proxies below minimum (2 < 3)"] * 3


def test_cannot_recycle_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudproxy")
    h = Harness(policy(min_available=3, batch_size=2, min_scaling=4))
    fleet(h, 3)
    h.run()
    oldest = h.cloud.vms["p0"].ip
    assert (
        f"Rolling deployment: Cannot recycle {oldest} for digitalocean/default. "
        "Would reduce available proxies below minimum (2 < 3)" in caplog.text
    )


def test_unhealthy_aged_proxy_is_recycled_even_when_availability_is_at_the_minimum() -> None:
    h = Harness(policy(min_available=3, batch_size=2, min_scaling=5))
    fleet(h, 3, age_s=100)  # healthy, young
    h.provider.add("sick", age_s=5000, dead=True)
    h.provider.add("aged-ok", age_s=4000)
    h.run()
    # 4 available; "sick" costs nothing; "aged-ok" may go too (4-1=3 >= 3).
    assert recycled(h) == ["sick", "aged-ok"]


def test_unhealthy_aged_proxy_goes_first_when_healthy_ones_must_stay() -> None:
    h = Harness(policy(min_available=3, batch_size=2, min_scaling=4))
    fleet(h, 3)  # aged healthy, exactly the minimum
    h.provider.add("sick", age_s=3700, dead=True)
    h.run()
    assert recycled(h) == ["sick"]
    assert len(last_plan(h).deferrals) == 3


def test_deferred_proxies_keep_serving() -> None:
    """Lesson 2: deferred means 'keeps serving': still in the pool and counted healthy."""
    h = Harness(policy())
    names = fleet(h, 5)
    h.run()
    snap = h.snapshot()
    deferred = {d.proxy_id for d in snap.deferred}
    assert deferred == set(names[2:])
    assert deferred <= h.ids()
    assert len(snap.healthy_ips) == 3


def test_no_deadlock_when_all_proxies_age_together() -> None:
    """Lesson 1: aged-but-healthy proxies are available; recycling starts in the first run."""
    h = Harness(policy())
    fleet(h, 5)
    h.run()
    assert len(recycled(h)) == 2
    assert len(last_plan(h).creates) == 2


def test_batch_limit_holds_across_runs_until_replacements_are_healthy() -> None:
    """Lesson 4: in flight lasts until the replacement is healthy, across runs."""
    h = Harness(policy(min_available=1, batch_size=2, min_scaling=6))
    h.cloud.boot_seconds = 500
    fleet(h, 6)
    total_recycled = 0
    for _ in range(8):  # replacements take 500 s to boot: 8 runs a minute apart
        h.run()
        total_recycled += len(recycled(h))
        assert h.snapshot().in_flight <= 2
        h.clock.advance(60)
    assert total_recycled == 2
    h.clock.advance(500)
    h.run()
    assert len(recycled(h)) == 2


def test_in_flight_survives_a_new_process() -> None:
    """Lesson 5: the operations live in the state, not in memory."""
    h = Harness(policy())
    fleet(h, 5)
    h.run()
    again = Harness(h.policy, clock=h.clock, store=h.store)
    again.cloud, again.provider, again.prober = h.cloud, h.provider, h.prober
    h.clock.advance(60)
    again.run()
    assert recycled(again) == []
    assert again.snapshot().in_flight == 2


# -- effective minimum (lesson 6) --------------------------------------------------------------


def test_min_scaling_one_can_still_recycle(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloudproxy")
    h = Harness(policy(min_available=5, min_scaling=1))
    fleet(h, 1)
    h.run()
    assert recycled(h) == ["p0"]
    assert last_plan(h).effective_min_available == 0
    warnings = [r for r in caplog.records if "ROLLING_MIN_AVAILABLE" in r.getMessage()]
    assert len(warnings) == 1
    assert "using 0" in warnings[0].getMessage()


def test_min_scaling_five_with_minimum_five_uses_four_and_warns_once_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cloudproxy")
    h = Harness(policy(min_available=5, min_scaling=5, batch_size=2))
    fleet(h, 5)
    h.run()
    assert last_plan(h).effective_min_available == 4
    assert recycled(h) == ["p0"]  # 5-1=4 >= 4; the next would leave 3 < 4
    warnings = [r for r in caplog.records if "ROLLING_MIN_AVAILABLE" in r.getMessage()]
    assert len(warnings) == 1, "one warning per instance per run, not one per proxy"


# -- rule 6: scaling ---------------------------------------------------------------------------


def test_scale_up_creates_the_deficit() -> None:
    h = Harness(policy(min_scaling=4))
    fleet(h, 1, age_s=10)
    h.run()
    assert len(last_plan(h).creates) == 3
    assert len(h.ids()) == 4


def test_scale_down_deletes_unhealthy_first_then_oldest() -> None:
    h = Harness(policy(min_scaling=2, age_limit_s=0))
    h.provider.add("old", age_s=900)
    h.provider.add("older", age_s=1000)
    h.provider.add("young", age_s=100)
    h.provider.add("sick", age_s=50, dead=True)
    h.run()
    surplus = [d.proxy_id for d in last_plan(h).deletes if d.kind == DeleteKind.SURPLUS]
    assert surplus == ["sick", "older"]


def test_max_scaling_caps_creations() -> None:
    h = Harness(policy(min_scaling=5, max_scaling=3))
    h.run()
    assert len(h.ids()) == 3
    assert any("MAX_SCALING (3)" in w for w in last_plan(h).warnings)


# -- rule 7: stuck and broken proxies ----------------------------------------------------------


def test_stuck_proxy_is_replaced_after_pending_timeout() -> None:
    h = Harness(policy(min_scaling=3, age_limit_s=0))
    fleet(h, 2, age_s=10)
    h.run()  # creates the third
    (new,) = set(h.cloud.created)
    h.cloud.vms[new].dead = True
    h.clock.advance(599)
    h.run()
    assert new in h.ids(), "still within PENDING_TIMEOUT"
    h.clock.advance(2)
    h.run()
    stuck = [d for d in last_plan(h).deletes if d.kind == DeleteKind.STUCK]
    assert [d.proxy_id for d in stuck] == [new]
    assert "PENDING_TIMEOUT (600 s" in stuck[0].reason
    assert len(last_plan(h).creates) == 1


def test_one_failed_probe_never_deletes_an_established_proxy() -> None:
    """Lesson 7: a hiccup is not a death sentence; three failed runs in a row are."""
    h = Harness(policy(min_scaling=5, age_limit_s=0))
    fleet(h, 5, age_s=1200)
    h.run()
    h.cloud.vms["p0"].dead = True
    for expected_gone in (False, False, True):
        h.clock.advance(60)
        h.run()
        assert ("p0" not in h.ids()) is expected_gone
    broken = [d for d in last_plan(h).deletes if d.kind == DeleteKind.BROKEN]
    assert [d.proxy_id for d in broken] == ["p0"]
    assert "3 runs in a row" in broken[0].reason


def test_recovered_proxy_resets_its_failure_count() -> None:
    h = Harness(policy(min_scaling=5, age_limit_s=0))
    fleet(h, 5, age_s=1200)
    for dead in (True, True, False, True, True):
        h.cloud.vms["p0"].dead = dead
        h.run()
        h.clock.advance(60)
    assert "p0" in h.ids()


def test_mass_probe_failure_deletes_nothing_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloudproxy")
    h = Harness(policy(min_scaling=5))
    fleet(h, 5, age_s=4000)
    h.run()  # recycles two while the prober works
    deleted_while_healthy = list(h.cloud.deleted)
    h.cloud.prober_broken = True
    for _ in range(15):  # long enough for the replacements to pass PENDING_TIMEOUT
        h.clock.advance(60)
        h.run()
    assert h.cloud.deleted == deleted_while_healthy, "nothing removed while probes all fail"
    health_deletes = [
        d
        for r in h.reports[1:]
        for d in (r.instances[0].plan.deletes if r.instances[0].plan else ())
        if d.kind in (DeleteKind.BROKEN, DeleteKind.STUCK, DeleteKind.RECYCLE)
    ]
    assert health_deletes == []
    assert "the prober or the network is the likely fault" in caplog.text


def test_mass_failure_of_a_pool_never_wipes_it() -> None:
    """A probe-URL hiccup for every proxy at once: no deletion at all across many runs."""
    h = Harness(policy(min_scaling=5, age_limit_s=0))
    fleet(h, 5, age_s=1200)
    h.run()
    h.cloud.prober_broken = True
    for _ in range(10):
        h.clock.advance(60)
        h.run()
    assert h.cloud.deleted == []
    assert h.ids() == {f"p{i}" for i in range(5)}


# -- rule 8: manual destroy --------------------------------------------------------------------


def test_destroy_bypasses_rules_and_next_run_replaces() -> None:
    h = Harness(policy(min_scaling=3, age_limit_s=0))
    fleet(h, 3, age_s=100)
    h.run()
    address = h.cloud.vms["p1"].ip
    assert address is not None
    report = destroy_proxy(address, [h.runtime], h.store, h.clock)
    assert report.proxy.id == "p1" and "p1" not in h.ids()
    h.run()
    assert len(last_plan(h).creates) == 1
    assert len(h.ids()) == 3


def test_destroy_unknown_address_is_an_error() -> None:
    h = Harness(policy(min_scaling=1))
    fleet(h, 1, age_s=100)
    with pytest.raises(ProxyNotFoundError):
        destroy_proxy("127.9.9.9", [h.runtime], h.store, h.clock)
    assert h.ids() == {"p0"}


# -- rolling set: overrides win over env, file and defaults -----------------------------------


def test_rolling_set_overrides_win_and_each_knob_names_its_source() -> None:
    base = RollingPolicy(enabled=False, min_available=3, batch_size=4, strategy=Strategy.REPLACE)
    sources = {"rolling_batch_size": "env ROLLING_BATCH_SIZE", "rolling_deployment": "file x"}
    overrides = RollingOverrides(enabled=True, strategy="surge")

    rolling = rolling_in_force(base, sources, overrides)

    assert rolling.policy == RollingPolicy(True, 3, 4, Strategy.SURGE)
    assert rolling.sources == {
        "enabled": "rolling set",
        "min_available": "default",
        "batch_size": "env ROLLING_BATCH_SIZE",
        "strategy": "rolling set",
    }
    assert rolling_in_force(base, sources, RollingOverrides()).policy == base


# -- rule 9: persistence -----------------------------------------------------------------------


def test_state_saved_after_each_action_and_at_the_end() -> None:
    h = Harness(policy())
    fleet(h, 5)
    h.run()
    assert h.store.saves == 4 + 1  # 2 deletes + 2 creates, then the end of the run


def test_dry_run_changes_nothing() -> None:
    h = Harness(policy())
    fleet(h, 5)
    report = h.run(dry_run=True)
    plan = report.instances[0].plan
    assert plan is not None and len(plan.deletes) == 2 and len(plan.creates) == 2
    assert h.ids() == {f"p{i}" for i in range(5)}
    assert h.store.saves == 0 and h.cloud.created == []


# -- lost or corrupt state ---------------------------------------------------------------------


def test_rebuild_counts_booting_proxies_as_in_flight() -> None:
    """Two replacements were booting when the state was lost: the batch (2) is already full."""
    h = Harness(policy(min_scaling=5))
    fleet(h, 5)
    h.run()
    h.store.state = type(h.store.state)()  # the state file is gone
    h.clock.advance(30)
    h.run()
    assert recycled(h) == []
    assert h.snapshot().in_flight == 2
    h.clock.advance(120)  # the booting ones are healthy now
    h.run()
    assert len(recycled(h)) == 2


# -- instances never touch each other ----------------------------------------------------------


def test_instances_are_isolated() -> None:
    h = Harness(policy(min_scaling=2, age_limit_s=0))
    other = FakeProvider(h.cloud, "second")
    other.add("theirs", age_s=100)
    other.add("theirs2", age_s=100)
    h.run()
    assert {"theirs", "theirs2"} <= set(h.cloud.vms)
    assert len(h.ids()) == 2 and not {"theirs", "theirs2"} & h.ids()


# -- purity --------------------------------------------------------------------------------------


def test_reconcile_is_pure_and_order_independent() -> None:
    h = Harness(policy())
    fleet(h, 5)
    proxies = h.provider.list_proxies()
    health = {p.id: ProbeResult(True) for p in proxies}
    kwargs = {"now": h.clock.now()}
    a = reconcile(h.key, proxies, health, InstanceState(), h.policy, **kwargs)
    b = reconcile(h.key, list(reversed(proxies)), health, InstanceState(), h.policy, **kwargs)
    assert a == b
    assert h.ids() == {f"p{i}" for i in range(5)}


def test_surge_respects_max_scaling() -> None:
    h = Harness(policy(strategy=Strategy.SURGE, max_scaling=6))
    fleet(h, 5)
    h.run()
    assert len(h.ids()) == 6
    assert [d.reason for d in last_plan(h).deferrals][-1].startswith("MAX_SCALING (6)")


def test_pending_proxy_is_not_recycled_for_age_while_booting() -> None:
    h = Harness(policy(min_scaling=1, age_limit_s=60, pending_timeout_s=600))
    h.cloud.boot_seconds = 300
    h.run()
    h.clock.advance(120)  # aged (120 > 60) but still booting
    h.run()
    assert recycled(h) == []
    assert last_plan(h).pending_ids == frozenset(h.ids())


def test_a_proxy_removed_as_surplus_is_not_reported_deferred() -> None:
    h = Harness(policy(min_scaling=1, batch_size=1, min_available=0))
    fleet(h, 3)  # all aged; the batch takes one, the surplus rule removes one more
    h.run()
    plan = last_plan(h)
    removed = {d.proxy_id for d in plan.deletes}
    assert removed == {"p0", "p1"}
    assert [d.proxy_id for d in plan.deferrals] == ["p2"]


# -- firewall: verified when creating and hourly, remembered in the state --------------------


def test_firewall_is_verified_when_creating_and_hourly_and_remembered() -> None:
    h = Harness(policy(min_scaling=2, age_limit_s=0))
    h.run()  # creates 2: the firewall is read (missing) and created, once for both creates
    assert h.cloud.firewall_calls == 2
    remembered = h.store.state.instance(str(h.key))
    assert remembered.firewall_id == "fw-cloudproxy-default"
    assert remembered.firewall_checked_at == h.clock.now()
    h.clock.advance(120)
    h.run()  # steady state: no create, the hourly check not due: no firewall call
    assert last_plan(h).is_empty and h.cloud.firewall_calls == 2
    h.cloud.vms.pop(sorted(h.ids())[0])  # a VM vanished: the next run creates one
    h.run()
    assert len(last_plan(h).creates) == 1
    assert h.cloud.firewall_calls == 3, "a run that creates verifies the firewall first"
    h.clock.advance(3599)
    h.run()
    assert h.cloud.firewall_calls == 3
    h.clock.advance(1)
    h.run()  # an hour after the last check, with nothing to create: checked anyway
    assert last_plan(h).is_empty and h.cloud.firewall_calls == 4
    assert h.store.state.instance(str(h.key)).firewall_checked_at == h.clock.now()


def test_firewall_failure_fails_the_creates_but_not_the_deletes() -> None:
    h = Harness(policy(enabled=False, min_scaling=1))
    fleet(h, 1)  # aged: deleted and replaced this run

    def broken(known_id: str | None) -> str | None:
        raise ProviderError("fake cloud: 403 firewall quota")

    h.provider.ensure_firewall = broken  # type: ignore[method-assign]
    report = h.run()
    outcomes = report.instances[0].outcomes
    assert [(type(o.action).__name__, o.ok) for o in outcomes] == [
        ("DeleteAction", True),
        ("CreateAction", False),
    ]
    assert outcomes[1].error == (
        "firewall: could not verify or repair it: fake cloud: 403 firewall quota"
    )
