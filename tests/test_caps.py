"""The spending caps: MAX_SCALING and MAX_CREATES_PER_RUN hold whatever the provider reports."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cloudproxy_cli.cli.exit_codes import ExitCode
from cloudproxy_cli.cli.results.reconcile import ReconcileResult
from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import Proxy
from cloudproxy_cli.core.plan import Plan
from cloudproxy_cli.core.policy import InstancePolicy, Strategy
from tests.support.cli import Cli, one_line_error
from tests.support.fakes import FakeProvider
from tests.support.harness import Harness, policy
from tests.support.local_proxies import stop_local_proxies

AGE_LIMIT_S = 3600


class GhostProvider(FakeProvider):
    """A provider that misbehaves on demand: a create that errors after making the VM (a ghost
    create), and VMs that appear from nowhere with our tags (an API listing more than it should).
    """

    ghost_creates = False

    def create_proxy(self) -> Proxy:
        made = super().create_proxy()
        if self.ghost_creates:
            raise ProviderError("fake cloud: 504 gateway timeout (the VM was made anyway)")
        return made


def capped_policy(
    *,
    strategy: Strategy,
    min_scaling: int,
    batch: int,
    extra: int | None,
    max_creates: int | None,
) -> InstancePolicy:
    base = policy(
        strategy=strategy,
        min_scaling=min_scaling,
        batch_size=batch,
        min_available=1,
        age_limit_s=AGE_LIMIT_S,
        max_scaling=None if extra is None else min_scaling + extra,
    )
    return InstancePolicy(
        rolling=base.rolling,
        min_scaling=base.min_scaling,
        age_limit=base.age_limit,
        max_scaling=base.max_scaling,
        max_creates_per_run=max_creates,
        pending_timeout=base.pending_timeout,
    )


policies = st.builds(
    capped_policy,
    strategy=st.sampled_from(Strategy),
    min_scaling=st.integers(0, 6),
    batch=st.integers(1, 3),
    extra=st.sampled_from([None, 0, 0, 1, 3]),  # at the cap (0) is where creates must stop
    max_creates=st.none() | st.integers(0, 4),
)

# Per run: (ghost creates?, deletes refused?, VMs that appear from nowhere, boot time)
chaos_runs = st.lists(
    st.tuples(st.booleans(), st.booleans(), st.integers(0, 3), st.integers(30, 300)),
    min_size=1,
    max_size=10,
)


def creates_bound(plan: Plan, pol: InstancePolicy) -> int:
    """MAX_CREATES_PER_RUN, or unset: the batch plus the deficit the plan's deletes leave."""
    if pol.max_creates_per_run is not None:
        return pol.max_creates_per_run
    left = len(plan.observed) - len(plan.deletes)
    return pol.rolling.batch_size + max(pol.min_scaling - left, 0)


