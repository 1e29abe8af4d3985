"""The stand-ins' fault modes (``tests/standins/http.py``), the same for every HTTP stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.ports import Provider
from tests.standins.aws import AwsStandIn
from tests.standins.base import FaultyStandIn
from tests.standins.digitalocean import DigitalOceanStandIn
from tests.standins.gcp import GcpStandIn
from tests.standins.harness import HTTP_STANDINS, open_standin
from tests.standins.hetzner import HetznerStandIn
from tests.standins.http import Failure
from tests.standins.vultr import VultrStandIn


@pytest.fixture(params=HTTP_STANDINS)
def standin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultyStandIn]:
    yield from open_standin(str(request.param), tmp_path)


def assert_one_line_without_secrets(message: str, standin: FaultyStandIn) -> None:
    assert "\n" not in message and "Traceback" not in message
    for secret in standin.secrets:
        assert not secret or secret not in message


def test_a_ghost_create_makes_the_vm_and_loses_the_answer(standin: FaultyStandIn) -> None:
    provider = standin.provider()
    # Every attempt a ghost: whatever the adapter does, each request it sent made a VM.
    standin.failures.add("create", Failure.ghost(502), times=4)
    try:
        provider.create_proxy()
    except ProviderError as exc:
        assert_one_line_without_secrets(str(exc), standin)
    assert standin.requests().count("create") >= 1
    # Idempotent creates (ClientToken, requestId, unique names) or a look-up before a resend.
    assert len(standin.vm_ids()) == 1


def test_a_dropped_connection_fails_the_list(standin: FaultyStandIn) -> None:
    provider = standin.provider()
    provider.create_proxy()
    standin.failures.add("list", Failure.drop(), times=4)  # every attempt of the retry budget
    with pytest.raises(ProviderError) as caught:
        provider.list_proxies()
    assert_one_line_without_secrets(str(caught.value), standin)
    assert standin.failures.pending("list") == 0  # retried on every attempt, then gave up
    assert len(provider.list_proxies()) == 1  # served normally again


def test_a_non_json_answer_fails_the_list(standin: FaultyStandIn) -> None:
    provider = standin.provider()
    provider.create_proxy()
    body = b"<html>not json</html>" if standin.name != "aws" else b"{not xml"
    standin.failures.add("list", Failure.malformed(body), times=4)
    with pytest.raises(ProviderError) as caught:
        provider.list_proxies()
    assert_one_line_without_secrets(str(caught.value), standin)


def test_the_failure_queue_skips_then_fails_then_serves() -> None:
    standin = DigitalOceanStandIn()
    try:
        url = standin.endpoint + "droplets"
        auth = {"Authorization": f"Bearer {standin.tokens[0]}"}
        standin.failures.add("list", Failure.error(503, retry_after=7), skip=1)
        statuses = [requests.get(url, headers=auth, timeout=5) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 503, 200]
        assert statuses[1].headers["Retry-After"] == "7"
    finally:
        standin.close()


def test_rate_limited_answers_carry_digitalocean_headers() -> None:
    standin = DigitalOceanStandIn()
    try:
        standin.failures.add("list", Failure.rate_limited(retry_after=3, reset_in=600))
        answer = requests.get(
            standin.endpoint + "droplets",
            headers={"Authorization": f"Bearer {standin.tokens[0]}"},
            timeout=5,
        )
        assert answer.status_code == 429
        assert answer.headers["Retry-After"] == "3"
        assert answer.headers["ratelimit-remaining"] == "0"
        assert int(answer.headers["ratelimit-reset"]) > 0
    finally:
        standin.close()


def test_a_hang_outlasts_a_short_client_timeout_and_still_processes() -> None:
    standin = DigitalOceanStandIn()
    try:
        standin.failures.add("create", Failure.hang(1.0))
        body = {"name": "n1", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}
        with pytest.raises(requests.ReadTimeout):
            requests.post(
                standin.endpoint + "droplets",
                json=body,
                headers={"Authorization": f"Bearer {standin.tokens[0]}"},
                timeout=(5, 0.2),
            )
        assert len(standin.vm_ids()) == 1  # processed before the answer was held
    finally:
        standin.close()


def paged_provider(standin: FaultyStandIn) -> Provider:
    """The adapter, with pages of one VM (set on whichever side each stand-in allows)."""
    if isinstance(standin, GcpStandIn):
        standin.page_size = 1  # the server's cap
    if isinstance(standin, HetznerStandIn):
        standin.max_per_page = 1
        return standin.provider()
    if isinstance(standin, DigitalOceanStandIn | VultrStandIn | AwsStandIn):
        return standin.provider(page_size=1)
    return standin.provider()


def test_a_later_page_that_fails_fails_the_whole_list(standin: FaultyStandIn) -> None:
    provider = paged_provider(standin)
    for _ in range(2):
        provider.create_proxy()
    assert len(provider.list_proxies()) == 2
    standin.reset_requests()
    standin.failures.add("list", Failure.drop(), times=4, skip=1)  # page 2, every attempt
    with pytest.raises(ProviderError) as caught:
        provider.list_proxies()
    assert_one_line_without_secrets(str(caught.value), standin)
    assert standin.requests().count("list") == 5  # page 1 once, page 2 four times
