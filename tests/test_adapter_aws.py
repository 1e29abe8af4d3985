"""The AWS adapter through boto3 against moto's EC2, behind a gate that counts and fails calls."""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudproxy_cli.adapters.aws import AwsProvider
from cloudproxy_cli.adapters.user_data import render_user_data
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import AwsSettings
from cloudproxy_cli.core.errors import (
    ConfigError,
    FirewallMissingError,
    ProviderError,
    RateLimitedError,
)
from tests.standins.aws import (
    PROXY_PORT,
    REGION,
    UBUNTU_NOBLE,
    AwsStandIn,
    botocore_session,
    tag_specifications,
)

OURS = {"cloudproxy": "true", "cloudproxy-instance": "default"}


@pytest.fixture
def standin() -> Iterator[AwsStandIn]:
    stand = AwsStandIn()
    try:
        yield stand
    finally:
        stand.close()


def created(standin: AwsStandIn, provider: AwsProvider, n: int) -> list[str]:
    provider.ensure_firewall(None)
    ids = [provider.create_proxy().id for _ in range(n)]
    standin.reset_requests()
    return ids


def assert_one_line_without_secrets(standin: AwsStandIn, err: Exception) -> None:
    message = str(err)
    assert "\n" not in message
    for secret in standin.secrets:
        assert secret not in message
    assert err.__cause__ is None  # nothing else (an SDK error and its request) rides along


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- listing ---------------------------------------------------------------------------------


def test_list_follows_every_page(standin: AwsStandIn) -> None:
    provider = standin.provider(page_size=2)
    ids = created(standin, provider, 5)
    assert sorted(p.id for p in provider.list_proxies()) == sorted(ids)
    assert standin.requests() == ["list"] * 3


def test_one_page_is_one_request_filtered_by_both_tags_and_live_states(
    standin: AwsStandIn,
) -> None:
    provider = standin.provider()
    created(standin, provider, 2)
    assert len(provider.list_proxies()) == 2
    assert standin.requests() == ["list"]
    (params,) = standin.sent
    filters = {
        params[f"Filter.{n}.Name"]: {
            v for k, v in params.items() if k.startswith(f"Filter.{n}.Value.")
        }
        for n in range(1, 4)
    }
    assert filters == {
        "tag:cloudproxy-instance": {"default"},
        "tag-key": {"cloudproxy"},
        "instance-state-name": {"pending", "running", "stopping", "stopped"},
    }


def test_a_throttled_page_is_retried_alone(standin: AwsStandIn) -> None:
    provider = standin.provider(page_size=2)
    ids = created(standin, provider, 5)
    standin.fail_next("list", 429, skip=1, retry_after=1)
    assert sorted(p.id for p in provider.list_proxies()) == sorted(ids)
    assert standin.requests() == ["list"] * 4  # page 1, page 2 refused, page 2, page 3
    assert standin.sleeps == [1.0]


def test_a_page_that_keeps_failing_fails_the_whole_list(standin: AwsStandIn) -> None:
    provider = standin.provider(page_size=2)
    created(standin, provider, 5)
    standin.fail_next("list", 500, times=4, skip=1)
    with pytest.raises(ProviderError, match=r"^aws/default: list instances failed"):
        provider.list_proxies()  # never the first page alone


@pytest.mark.parametrize(
    "tags",
    [
        {},
        {"cloudproxy": "true", "cloudproxy-instance": "other"},
        {"cloudproxy-instance": "default"},  # the instance's tag without ours
        {"cloudproxy": "true"},
    ],
    ids=["untagged", "other-instance", "no-cloudproxy-tag", "no-instance-tag"],
)
def test_foreign_vms_are_invisible_and_never_terminated(
    standin: AwsStandIn, tags: dict[str, str]
) -> None:
    provider = standin.provider()
    (mine,) = created(standin, provider, 1)
    foreign = standin.add_foreign_vm(instance=None, tags=tags)
    standin.boot_all()
    assert [p.id for p in provider.list_proxies()] == [mine]
    standin.reset_requests()
    provider.delete_proxy(foreign)
    assert standin.vm_exists(foreign)
    assert standin.actions == ["DescribeInstances"]  # looked at, never terminated


