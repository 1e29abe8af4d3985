"""In-memory stand-ins that really implement the core's ports: cloud, clock, prober, store."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import ProbeResult, ProbeTarget, Proxy
from cloudproxy_cli.core.state import State

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@dataclass
class FakeVM:
    id: str
    created_at: datetime
    ip: str | None
    ready_at: datetime  # starts answering probes at this instant
    dead: bool = False  # never answers (a broken VM)
    tags: frozenset[str] = frozenset()


@dataclass
class FakeCloud:
    """One fake cloud account shared by several instances, as a real account would be."""

    clock: FakeClock
    vms: dict[str, FakeVM] = field(default_factory=dict)
    boot_seconds: float = 90.0
    prober_broken: bool = False
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    firewalls: set[str] = field(default_factory=set)
    firewall_calls: int = 0

    def add(
        self,
        vm_id: str,
        *,
        age_s: float,
        tags: frozenset[str],
        ready: bool = True,
        dead: bool = False,
        ip: str | None = None,
    ) -> FakeVM:
        now = self.clock.now()
        created = now - timedelta(seconds=age_s)
        n = next(self._ids)
        vm = FakeVM(
            vm_id,
            created,
            ip or f"127.0.{n // 250}.{n % 250 + 1}",
            ready_at=created if ready else now + timedelta(seconds=self.boot_seconds),
            dead=dead,
            tags=tags,
        )
        self.vms[vm_id] = vm
        return vm

    def healthy(self, vm_id: str) -> bool:
        vm = self.vms.get(vm_id)
        return (
            vm is not None
            and not vm.dead
            and not self.prober_broken
            and self.clock.now() >= vm.ready_at
        )


class FakeProvider:
    """Implements the Provider protocol over a FakeCloud; sees only VMs with its own tag."""

    def __init__(self, cloud: FakeCloud, instance: str = "default") -> None:
        self.cloud = cloud
        self.tag = f"cloudproxy-{instance}"
        self.fail_list = False
        self.fail_create = False
        self.fail_delete = False
        self.list_calls = 0

    def _mine(self, vm: FakeVM) -> bool:
        return {"cloudproxy", self.tag} <= vm.tags

    def add(self, vm_id: str, *, age_s: float, **kwargs: object) -> FakeVM:
        return self.cloud.add(
            vm_id,
            age_s=age_s,
            tags=frozenset({"cloudproxy", self.tag}),
            **kwargs,  # type: ignore[arg-type]
        )

    def list_proxies(self) -> list[Proxy]:
        self.list_calls += 1
        if self.fail_list:
            raise ProviderError("fake cloud: 503 service unavailable")
        return [
            Proxy(vm.id, vm.created_at, vm.ip) for vm in self.cloud.vms.values() if self._mine(vm)
        ]

    def create_proxy(self) -> Proxy:
        if self.fail_create:
            raise ProviderError("fake cloud: quota exceeded")
        n = next(self.cloud._ids)
        vm = self.cloud.add(
            f"vm-{n}", age_s=0, tags=frozenset({"cloudproxy", self.tag}), ready=False
        )
        self.cloud.created.append(vm.id)
        return Proxy(vm.id, vm.created_at, vm.ip)

    def delete_proxy(self, proxy_id: str) -> None:
        if self.fail_delete:
            raise ProviderError("fake cloud: 500 internal error")
        vm = self.cloud.vms.get(proxy_id)
        if vm is not None and self._mine(vm):
            del self.cloud.vms[proxy_id]
            self.cloud.deleted.append(proxy_id)

    def ensure_firewall(self, known_id: str | None) -> str | None:
        """As the adapters: one read always, one more to make it again if it is gone."""
        self.cloud.firewall_calls += 1
        if self.tag not in self.cloud.firewalls:
            self.cloud.firewall_calls += 1
            self.cloud.firewalls.add(self.tag)
        return f"fw-{self.tag}"


class FakeProber:
    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        self.calls = 0

    def probe(self, targets: Sequence[ProbeTarget]) -> dict[str, ProbeResult]:
        self.calls += 1
        return {
            t.proxy_id: ProbeResult(True)
            if self.cloud.healthy(t.proxy_id)
            else ProbeResult(False, "connection refused")
            for t in targets
        }


@dataclass
class Loaded:
    state: State
    warning: str | None = None


class MemoryStore:
    """A StateStore in memory; counts saves and can refuse the lock like a held file lock."""

    def __init__(self, state: State | None = None) -> None:
        self.state = state or State()
        self.saves = 0
        self.locked = False

    @contextmanager
    def lock(self) -> Iterator[None]:
        assert not self.locked, "lock taken twice"
        self.locked = True
        try:
            yield
        finally:
            self.locked = False

    def load(self) -> Loaded:
        return Loaded(self.state)

    def save(self, state: State) -> None:
        assert self.locked, "saved without holding the lock"
        self.state = state
        self.saves += 1
