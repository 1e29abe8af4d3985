"""Rate limits (issue 7.4): a wait above the cap ends that instance's run with one clear error,
and no create or delete follows it in that run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from cloudproxy_cli.adapters.common import rate_limit_wait
from cloudproxy_cli.app.service import InstanceRuntime, run_reconcile
from cloudproxy_cli.core.errors import RateLimitedError
from cloudproxy_cli.core.model import InstanceKey
from cloudproxy_cli.core.policy import InstancePolicy, RollingPolicy
from tests.standins.base import FaultyStandIn
from tests.standins.digitalocean import DigitalOceanStandIn
from tests.standins.harness import HTTP_STANDINS, AllHealthy, WallClock, open_standin
from tests.standins.http import Failure
from tests.support.fakes import MemoryStore

UNTIL = r"rate limited until \d\d:\d\d:\d\dZ"


@pytest.fixture(params=HTTP_STANDINS)
def standin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultyStandIn]:
    yield from open_standin(str(request.param), tmp_path)


@pytest.fixture
def do() -> Iterator[DigitalOceanStandIn]:
    stand = DigitalOceanStandIn()
    try:
        yield stand
    finally:
        stand.close()


def test_a_long_retry_after_ends_the_call_at_once(standin: FaultyStandIn) -> None:
    provider = standin.provider()
    standin.failures.add("list", Failure.rate_limited(retry_after=3600), times=4)
    with pytest.raises(RateLimitedError, match=UNTIL + r" \(Retry-After\)$") as caught:
        provider.list_proxies()
    assert str(caught.value).startswith(f"{standin.name}/default: ")
    assert standin.requests() == ["list"]  # no retry burnt on a wait we will not make


def test_a_rate_limit_that_never_lifts_is_a_rate_limit_error(standin: FaultyStandIn) -> None:
    provider = standin.provider()
    standin.failures.add("list", Failure.rate_limited(retry_after=1), times=4)
    with pytest.raises(RateLimitedError, match="still refused after 4 attempts"):
        provider.list_proxies()
    assert standin.requests() == ["list"] * 4


def _seconds_of_day(when: time) -> int:
    return when.hour * 3600 + when.minute * 60 + when.second


def test_digitalocean_ratelimit_reset_beyond_the_cap_is_named(do: DigitalOceanStandIn) -> None:
    standin_now = datetime.now(UTC)
    do.failures.add("list", Failure.rate_limited(reset_in=600))
    with pytest.raises(RateLimitedError) as caught:
        do.provider().list_proxies()
    message = str(caught.value)
    assert re.fullmatch(
        r"digitalocean/default: list droplets: " + UNTIL + r" \(DigitalOcean ratelimit-reset\)",
        message,
    ), message
    shown = time.fromisoformat(message.split("until ")[1][:8])
    expected = (standin_now + timedelta(seconds=600)).time()
    drift = (_seconds_of_day(shown) - _seconds_of_day(expected)) % 86400
    assert min(drift, 86400 - drift) <= 5  # the reset the header named, in UTC
    assert do.requests() == ["list"] and do.sleeps == []


def test_digitalocean_ratelimit_reset_within_the_cap_is_waited_for(
    do: DigitalOceanStandIn,
) -> None:
    do.add_droplet(tags=["cloudproxy", "cloudproxy-default"])
    do.failures.add("list", Failure.rate_limited(reset_in=5))
    assert len(do.provider().list_proxies()) == 1
    assert len(do.sleeps) == 1 and 3 <= do.sleeps[0] <= 5
    assert do.requests() == ["list", "list"]


def test_rate_limit_wait_reads_retry_after_first_then_ratelimit_reset() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    reset = str(int(now.timestamp()) + 90)
    both = {"Retry-After": "7", "ratelimit-reset": reset, "ratelimit-remaining": "0"}
    assert rate_limit_wait(both, now=now) == (7.0, "Retry-After")
    reset_only = {"ratelimit-reset": reset, "ratelimit-remaining": "0"}
    assert rate_limit_wait(reset_only, now=now) == (90.0, "DigitalOcean ratelimit-reset")
    # Requests left: the reset is when the window refills, not a wait.
    assert (
        rate_limit_wait({"ratelimit-reset": reset, "ratelimit-remaining": "12"}, now=now)[0] is None
    )
    assert rate_limit_wait({}, now=now)[0] is None


def test_a_rate_limited_create_stops_that_instances_other_actions(
    do: DigitalOceanStandIn,
) -> None:
    key = InstanceKey("digitalocean", "default")
    policy = InstancePolicy(rolling=RollingPolicy(enabled=True), min_scaling=3)
    runtime = InstanceRuntime(key, do.provider(), policy, proxy_port=8899)
    other = InstanceRuntime(
        InstanceKey("digitalocean", "second"), do.provider("second"), policy, proxy_port=8899
    )
    store = MemoryStore()
    do.failures.add("create", Failure.rate_limited(reset_in=900))

    report = run_reconcile(lambda _s: [runtime, other], store, AllHealthy(), WallClock())
    mine, theirs = report.instances
    errors = mine.errors()
    assert len(errors) == 3
    assert "rate limited until" in errors[0] and "DigitalOcean ratelimit-reset" in errors[0]
    assert all(e.startswith("not attempted: ") for e in errors[1:])
    # One create sent for the first instance (refused), then none; the other instance's own
    # three are still made (its limit is its own in this test).
    assert do.requests().count("create") == 1 + 3
    assert not theirs.failed
    assert len(runtime.provider.list_proxies()) == 0

    do.reset_requests()
    again = run_reconcile(lambda _s: [runtime, other], store, AllHealthy(), WallClock())
    assert not again.instances[0].failed, again.instances[0].errors()
    assert do.requests().count("create") == 3
    assert len(runtime.provider.list_proxies()) == 3