def test_gone_and_going_instances_are_not_listed_but_stopped_ones_are(
    standin: AwsStandIn,
) -> None:
    provider = standin.provider()
    terminated, going, stopped, running = created(standin, provider, 4)
    standin.boot_all()
    standin.set_vm(terminated, state="terminated")
    standin.set_vm(going, state="shutting-down")
    standin.set_vm(stopped, state="stopped")  # still ours, still billing: the engine replaces it
    listed = {p.id: p for p in provider.list_proxies()}
    assert set(listed) == {stopped, running}
    assert listed[stopped].ip is None
    assert listed[running].ip is not None


# --- addresses and times -----------------------------------------------------------------------


def test_no_address_until_running_with_a_public_ip(standin: AwsStandIn) -> None:
    provider = standin.provider()
    proxy = provider.create_proxy()
    assert proxy.ip is None
    assert [p.ip for p in provider.list_proxies()] == [None]  # pending
    standin.set_vm(proxy.id, ip="127.0.0.99")  # AWS may show an address while pending
    assert [p.ip for p in provider.list_proxies()] == [None]
    standin.boot_all()
    (booted,) = provider.list_proxies()
    assert booted.ip is not None
    assert booted.ip.startswith("127.")


def test_running_without_a_public_ip_has_no_address(standin: AwsStandIn) -> None:
    provider = standin.provider()
    provider.create_proxy()
    standin.boot_all(with_address=False)
    assert [p.ip for p in provider.list_proxies()] == [None]


def test_created_at_is_the_launch_time_in_utc(standin: AwsStandIn) -> None:
    provider = standin.provider()
    before = datetime.now(UTC).replace(microsecond=0)
    proxy = provider.create_proxy()
    after = datetime.now(UTC)
    (listed,) = provider.list_proxies()
    for when in (proxy.created_at, listed.created_at):
        assert when.tzinfo is UTC
        assert before - timedelta(seconds=1) <= when <= after
    assert listed.created_at == proxy.created_at


# --- creating ----------------------------------------------------------------------------------


