"""The engine's in-memory fake provider dressed as a stand-in, so the contract covers it too."""

from __future__ import annotations

from pathlib import Path

from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import Proxy
from tests.standins.base import Kind
from tests.support.fakes import FakeClock, FakeCloud, FakeProvider


class _CountingProvider(FakeProvider):
    def __init__(self, standin: FakeStandIn, instance: str) -> None:
        super().__init__(standin.cloud, instance)
        self._standin = standin

    def _served(self, kind: Kind) -> None:
        self._standin.log.append(kind)
        pending = self._standin.failures.get(kind, 0)
        if pending:
            self._standin.failures[kind] = pending - 1
            raise ProviderError(f"fake cloud: {self._standin.fail_status[kind]}")

    def list_proxies(self) -> list[Proxy]:
        self._served("list")
        return super().list_proxies()

    def create_proxy(self) -> Proxy:
        self._served("create")
        return super().create_proxy()

    def delete_proxy(self, proxy_id: str) -> None:
        self._served("delete")
        super().delete_proxy(proxy_id)

    def ensure_firewall(self, known_id: str | None) -> str | None:
        self._served("firewall")  # verified every time it is asked
        return super().ensure_firewall(known_id)


class FakeStandIn:
    name = "fake"
    secrets: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.cloud = FakeCloud(FakeClock())
        self.log: list[Kind] = []
        self.failures: dict[Kind, int] = {}
        self.fail_status: dict[Kind, int] = {}
        self._n = 0

    def provider(self, instance: str = "default") -> _CountingProvider:
        return _CountingProvider(self, instance)

    def add_foreign_vm(self, *, instance: str | None) -> str:
        self._n += 1
        tags = (
            frozenset() if instance is None else frozenset({"cloudproxy", f"cloudproxy-{instance}"})
        )
        return self.cloud.add(f"foreign-{self._n}", age_s=10, tags=tags).id

    def vm_exists(self, vm_id: str) -> bool:
        return vm_id in self.cloud.vms

    def vm_ids(self) -> list[str]:
        return list(self.cloud.vms)

    def vm_tags(self, vm_id: str) -> dict[str, str]:
        return dict.fromkeys(self.cloud.vms[vm_id].tags, "")

    def boot_all(self) -> None:
        for vm in self.cloud.vms.values():
            vm.ready_at = self.cloud.clock.now()

    def fail_next(
        self, kind: Kind, status: int, *, times: int = 1, retry_after: int | None = None
    ) -> None:
        self.failures[kind] = times
        self.fail_status[kind] = status

    def requests(self) -> list[Kind]:
        return list(self.log)

    def reset_requests(self) -> None:
        self.log.clear()

    def close(self) -> None:
        return None


def make_standin(tmp_path: Path) -> FakeStandIn:
    return FakeStandIn()
