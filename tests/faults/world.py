"""A fleet on one stand-in cloud, driven run by run, with the invariants checked after each run.

The runs are the real service (``run_reconcile``), the real adapter through its SDK against the
stand-in, and the real state file. Probing is a double: a proxy is healthy once the stand-in has
given it its (loopback) address, so nothing is ever connected to, moto's addresses included.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cloudproxy_cli.adapters.state_file import StateFile
from cloudproxy_cli.app.service import InstanceRuntime, RunReport, run_reconcile
from cloudproxy_cli.core.errors import StateError
from cloudproxy_cli.core.model import InstanceKey, ProbeResult, ProbeTarget
from cloudproxy_cli.core.plan import DeleteKind, Plan
from cloudproxy_cli.core.policy import InstancePolicy, RollingPolicy, Strategy
from cloudproxy_cli.core.ports import Prober, Provider, StateStore
from cloudproxy_cli.core.state import OperationStrategy
from tests.standins.base import FaultyStandIn
from tests.support.fakes import FakeClock

AGE_LIMIT = timedelta(hours=1)
RUN_EVERY_S = 60
MAX_RECOVERY_RUNS = 12  # batch 2, 3 aged proxies: about 5 runs when nothing fails
CLOUDS = ("digitalocean", "vultr", "aws")


def fleet_policy(strategy: Strategy, *, batch: int = 2, min_available: int = 1) -> InstancePolicy:
    rolling = RollingPolicy(True, min_available, batch, strategy)
    return InstancePolicy(
        rolling=rolling,
        min_scaling=3,
        max_scaling=3 + batch,
        age_limit=AGE_LIMIT,
        pending_timeout=timedelta(seconds=600),
    )


class AddressProber:
    """Healthy once the provider reports an address, unless the id is in ``down``."""

    def __init__(self) -> None:
        self.down: set[str] = set()

    def probe(self, targets: Sequence[ProbeTarget]) -> dict[str, ProbeResult]:
        return {
            t.proxy_id: ProbeResult(False, "connection refused")
            if t.proxy_id in self.down
            else ProbeResult(True)
            for t in targets
        }


def marks_instance(tags: dict[str, str], instance: str) -> bool:
    """Both of our marks: ``cloudproxy`` and this instance's (a tag or a key=value label)."""
    return "cloudproxy" in tags and (
        f"cloudproxy-{instance}" in tags or tags.get("cloudproxy-instance") == instance
    )


class Host(Protocol):
    """Where a fleet lives (a stand-in cloud, this machine) and a real adapter for it."""

    name: str
    instance: str
    provider: Provider

    def boot(self) -> None:
        """What the previous run created boots (gets its address, starts answering)."""
        ...

    def ours(self) -> set[str]:
        """Every proxy of this instance that exists, whatever the adapter says."""
        ...


@dataclass
class Cloud:
    """One stand-in and a real adapter for one instance of it."""

    name: str
    standin: FaultyStandIn
    instance: str = "faults"
    provider: Provider = field(init=False)

    def __post_init__(self) -> None:
        # Two items a page, so that a fleet of 3 or more is a paginated list.
        self.provider = self.standin.provider(self.instance, page_size=2)  # type: ignore[call-arg]

    def boot(self) -> None:
        self.standin.boot_all()

    def ours(self) -> set[str]:
        """Every VM in the stand-in's own state that carries this instance's marks."""
        return {
            vm
            for vm in self.standin.vm_ids()
            if marks_instance(self.standin.vm_tags(vm), self.instance)
        }

    def backdate(self, vm_id: str, by: timedelta) -> None:
        """Make ``vm_id`` look ``by`` older, in the stand-in's own records."""
        s: Any = self.standin
        if self.name == "digitalocean":
            for account in s.accounts.values():
                if (droplet := account.droplets.get(int(vm_id))) is not None:
                    droplet.created_at -= by
        elif self.name == "vultr":
            for account in s.accounts.values():
                if (vm := account.instances.get(vm_id)) is not None:
                    created = datetime.fromisoformat(vm["date_created"]) - by
                    vm["date_created"] = created.isoformat()
        else:
            s.instance(vm_id).launch_time -= by