def test_the_create_request_carries_tags_user_data_and_settings(standin: AwsStandIn) -> None:
    provider = standin.provider(size="t3.small")
    group_id = provider.ensure_firewall(None)
    proxy = provider.create_proxy()
    (params,) = standin.creates
    assert tag_specifications(params) == {"instance": OURS}
    sent = base64.b64decode(params["UserData"]).decode()
    assert sent == render_user_data(standin.proxy_settings())
    assert params["InstanceType"] == "t3.small"
    assert params["SecurityGroupId.1"] == group_id
    assert params["MinCount"] == params["MaxCount"] == "1"
    assert params["ClientToken"]
    assert params["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert not any(k.startswith("InstanceMarketOptions") for k in params)
    assert standin.vm_tags(proxy.id) == OURS
    assert "CreateTags" not in standin.actions


def test_create_is_one_request_and_the_image_is_looked_up_once(standin: AwsStandIn) -> None:
    provider = standin.provider()
    provider.ensure_firewall(None)
    standin.reset_requests()
    provider.create_proxy()
    assert standin.actions == ["DescribeImages", "RunInstances"]
    assert standin.requests() == ["other", "create"]
    standin.reset_requests()
    provider.create_proxy()
    assert standin.requests() == ["create"]
    # The newest amd64 Ubuntu 24.04 of Canonical: not arm64, not 22.04, not a look-alike.
    assert standin.creates[0]["ImageId"] == UBUNTU_NOBLE


def test_a_configured_ami_is_used_without_a_lookup(standin: AwsStandIn) -> None:
    provider = standin.provider(ami="ami-0feedfeedfeedfeed")
    provider.ensure_firewall(None)
    standin.reset_requests()
    provider.create_proxy()
    assert standin.actions == ["RunInstances"]
    assert standin.creates[0]["ImageId"] == "ami-0feedfeedfeedfeed"


def test_no_ubuntu_image_in_the_region_is_a_clear_error(standin: AwsStandIn) -> None:
    provider = standin.provider(region="eu-west-3")  # moto's images there: no 24.04
    provider.ensure_firewall(None)
    with pytest.raises(ProviderError, match=r"^aws/default: no Ubuntu 24.04 image.*; set AWS_AMI$"):
        provider.create_proxy()


def test_a_retried_create_reuses_its_client_token(standin: AwsStandIn) -> None:
    provider = standin.provider()
    provider.ensure_firewall(None)
    standin.fail_next("create", 500)
    provider.create_proxy()
    first, second = standin.creates
    assert first["ClientToken"] == second["ClientToken"]  # AWS launches at most one


def test_create_without_ensure_firewall_sets_it_up_itself(standin: AwsStandIn) -> None:
    provider = standin.provider()
    provider.create_proxy()
    assert standin.requests().count("firewall") == 3
    assert standin.requests().count("create") == 1


# --- spot ----------------------------------------------------------------------------------------


def test_spot_launches_a_one_time_spot_instance_and_tags_its_request(
    standin: AwsStandIn,
) -> None:
    provider = standin.provider(spot=True)
    proxy = provider.create_proxy()
    (params,) = standin.creates
    assert params["InstanceMarketOptions.MarketType"] == "spot"
    assert params["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == "one-time"
    assert params["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "terminate"
    assert tag_specifications(params) == {"instance": OURS, "spot-instances-request": OURS}
    (request,) = standin.spot_requests.values()
    assert request.instance_id == proxy.id
    assert request.tags == OURS


@pytest.mark.parametrize(
    ("text", "spot"), [("true", True), ("yes", True), ("1", True), ("false", False), ("no", False)]
)
def test_the_spot_setting_is_a_real_bool_end_to_end(
    standin: AwsStandIn, text: str, spot: bool
) -> None:
    provider = standin.provider(spot=text)  # as the environment gives it
    provider.create_proxy()
    (params,) = standin.creates
    assert ("InstanceMarketOptions.MarketType" in params) is spot


def test_the_provider_refuses_a_spot_flag_that_is_not_a_bool(standin: AwsStandIn) -> None:
    with pytest.raises(TypeError):
        AwsProvider(
            instance="default",
            client=None,
            proxy=standin.proxy_settings(),
            size="t3.micro",
            spot="false",  # type: ignore[arg-type]
        )


def test_deleting_a_spot_instance_cancels_its_request_first(standin: AwsStandIn) -> None:
    provider = standin.provider(spot=True)
    (proxy,) = created(standin, provider, 1)
    provider.delete_proxy(proxy)
    assert standin.actions == [
        "DescribeInstances",
        "CancelSpotInstanceRequests",
        "TerminateInstances",
    ]
    assert standin.requests() == ["other", "delete", "delete"]
    (request,) = standin.spot_requests.values()
    assert request.state == "cancelled"
    assert not standin.vm_exists(proxy)


def test_a_spot_request_already_gone_does_not_stop_the_terminate(standin: AwsStandIn) -> None:
    provider = standin.provider(spot=True)
    (proxy,) = created(standin, provider, 1)
    standin.spot_requests.clear()  # cancelled by someone else: AWS no longer knows it
    provider.delete_proxy(proxy)
    assert not standin.vm_exists(proxy)


# --- deleting ------------------------------------------------------------------------------------


def test_delete_reads_once_then_terminates(standin: AwsStandIn) -> None:
    provider = standin.provider()
    (proxy,) = created(standin, provider, 1)
    provider.delete_proxy(proxy)
    assert standin.actions == ["DescribeInstances", "TerminateInstances"]
    assert standin.requests() == ["other", "delete"]
    assert not standin.vm_exists(proxy)
    assert provider.list_proxies() == []


@pytest.mark.parametrize("vm_id", ["i-0123456789abcdef0", "not-an-instance-id"])
def test_deleting_an_unknown_id_succeeds(standin: AwsStandIn, vm_id: str) -> None:
    provider = standin.provider()
    provider.delete_proxy(vm_id)
    assert standin.requests() == ["other"]


def test_deleting_a_terminated_instance_succeeds_without_a_terminate(
    standin: AwsStandIn,
) -> None:
    provider = standin.provider()
    (proxy,) = created(standin, provider, 1)
    provider.delete_proxy(proxy)
    standin.reset_requests()
    provider.delete_proxy(proxy)
    assert standin.actions == ["DescribeInstances"]


def test_a_failing_terminate_is_a_provider_error(standin: AwsStandIn) -> None:
    provider = standin.provider()
    (proxy,) = created(standin, provider, 1)
    standin.fail_next("delete", 500, times=4)
    with pytest.raises(ProviderError, match=r"terminate instance i-[0-9a-f]+ failed"):
        provider.delete_proxy(proxy)
    assert standin.vm_exists(proxy)


# --- the security group ------------------------------------------------------------------------


def test_the_security_group_is_created_once_then_found_by_name(standin: AwsStandIn) -> None:
    group_id = standin.provider().ensure_firewall(None)
    assert standin.actions == [
        "DescribeSecurityGroups",
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
    ]
    assert group_id is not None
    group = standin.firewall(group_id)
    assert group["name"] == "cloudproxy-default"
    assert group["default_vpc"]
    assert group["tags"] == OURS
    assert group["rules"] == [("tcp", PROXY_PORT, PROXY_PORT, "0.0.0.0/0")]
    standin.reset_requests()
    assert standin.provider().ensure_firewall(None) == group_id  # a later run, a new adapter
    assert standin.requests() == ["firewall"]


def test_a_known_security_group_costs_one_describe(standin: AwsStandIn) -> None:
    provider = standin.provider()
    known = provider.ensure_firewall(None)
    standin.reset_requests()
    assert provider.ensure_firewall(known) == known
    assert standin.actions == ["DescribeSecurityGroups"]
    assert standin.sent[-1]["GroupId.1"] == known


def test_a_known_security_group_that_is_gone_is_made_again(standin: AwsStandIn) -> None:
    provider = standin.provider()
    known = provider.ensure_firewall(None)
    assert known is not None
    standin.backend().delete_security_group(group_id=known)  # deleted in the console
    standin.reset_requests()
    again = provider.ensure_firewall(known)
    assert again is not None and again != known
    assert standin.actions == [
        "DescribeSecurityGroups",  # the remembered id: gone
        "DescribeSecurityGroups",  # by name: gone
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
    ]
    assert standin.firewall(again)["rules"] == [("tcp", PROXY_PORT, PROXY_PORT, "0.0.0.0/0")]


def test_a_changed_security_group_keeps_only_our_rule(standin: AwsStandIn) -> None:
    client = standin.console()
    known = standin.provider().ensure_firewall(None)
    assert known is not None
    client.revoke_security_group_ingress(
        GroupId=known,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": PROXY_PORT, "ToPort": PROXY_PORT,
                        "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )  # fmt: skip
    client.authorize_security_group_ingress(
        GroupId=known,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                        "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                        "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}],
    )  # fmt: skip
    standin.reset_requests()
    assert standin.provider().ensure_firewall(known) == known
    assert standin.actions == [
        "DescribeSecurityGroups",
        "AuthorizeSecurityGroupIngress",
        "RevokeSecurityGroupIngress",
    ]
    assert standin.firewall(known)["rules"] == [("tcp", PROXY_PORT, PROXY_PORT, "0.0.0.0/0")]


@pytest.mark.parametrize(
    ("allowed_ip", "cidr"), [("203.0.113.7", "203.0.113.7/32"), ("2001:db8::7", "2001:db8::7/128")]
)
def test_only_the_allowed_ip_may_reach_the_proxy_port(
    standin: AwsStandIn, allowed_ip: str, cidr: str
) -> None:
    group_id = standin.provider(allowed_ip=allowed_ip).ensure_firewall(None)
    assert group_id is not None
    assert standin.firewall(group_id)["rules"] == [("tcp", PROXY_PORT, PROXY_PORT, cidr)]


def test_a_group_left_without_its_rule_is_repaired(standin: AwsStandIn) -> None:
    backend = standin.backend()
    bare = backend.create_security_group(
        "cloudproxy-default", "a run died here", vpc_id=backend.get_default_vpc().id
    )
    assert standin.provider().ensure_firewall(None) == bare.id
    assert standin.actions == ["DescribeSecurityGroups", "AuthorizeSecurityGroupIngress"]
    assert standin.firewall(bare.id)["rules"] == [("tcp", PROXY_PORT, PROXY_PORT, "0.0.0.0/0")]


def test_a_vanished_security_group_is_firewall_missing(standin: AwsStandIn) -> None:
    provider = standin.provider()
    gone = provider.ensure_firewall(None)
    assert gone is not None
    standin.backend().delete_security_group(group_id=gone)  # after this run verified it
    standin.reset_requests()
    with pytest.raises(FirewallMissingError, match=rf"^aws/default: security group {gone}"):
        provider.create_proxy()
    provider.create_proxy()  # forgot it: sets up a new group and launches
    assert standin.requests().count("firewall") == 3


# --- failures, retries and credentials ------------------------------------------------------


def test_429_with_retry_after_is_waited_for_then_succeeds(standin: AwsStandIn) -> None:
    provider = standin.provider()
    created(standin, provider, 1)
    standin.fail_next("list", 429, retry_after=3)
    assert len(provider.list_proxies()) == 1
    assert standin.requests() == ["list", "list"]
    assert standin.sleeps == [3.0]


def test_throttling_without_retry_after_backs_off(standin: AwsStandIn) -> None:
    provider = standin.provider()
    standin.fail_next("list", 503, times=2)
    assert provider.list_proxies() == []
    assert standin.sleeps == [0.5, 1.0]


def test_5xx_until_retries_are_exhausted_is_a_one_line_error(standin: AwsStandIn) -> None:
    provider = standin.provider()
    standin.fail_next("list", 500, times=10)
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    assert str(info.value).startswith(
        "aws/default: list instances failed (InternalError, HTTP 500); gave up retrying"
    )
    assert_one_line_without_secrets(standin, info.value)
    assert standin.requests() == ["list"] * 4
    assert standin.sleeps == [0.5, 1.0, 2.0]


def test_a_server_asking_for_a_long_wait_is_not_waited_for(standin: AwsStandIn) -> None:
    provider = standin.provider()
    standin.fail_next("list", 429, retry_after=3600)
    with pytest.raises(RateLimitedError, match=r"rate limited until .*Z \(Retry-After\)$"):
        provider.list_proxies()
    assert standin.requests() == ["list"]
    assert standin.sleeps == []


@pytest.mark.parametrize(("status", "code"), [(401, "AuthFailure"), (403, "UnauthorizedOperation")])
def test_auth_failures_are_one_line_and_not_retried(
    standin: AwsStandIn, status: int, code: str
) -> None:
    provider = standin.provider()
    standin.fail_next("list", status)
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    assert str(info.value) == (
        f"aws/default: authentication failed ({code}); "
        "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )
    assert_one_line_without_secrets(standin, info.value)
    assert standin.requests() == ["list"]


def test_a_wrong_secret_fails_the_signature_check(standin: AwsStandIn) -> None:
    key = standin.key("eu")
    provider = standin.provider("eu", secret_access_key=key.secret[::-1])
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    assert str(info.value) == (
        "aws/eu: authentication failed (AuthFailure); "
        "check AWS_EU_ACCESS_KEY_ID/AWS_EU_SECRET_ACCESS_KEY"
    )


def test_an_unreachable_endpoint_is_a_one_line_error(standin: AwsStandIn) -> None:
    provider = standin.provider(api_endpoint=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ProviderError, match=r"^aws/default: list instances failed \(Endpoint"):
        provider.list_proxies()
    assert len(standin.sleeps) == 3


def test_no_secret_reaches_the_logs(standin: AwsStandIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    provider = standin.provider(spot=True)
    proxy = provider.create_proxy()
    provider.list_proxies()
    provider.delete_proxy(proxy.id)
    standin.fail_next("list", 401)
    with pytest.raises(ProviderError):
        provider.list_proxies()
    user_data = standin.creates[0]["UserData"]
    assert caplog.text  # the logs were captured...
    for secret in (*standin.secrets, user_data, user_data[:40]):
        assert secret not in caplog.text  # ...and hold no key and no user data


# --- accounts and settings -----------------------------------------------------------------------


def test_accounts_are_kept_apart_by_their_keys(standin: AwsStandIn) -> None:
    # Same instance name, so same tags: only the keys (so the account) tell them apart.
    in_a, in_b = standin.provider(account="a"), standin.provider(account="b")
    a, b = in_a.create_proxy(), in_b.create_proxy()
    assert standin.vm_account(a.id) == "a"
    assert standin.vm_account(b.id) == "b"
    assert [p.id for p in in_a.list_proxies()] == [a.id]
    assert [p.id for p in in_b.list_proxies()] == [b.id]
    in_b.delete_proxy(a.id)  # another account's instance: unknown there
    assert standin.vm_exists(a.id)


def test_mixed_up_credentials_are_refused(standin: AwsStandIn) -> None:
    other = standin.key("default", "b")
    provider = standin.provider(secret_access_key=other.secret)  # a's key id, b's secret
    with pytest.raises(ProviderError, match="authentication failed"):
        provider.list_proxies()


def test_a_named_instance_needs_its_own_keys(standin: AwsStandIn) -> None:
    settings = AwsSettings(enabled=True, api_endpoint=standin.endpoint)
    with pytest.raises(ConfigError, match=r"^AWS_EU_ACCESS_KEY_ID/AWS_EU_SECRET_ACCESS_KEY: req"):
        factories.aws(instance="eu", settings=settings, proxy=standin.proxy_settings())
    half = AwsSettings.model_validate({"enabled": True, "access_key_id": "AKIAEXAMPLE"})
    with pytest.raises(ConfigError, match="set both or neither"):
        factories.aws(instance="default", settings=half, proxy=standin.proxy_settings())


def test_a_malformed_region_is_a_config_error(standin: AwsStandIn) -> None:
    with pytest.raises(ConfigError, match=r"^aws/default: .*region"):
        standin.provider(region="not a region")


def test_the_default_instance_may_use_boto3s_chain_and_endpoint_variable(
    standin: AwsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = standin.key("default")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", standin.endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_EC2", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata server
    provider = factories.aws(
        instance="default",
        settings=AwsSettings(enabled=True, region=REGION),
        proxy=standin.proxy_settings(),
        botocore_session=botocore_session(),
    )
    assert provider.list_proxies() == []
    assert standin.requests() == ["list"]


def test_the_default_instance_takes_the_session_token_of_its_environment_keys(
    standin: AwsStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = standin.key("default")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-of-the-environment")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAOTHERKEYS")
    standin.provider().list_proxies()  # keys from elsewhere (TOML): the token is not theirs
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key.key_id)
    standin.provider().list_proxies()  # the environment's own (temporary) keys
    standin.provider("eu").list_proxies()  # a named instance never borrows from it
    assert standin.session_tokens == [None, "session-token-of-the-environment", None]


def test_api_endpoint_wins_over_the_endpoint_variable(
    standin: AwsStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{closed_port()}")
    assert standin.provider().list_proxies() == []
    assert standin.requests() == ["list"]
