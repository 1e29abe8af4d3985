"""One contract, every adapter: the same behaviour through each real SDK against its stand-in."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudproxy_cli.app.service import InstanceRuntime, run_reconcile
from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import InstanceKey
from cloudproxy_cli.core.policy import InstancePolicy, RollingPolicy
from tests.standins.base import StandIn
from tests.standins.harness import AllHealthy
from tests.support.fakes import MemoryStore

PROVIDERS = ["fake", "digitalocean", "aws", "gcp", "hetzner", "vultr"]


@pytest.fixture(params=PROVIDERS)
def standin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StandIn]:
    module = importlib.import_module(f"tests.standins.{request.param}")
    stand = module.make_standin(tmp_path)
    try:
        yield stand
    finally:
        stand.close()


def marks_instance(tags: dict[str, str], instance: str) -> bool:
    """Both marks: ``cloudproxy`` and this instance's (a tag or a key=value label)."""
    return "cloudproxy" in tags and (
        f"cloudproxy-{instance}" in tags
        or tags.get("cloudproxy-instance") == instance
        or tags.get("cloudproxy_instance") == instance  # GCP's current label key
    )


def test_create_is_listed_with_both_marks_and_an_aware_created_at(standin: StandIn) -> None:
    provider = standin.provider()
    before = datetime.now(UTC) - timedelta(minutes=5)
    created = provider.create_proxy()
    listed = {p.id: p for p in provider.list_proxies()}
    assert created.id in listed
    proxy = listed[created.id]
    assert proxy.created_at.tzinfo is not None
    assert proxy.created_at.utcoffset() == timedelta(0)
    assert proxy.created_at >= before or standin.name == "fake"
    assert marks_instance(standin.vm_tags(created.id), "default")


def test_booted_proxies_have_a_loopback_address(standin: StandIn) -> None:
    provider = standin.provider()
    created = provider.create_proxy()
    standin.boot_all()
    (proxy,) = [p for p in provider.list_proxies() if p.id == created.id]
    assert proxy.ip is not None
    # Stand-ins must only ever hand out loopback addresses (moto's random IPs are its own).
    if standin.name != "aws":
        assert proxy.ip.startswith("127.")


def test_delete_removes_and_a_second_delete_succeeds(standin: StandIn) -> None:
    provider = standin.provider()
    created = provider.create_proxy()
    provider.delete_proxy(created.id)
    assert created.id not in {p.id for p in provider.list_proxies()}
    assert not standin.vm_exists(created.id)
    provider.delete_proxy(created.id)  # already gone: success


@pytest.mark.parametrize("owner", [None, "other"], ids=["untagged", "other-instance"])
def test_foreign_vms_are_never_listed_nor_deleted(standin: StandIn, owner: str | None) -> None:
    provider = standin.provider("default")
    mine = provider.create_proxy()
    foreign = standin.add_foreign_vm(instance=owner)
    assert {p.id for p in provider.list_proxies()} == {mine.id}
    provider.delete_proxy(foreign)
    assert standin.vm_exists(foreign), "an adapter deleted a VM it did not create"


def test_instances_see_only_their_own(standin: StandIn) -> None:
    first, second = standin.provider("default"), standin.provider("second")
    a, b = first.create_proxy(), second.create_proxy()
    assert {p.id for p in first.list_proxies()} == {a.id}
    assert {p.id for p in second.list_proxies()} == {b.id}
    second.delete_proxy(a.id)
    assert standin.vm_exists(a.id)


def test_a_failed_list_raises_never_returns_empty(standin: StandIn) -> None:
    provider = standin.provider()
    provider.create_proxy()
    standin.fail_next("list", 503, times=20, retry_after=0)
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    assert "\n" not in str(info.value)


def test_secrets_never_appear_in_errors_or_logs(
    standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = standin.provider()
    standin.fail_next("list", 401, times=20)
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    message = str(info.value)
    assert "\n" not in message
    assert standin.name in message or standin.name == "fake"
    for secret in standin.secrets:
        assert secret not in message
        assert secret not in caplog.text
        assert secret not in repr(info.value.__cause__)


# --- API call budget, counted at the stand-in ----------------------------------------------------


class Clock:
    """The real time, moved on by ``skip`` (the hourly firewall check)."""

    def __init__(self) -> None:
        self.skipped = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skipped


def test_steady_state_costs_one_list_and_no_firewall_call(standin: StandIn) -> None:
    key = InstanceKey(standin.name, "default")
    policy = InstancePolicy(rolling=RollingPolicy(enabled=True), min_scaling=2)
    runtime = InstanceRuntime(key, standin.provider(), policy, proxy_port=8899)
    store = MemoryStore()
    clock = Clock()

    def run() -> None:
        report = run_reconcile(lambda _s: [runtime], store, AllHealthy(), clock)
        assert not report.instances[0].failed, report.instances[0].errors()

    run()  # creates two proxies: one firewall set-up, then one create request each
    first = standin.requests()
    assert first.count("list") == 1
    assert first.count("create") == 2
    firewall_first = first.count("firewall")
    assert 1 <= firewall_first <= 3
    standin.boot_all()
    standin.reset_requests()
    run()  # nothing to do, and the hourly firewall check is not due
    assert standin.requests() == ["list"]
    # Another proxy later: one create, after one read that verifies the remembered firewall.
    vanished = runtime.provider.list_proxies()[0]
    runtime.provider.delete_proxy(vanished.id)
    standin.reset_requests()
    run()
    assert standin.requests().count("create") == 1
    assert standin.requests().count("firewall") == 1
    # An hour later, nothing to create: the list, and the one read of the hourly check.
    standin.boot_all()
    clock.skipped = timedelta(hours=1, seconds=1)
    standin.reset_requests()
    run()
    assert standin.requests() == ["list", "firewall"]
    standin.reset_requests()
    run()
    assert standin.requests() == ["list"]