@contextmanager
def cloud(name: str, tmp_path: Path) -> Iterator[Cloud]:
    standin = importlib.import_module(f"tests.standins.{name}").make_standin(tmp_path)
    try:
        yield Cloud(name, standin)
    finally:
        standin.close()


@dataclass
class World:
    """A fleet on ``cloud`` under ``policy``, its state in a real state file."""

    cloud: Host
    policy: InstancePolicy
    store: StateStore
    clock: FakeClock = field(default_factory=lambda: FakeClock(datetime.now(UTC)))
    prober: Prober = field(default_factory=AddressProber)
    reports: list[RunReport] = field(default_factory=list)

    @classmethod
    def make(cls, c: Cloud, policy: InstancePolicy, state_path: Path) -> World:
        return cls(c, policy, StateFile(state_path))

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.cloud.name, self.cloud.instance)

    def seed_aged(self, n: int = 3) -> None:
        """``n`` running proxies made by the adapter, all past the age limit."""
        for _ in range(n):
            self.cloud.provider.create_proxy()
        self.cloud.boot()
        assert isinstance(self.cloud, Cloud)
        for vm in self.cloud.ours():
            self.cloud.backdate(vm, 2 * AGE_LIMIT)

    def run(self) -> RunReport | StateError:
        """One cron run (the stand-in boots what the previous run created first), with the
        invariants checked. A run that stops on a state error returns it."""
        self.cloud.boot()
        before = self.cloud.ours()
        runtime = InstanceRuntime(self.key, self.cloud.provider, self.policy, proxy_port=8899)
        try:
            report = run_reconcile(lambda _s: [runtime], self.store, self.prober, self.clock)
        except StateError as exc:
            self.check_fleet(before)
            return exc
        finally:
            self.clock.advance(RUN_EVERY_S)
        self.reports.append(report)
        (inst,) = report.instances
        if inst.plan is not None:
            self.check_plan(inst.plan, before)
        self.check_fleet(before)
        return report

    # --- invariants --------------------------------------------------------------------------

    def check_plan(self, plan: Plan, before: set[str]) -> None:
        # Visible: the adapter lists exactly the VMs of ours the cloud holds, ghosts included.
        assert {p.id for p in plan.observed} == before, "a VM of ours the tool did not list"
        healthy = plan.healthy_ids
        recycled = [
            d for d in plan.deletes if d.kind == DeleteKind.RECYCLE and d.proxy_id in healthy
        ]
        if recycled and self.policy.rolling.strategy == Strategy.REPLACE:
            gone = {d.proxy_id for d in plan.deletes if d.kind != DeleteKind.SURPLUS}
            assert len(healthy - gone) >= plan.effective_min_available, "recycle below minimum"
        assert len(plan.creates) <= self.policy.creates_cap(
            self.policy.min_scaling - len(plan.observed) + len(plan.deletes)
        )

    def check_fleet(self, before: set[str]) -> None:
        after = self.cloud.ours()
        cap = self.policy.max_scaling
        if cap is not None and len(after) > len(before):
            assert len(after) <= cap, f"{len(after)} VMs exist, MAX_SCALING is {cap}"
        ops = self.store.load().state.instance(str(self.key)).operations
        recycles = [op for op in ops if op.strategy != OperationStrategy.ADOPTED]
        assert len(recycles) <= self.policy.rolling.batch_size, f"in flight: {recycles}"

    # --- convergence -------------------------------------------------------------------------

    def converged(self) -> bool:
        """MIN_SCALING healthy proxies, none aged, nothing in flight, nothing left to do."""
        if not self.reports:
            return False
        (inst,) = self.reports[-1].instances
        plan = inst.plan
        if plan is None or not plan.is_empty or inst.failed:
            return False
        ids = {p.id for p in plan.observed}
        ops = self.store.load().state.instance(str(self.key)).operations
        return (
            len(ids) == self.policy.min_scaling
            and ids <= plan.healthy_ids
            and not plan.aged_ids
            and not ops
            and self.cloud.ours() == ids
        )

    def recover(self, max_runs: int = MAX_RECOVERY_RUNS) -> int:
        """Runs without faults until the fleet converges; the number of runs it took."""
        for n in range(1, max_runs + 1):
            self.run()
            if self.converged():
                return n
        raise AssertionError(f"{self.key} did not converge within {max_runs} runs")
