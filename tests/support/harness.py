"""Drives whole reconcile runs (the real service and core) over the in-memory fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from cloudproxy_cli.app.service import InstanceRuntime, RunReport, run_reconcile
from cloudproxy_cli.core.model import InstanceKey
from cloudproxy_cli.core.policy import InstancePolicy, RollingPolicy, Strategy
from cloudproxy_cli.core.state import InstanceSnapshot
from tests.support.fakes import FakeClock, FakeCloud, FakeProber, FakeProvider, MemoryStore


def policy(
    *,
    enabled: bool = True,
    min_available: int = 3,
    batch_size: int = 2,
    strategy: Strategy = Strategy.REPLACE,
    min_scaling: int = 5,
    age_limit_s: int = 3600,
    max_scaling: int | None = None,
    pending_timeout_s: int = 600,
) -> InstancePolicy:
    return InstancePolicy(
        rolling=RollingPolicy(enabled, min_available, batch_size, strategy),
        min_scaling=min_scaling,
        age_limit=timedelta(seconds=age_limit_s) if age_limit_s else None,
        max_scaling=max_scaling,
        pending_timeout=timedelta(seconds=pending_timeout_s),
        resource_noun="droplet",
    )


@dataclass
class Harness:
    policy: InstancePolicy
    clock: FakeClock = field(default_factory=FakeClock)
    store: MemoryStore = field(default_factory=MemoryStore)
    key: InstanceKey = field(default_factory=lambda: InstanceKey("digitalocean", "default"))

    def __post_init__(self) -> None:
        self.cloud = FakeCloud(self.clock)
        self.provider = FakeProvider(self.cloud, self.key.instance)
        self.prober = FakeProber(self.cloud)
        self.reports: list[RunReport] = []

    @property
    def runtime(self) -> InstanceRuntime:
        return InstanceRuntime(self.key, self.provider, self.policy, proxy_port=8899)

    def run(self, *, dry_run: bool = False) -> RunReport:
        runtime = self.runtime
        report = run_reconcile(
            lambda _state: [runtime], self.store, self.prober, self.clock, dry_run=dry_run
        )
        self.reports.append(report)
        return report

    def snapshot(self) -> InstanceSnapshot:
        snap = self.store.state.instance(str(self.key)).snapshot
        assert snap is not None
        return snap

    def ids(self) -> set[str]:
        return {p.id for p in self.provider.list_proxies()}