@settings(
    max_examples=int(os.environ.get("CLOUDPROXY_PROPERTY_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    pol=policies,
    ages=st.lists(st.integers(0, 2 * AGE_LIMIT_S), max_size=8),
    at_cap=st.booleans(),
    runs=chaos_runs,
)
# The case behind core.caps: at MAX_SCALING, a recycle whose delete failed still created its
# replacement (random generation reaches it too, but rarely).
@example(
    pol=capped_policy(strategy=Strategy.REPLACE, min_scaling=1, batch=1, extra=0, max_creates=None),
    ages=[],
    at_cap=True,
    runs=[(False, True, 0, 30)],
)
def test_caps_hold_whatever_the_provider_reports(
    pol: InstancePolicy, ages: list[int], at_cap: bool, runs: list[tuple[bool, bool, int, int]]
) -> None:
    h = Harness(pol)
    provider = GhostProvider(h.cloud, h.key.instance)
    h.provider = provider
    if at_cap and pol.max_scaling is not None:
        # Start exactly at MAX_SCALING, where every create must be paid for by a delete.
        ages = [(ages or [2 * AGE_LIMIT_S])[i % max(len(ages), 1)] for i in range(pol.max_scaling)]
    for i, age in enumerate(ages):
        provider.add(f"start-{i}", age_s=age)
    extra_ids = iter(range(1000))
    for ghost, no_delete, appear, boot_s in runs:
        provider.ghost_creates, provider.fail_delete = ghost, no_delete
        h.cloud.boot_seconds = boot_s
        for _ in range(appear):
            provider.add(f"extra-{next(extra_ids)}", age_s=0, ready=False)
        before = len(h.ids())
        report = h.run()
        plan = report.instances[0].plan
        assert plan is not None
        after = len(h.ids())
        assert len(plan.creates) <= creates_bound(plan, pol)
        if pol.max_scaling is not None:
            # Never created past the cap; what the provider adds by itself is not ours to stop.
            assert after <= max(pol.max_scaling, before), (before, after)
            if after > before:
                assert after <= pol.max_scaling
        if plan.caps_reached:
            assert ReconcileResult(report, {str(h.key): h.policy}).exit_code in (
                ExitCode.DEGRADED,
                ExitCode.PARTIAL,
            )
        h.clock.advance(60)


def test_max_creates_per_run_defers_the_rest_to_later_runs_and_says_so() -> None:
    h = Harness(capped_policy(strategy=Strategy.REPLACE, min_scaling=5, batch=2, extra=None,
                              max_creates=2))  # fmt: skip
    report = h.run()
    plan = report.instances[0].plan
    assert plan is not None
    assert len(plan.creates) == 2 and len(h.ids()) == 2
    assert plan.caps_reached == ("MAX_CREATES_PER_RUN",)
    assert "MAX_CREATES_PER_RUN=2 reached: 3 creates deferred in digitalocean/default" in (
        plan.warnings
    )
    assert ReconcileResult(report, {str(h.key): h.policy}).exit_code == ExitCode.DEGRADED
    h.clock.advance(60)
    h.run()
    h.clock.advance(60)
    last = h.run()
    assert len(h.ids()) == 5
    last_plan = last.instances[0].plan
    assert last_plan is not None and last_plan.caps_reached == ()
    assert ReconcileResult(last, {str(h.key): h.policy}).exit_code == ExitCode.OK


def test_unset_cap_never_holds_back_what_the_rules_ask_for() -> None:
    # Rolling off: every aged proxy goes and is replaced in the same run.
    pol = capped_policy(strategy=Strategy.REPLACE, min_scaling=6, batch=1, extra=None,
                        max_creates=None)  # fmt: skip
    h = Harness(pol._replace(rolling=policy(enabled=False).rolling))
    for i in range(6):
        h.provider.add(f"old-{i}", age_s=2 * AGE_LIMIT_S)
    plan = h.run().instances[0].plan
    assert plan is not None
    assert len(plan.deletes) == 6 and len(plan.creates) == 6 and plan.caps_reached == ()


def test_max_scaling_skips_a_create_whose_room_a_failed_delete_did_not_free() -> None:
    # Replace strategy at MAX_SCALING: the recycle's create needs its delete to succeed first.
    h = Harness(capped_policy(strategy=Strategy.REPLACE, min_scaling=3, batch=1, extra=0,
                              max_creates=None))  # fmt: skip
    for i in range(3):
        h.provider.add(f"p{i}", age_s=AGE_LIMIT_S + 10 * (3 - i))
    h.provider.fail_delete = True
    report = h.run()
    (inst,) = report.instances
    assert len(h.ids()) == 3
    errors = inst.errors()
    assert any("MAX_SCALING (3) would be exceeded" in e for e in errors), errors
    assert ReconcileResult(report, {str(h.key): h.policy}).exit_code == ExitCode.PARTIAL


def test_surge_without_room_is_a_reached_cap() -> None:
    h = Harness(capped_policy(strategy=Strategy.SURGE, min_scaling=3, batch=1, extra=0,
                              max_creates=None))  # fmt: skip
    for i in range(3):
        h.provider.add(f"p{i}", age_s=AGE_LIMIT_S + 10)
    plan = h.run().instances[0].plan
    assert plan is not None and plan.caps_reached == ("MAX_SCALING",)
    assert any(w.startswith("MAX_SCALING=3 reached") for w in plan.warnings)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    sandbox = Cli.make(tmp_path)
    try:
        yield sandbox
    finally:
        for inventory in sorted(sandbox.local_dir.glob("*")):
            stop_local_proxies(inventory)


def test_reconcile_that_reaches_a_cap_warns_and_exits_6(cli: Cli) -> None:
    env = {
        "LOCAL_ENABLED": "True",
        "LOCAL_MIN_SCALING": "3",
        "MAX_CREATES_PER_RUN": "1",
        "PROXY_USERNAME": "tester",
        "PROXY_PASSWORD": "s3cret-Pa55",
    }
    result = cli.run("reconcile", "--json", **env)
    assert result.returncode == 6, result.stderr
    assert "MAX_CREATES_PER_RUN=1 reached: 2 creates deferred in local/default" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 6
    assert [a["action"] for a in doc["instances"]["local/default"]["actions"]] == ["create"]
    shown = cli.json("config", "show", "--json", **env)["settings"]
    row = next(s for s in shown if s["name"] == "max_creates_per_run")
    assert row["value"] == 1 and "MAX_CREATES_PER_RUN" in row["source"]


def test_max_creates_per_run_is_read_from_toml_and_checked(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "cloudproxy.toml"
    config.write_text("max_creates_per_run = 4\n[providers.local.default]\nenabled = true\n")
    shown = cli.json("config", "show", "--json", CLOUDPROXY_CONFIG=str(config))["settings"]
    row = next(s for s in shown if s["name"] == "max_creates_per_run")
    assert row["value"] == 4 and str(config) in row["source"]  # typed JSON values
    bad = cli.run("config", "show", CLOUDPROXY_CONFIG=str(config), MAX_CREATES_PER_RUN="-1")
    assert bad.returncode == 4
    assert "MAX_CREATES_PER_RUN" in one_line_error(bad)
