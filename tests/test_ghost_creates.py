"""A create whose answer is lost (the VM made, the answer a 5xx, a dropped connection or a read
timeout) ends with exactly one VM, counted in each stand-in's own state (issue 7.1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cloudproxy_cli.adapters.digitalocean import DigitalOceanProvider
from cloudproxy_cli.adapters.vultr import VultrProvider
from cloudproxy_cli.app.service import InstanceRuntime, run_reconcile
from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import InstanceKey
from cloudproxy_cli.core.policy import InstancePolicy, RollingPolicy
from cloudproxy_cli.core.ports import Provider
from tests.standins.base import FaultyStandIn
from tests.standins.digitalocean import DigitalOceanStandIn
from tests.standins.harness import HTTP_STANDINS, AllHealthy, WallClock, open_standin
from tests.standins.http import Failure
from tests.standins.vultr import VultrStandIn
from tests.support.fakes import MemoryStore

SHORT_READ = (5.0, 0.3)  # (connect, read): a held answer times out fast


@pytest.fixture(params=HTTP_STANDINS)
def standin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultyStandIn]:
    yield from open_standin(str(request.param), tmp_path)


@pytest.mark.parametrize(
    "lost", [Failure.ghost(502), Failure.ghost(None)], ids=["answer-502", "connection-dropped"]
)
def test_a_ghost_create_leaves_exactly_one_vm(standin: FaultyStandIn, lost: Failure) -> None:
    provider = standin.provider()
    standin.failures.add("create", lost)
    created = provider.create_proxy()
    assert standin.vm_ids() == [created.id]
    assert [p.id for p in provider.list_proxies()] == [created.id]


# --- DigitalOcean and Vultr: no idempotency key, so a look-up by name -----------------------


def short_timeout_provider(standin: FaultyStandIn) -> Provider:
    """The adapter as the factory makes it, but with a read timeout a held answer outlasts."""
    if isinstance(standin, DigitalOceanStandIn):
        return DigitalOceanProvider(
            instance="default", token=standin.tokens[0], token_env="DIGITALOCEAN_ACCESS_TOKEN",
            endpoint=standin.endpoint, region="lon1", size="s-1vcpu-1gb",
            image="ubuntu-24-04-x64", proxy=standin.proxy_settings(), sleep=standin.sleeps.append,
            timeout_s=SHORT_READ,
        )  # fmt: skip
    assert isinstance(standin, VultrStandIn)
    session = requests.Session()
    session.trust_env = False
    return VultrProvider(
        instance="default", token=standin.tokens[0], token_env="VULTR_API_KEY",
        endpoint=standin.endpoint, region="ewr", plan="vc2-1c-1gb", os_id=2284,
        proxy=standin.proxy_settings(), session=session, sleep=standin.sleeps.append,
        timeout_s=SHORT_READ,
    )  # fmt: skip


@pytest.fixture(params=["digitalocean", "vultr"])
def keyless(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultyStandIn]:
    yield from open_standin(str(request.param), tmp_path)


def test_a_create_whose_answer_timed_out_is_found_not_sent_again(keyless: FaultyStandIn) -> None:
    provider = short_timeout_provider(keyless)
    keyless.failures.add("create", Failure.hang(1.0))  # made at once, answered too late
    created = provider.create_proxy()
    assert keyless.vm_ids() == [created.id]
    assert keyless.requests() == ["create", "list"]  # the look-up, not a second create


def test_a_refused_create_is_sent_again_at_once(keyless: FaultyStandIn) -> None:
    provider = keyless.provider()
    keyless.failures.add("create", Failure.rate_limited(retry_after=1))
    created = provider.create_proxy()
    assert keyless.vm_ids() == [created.id]
    assert keyless.requests() == ["create", "create"]  # a 429 made nothing: no look-up


@pytest.mark.parametrize("failed", [Failure.error(503), Failure.drop()], ids=["503", "dropped"])
def test_a_lost_answer_not_found_is_sent_again_once(
    keyless: FaultyStandIn, failed: Failure
) -> None:
    provider = keyless.provider()
    keyless.failures.add("create", failed)  # failed for real, before anything was made
    created = provider.create_proxy()
    assert keyless.vm_ids() == [created.id]
    assert keyless.requests() == ["create", "list", "create"]


def test_a_look_up_never_adopts_another_instances_vm(keyless: FaultyStandIn) -> None:
    mine, other = keyless.provider("default"), keyless.provider("other")
    other.create_proxy()
    keyless.failures.add("create", Failure.error(503))
    created = mine.create_proxy()
    assert len(keyless.vm_ids()) == 2
    assert [p.id for p in mine.list_proxies()] == [created.id]


def test_the_next_reconcile_adopts_a_ghost_instead_of_creating_another(
    keyless: FaultyStandIn,
) -> None:
    key = InstanceKey(keyless.name, "default")
    policy = InstancePolicy(rolling=RollingPolicy(enabled=True), min_scaling=1)
    runtime = InstanceRuntime(key, keyless.provider(), policy, proxy_port=8899)
    store = MemoryStore()
    # The create is made but its answer lost, and every look-up after it fails too: this run
    # cannot tell, so it gives up without sending the create again.
    keyless.failures.add("create", Failure.ghost(502))
    keyless.failures.add("list", Failure.error(503), times=3, skip=1)  # the run's own list first

    first = run_reconcile(lambda _s: [runtime], store, AllHealthy(), WallClock())
    assert first.instances[0].failed
    assert all(isinstance(e, str) and "\n" not in e for e in first.instances[0].errors())
    assert len(keyless.vm_ids()) == 1
    assert keyless.requests().count("create") == 1

    keyless.reset_requests()
    second = run_reconcile(lambda _s: [runtime], store, AllHealthy(), WallClock())
    assert not second.instances[0].failed, second.instances[0].errors()
    assert "create" not in keyless.requests()
    assert len(keyless.vm_ids()) == 1
    keyless.boot_all()
    third = run_reconcile(lambda _s: [runtime], store, AllHealthy(), WallClock())
    assert not third.instances[0].failed
    assert len(keyless.vm_ids()) == 1


def test_a_create_that_cannot_tell_raises_a_one_line_error(keyless: FaultyStandIn) -> None:
    provider = keyless.provider()
    keyless.failures.add("create", Failure.ghost(500))
    keyless.failures.add("list", Failure.error(503), times=3)
    with pytest.raises(ProviderError) as caught:
        provider.create_proxy()
    message = str(caught.value)
    assert "\n" not in message and "look-up" in message and "next run adopts" in message
    assert not any(s and s in message for s in keyless.secrets)
    assert len(keyless.vm_ids()) == 1
