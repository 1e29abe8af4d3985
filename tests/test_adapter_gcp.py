"""The GCP adapter through the real google-cloud-compute SDK against the Compute stand-in."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.gcp import GcpProvider
from cloudproxy_cli.adapters.user_data import render_user_data
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import GcpSettings
from cloudproxy_cli.core.errors import ConfigError, ProviderError
from tests.standins.gcp import PROXY, GcpStandIn, make_standin

NAME = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every connection resolves its host first: anything but loopback (googleapis.com, the
    metadata server) fails the test instead of leaving this machine."""
    real = socket.getaddrinfo
    refused: list[str] = []

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in {"127.0.0.1", "localhost"}:
            refused.append(str(host))
            raise OSError(f"test refused a connection to {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield refused
    assert refused == []


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[GcpStandIn]:
    stand = make_standin(tmp_path)
    try:
        yield stand
    finally:
        stand.close()


class Sleeps(list[float]):
    """Records the delays call_with_retries asked for, instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def provider(standin: GcpStandIn, instance: str = "default", **kwargs: Any) -> GcpProvider:
    return standin.provider(instance, sleep=kwargs.pop("sleep", Sleeps()), **kwargs)


# --- listing -------------------------------------------------------------------------------


def test_pagination_follows_next_page_token(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    created = {gcp.create_proxy().id for _ in range(5)}
    standin.page_size = 2
    standin.reset_requests()
    assert {p.id for p in gcp.list_proxies()} == created
    lists = standin.requests_of("list")
    assert [r.query.get("pageToken") for r in lists] == [None, "2", "4"]
    assert standin.requests() == ["list"] * 3


def test_a_next_page_token_that_repeats_is_an_error_not_a_loop(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    gcp.create_proxy()
    standin.endless_pages = "again"
    standin.reset_requests()
    with pytest.raises(ProviderError, match=r"^gcp/default: list: the API's next page repeats"):
        gcp.list_proxies()
    assert standin.requests() == ["list"] * 2  # the first page, then "0" once


def test_an_endless_next_page_token_stops_at_the_page_bound(standin: GcpStandIn) -> None:
    gcp = provider(standin, max_pages=7)
    gcp.create_proxy()
    standin.endless_pages = "new"
    standin.reset_requests()
    with pytest.raises(ProviderError, match=r"^gcp/default: list: more than 7 pages$"):
        gcp.list_proxies()
    assert standin.requests() == ["list"] * 7


def test_one_page_is_one_request_filtered_by_the_plain_label(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    gcp.create_proxy()
    standin.reset_requests()
    gcp.list_proxies()
    assert standin.requests() == ["list"]
    (request,) = standin.requests_of("list")
    # No hyphenated key in the filter; the instance label (either key) is checked here.
    assert request.query["filter"] == 'labels.cloudproxy = "true"'


def test_vms_labelled_with_the_old_instance_key_stay_ours(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    old = standin.add_foreign_vm(instance="default")  # cloudproxy-instance=default
    assert standin.vm_tags(old)["cloudproxy-instance"] == "default"
    new = gcp.create_proxy()
    assert "cloudproxy-instance" not in standin.vm_tags(new.id)
    assert standin.vm_tags(new.id)["cloudproxy_instance"] == "default"
    assert sorted(p.id for p in gcp.list_proxies()) == sorted([old, new.id])
    gcp.delete_proxy(old)  # owned under the old key: deletable
    assert not standin.vm_exists(old)


def test_the_new_instance_key_decides_over_an_old_one(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    relabelled = standin.add_foreign_vm(instance="default")
    standin.vms[relabelled]["labels"]["cloudproxy_instance"] = "other"
    assert gcp.list_proxies() == []
    gcp.delete_proxy(relabelled)
    assert standin.vm_exists(relabelled)


def test_created_at_is_utc_from_a_pacific_timestamp(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    created = gcp.create_proxy()
    (listed,) = gcp.list_proxies()
    stamp = standin.vms[created.id]["creationTimestamp"]
    assert stamp.endswith("-07:00")
    assert listed.created_at.utcoffset() == timedelta(0)
    assert listed.created_at == datetime.fromisoformat(stamp)
    assert abs(listed.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert created.created_at.tzinfo is not None


def test_no_ip_until_booted(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    created = gcp.create_proxy()
    assert created.ip is None
    assert [p.ip for p in gcp.list_proxies()] == [None]
    standin.boot_all()
    (proxy,) = gcp.list_proxies()
    nat = standin.vms[created.id]["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
    assert proxy.ip == nat
    assert proxy.ip is not None and proxy.ip.startswith("127.0.0.")


# --- foreign VMs and accounts --------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"cloudproxy": "true"},
        {"cloudproxy-instance": "default"},
        {"cloudproxy": "true", "cloudproxy-instance": "other"},
        {"cloudproxy_instance": "default"},
        {"cloudproxy": "true", "cloudproxy_instance": "other"},
        {"cloudproxy": "yes", "cloudproxy_instance": "default"},
    ],
    ids=[
        "unlabelled",
        "no-instance-label",
        "no-cloudproxy-label",
        "other-instance",
        "new-key-no-cloudproxy-label",
        "new-key-other-instance",
        "cloudproxy-not-true",
    ],
)
def test_foreign_vms_are_invisible_and_undeletable(
    standin: GcpStandIn, labels: dict[str, str]
) -> None:
    gcp = provider(standin)
    mine = gcp.create_proxy()
    foreign = standin.add_foreign_vm(instance=None)
    standin.vms[foreign]["labels"] = labels
    assert [p.id for p in gcp.list_proxies()] == [mine.id]
    standin.reset_requests()
    gcp.delete_proxy(foreign)
    assert standin.vm_exists(foreign)
    assert standin.requests() == ["other"]  # one GET to read its labels, no DELETE


def test_ownership_is_checked_even_if_the_server_ignored_the_filter(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    mine = gcp.create_proxy()
    standin.add_foreign_vm(instance="other")
    standin.add_foreign_vm(instance=None)
    standin.honour_filter = False
    assert [p.id for p in gcp.list_proxies()] == [mine.id]


def test_instances_sharing_a_project_see_only_their_own(standin: GcpStandIn) -> None:
    first = provider(standin, "default")
    second = provider(
        standin, "second", settings=standin.settings("second", project="proj-default")
    )
    a, b = first.create_proxy(), second.create_proxy()
    assert [p.id for p in first.list_proxies()] == [a.id]
    assert [p.id for p in second.list_proxies()] == [b.id]
    second.delete_proxy(a.id)
    assert standin.vm_exists(a.id)
    assert standin.vm_tags(b.id)["cloudproxy_instance"] == "second"


def test_accounts_in_two_projects_each_use_their_own_key(standin: GcpStandIn) -> None:
    first, second = provider(standin, "default"), provider(standin, "eu")
    a, b = first.create_proxy(), second.create_proxy()
    assert standin.vms[a.id]["_project"] == "proj-default"
    assert standin.vms[b.id]["_project"] == "proj-eu"
    assert [p.id for p in first.list_proxies()] == [a.id]
    assert [p.id for p in second.list_proxies()] == [b.id]


def test_a_key_of_another_account_is_refused_by_the_api(standin: GcpStandIn) -> None:
    """The stand-in verifies each request's JWT against the project's own key: a client
    holding the wrong account's credentials cannot list another project."""
    standin.account("proj-eu")
    mixed = standin.settings("default").model_copy(update={"project": "proj-eu"})
    gcp = provider(standin, settings=mixed)
    with pytest.raises(ProviderError, match=r"^gcp/default: authentication failed \(401\)"):
        gcp.list_proxies()


# --- create --------------------------------------------------------------------------------


def test_create_sends_one_insert_with_labels_tag_and_user_data(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    standin.reset_requests()
    created = gcp.create_proxy()
    assert standin.requests() == ["create", "other"]  # the insert, then one operation wait
    (insert,) = standin.requests_of("create")
    body = insert.body or {}
    assert body["name"] == created.id
    assert body["labels"] == {"cloudproxy": "true", "cloudproxy_instance": "default"}
    assert body["tags"] == {"items": ["cloudproxy-default"]}
    assert body["metadata"]["items"] == [
        {"key": "startup-script", "value": render_user_data(PROXY)}
    ]
    assert body["machineType"] == "zones/us-central1-a/machineTypes/e2-micro"
    (disk,) = body["disks"]
    assert disk["boot"] is True and disk["autoDelete"] is True
    assert disk["initializeParams"]["sourceImage"] == (
        "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
    )
    (nic,) = body["networkInterfaces"]
    assert nic["network"] == "global/networks/default"
    assert nic["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"
    assert "scheduling" not in body
    assert insert.query["requestId"]


def test_spot_asks_for_a_spot_vm_deleted_on_preemption(standin: GcpStandIn) -> None:
    settings = standin.settings().model_copy(update={"spot": True})
    provider(standin, settings=settings).create_proxy()
    (insert,) = standin.requests_of("create")
    assert (insert.body or {})["scheduling"] == {
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "DELETE",
    }


def test_names_are_valid_even_for_long_instance_names(standin: GcpStandIn) -> None:
    instance = "a" * 52
    created = provider(standin, instance).create_proxy()
    assert len(created.id) <= 63
    assert standin.vm_tags(created.id)[f"cloudproxy-{instance}"] == ""
    with pytest.raises(ConfigError, match="at most 52"):
        factories.gcp(instance="a" * 53, settings=standin.settings(), proxy=PROXY)


def test_a_failed_insert_operation_is_a_provider_error(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    standin.fail_next_operation("QUOTA_EXCEEDED", "Quota 'CPUS' exceeded.  Limit: 8.0")
    with pytest.raises(ProviderError) as info:
        gcp.create_proxy()
    assert str(info.value) == (
        "gcp/default: create failed: QUOTA_EXCEEDED: Quota 'CPUS' exceeded. Limit: 8.0"
    )
    assert standin.vms == {}


def test_a_lost_insert_response_is_retried_without_a_second_vm(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    standin.lose_next_response("create")
    created = gcp.create_proxy()
    inserts = standin.requests_of("create")
    assert len(inserts) == 2
    assert inserts[0].query["requestId"] == inserts[1].query["requestId"]
    assert list(standin.vms) == [created.id]


def test_an_operation_still_running_is_waited_for_a_bounded_time(
    standin: GcpStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    gcp = provider(standin)
    standin.operations_finish = False
    created = gcp.create_proxy()
    assert standin.requests().count("other") == 5
    assert "create still RUNNING after 5 waits" in caplog.text
    assert standin.vm_exists(created.id)


# --- delete --------------------------------------------------------------------------------


def test_delete_of_a_listed_proxy_needs_no_lookup(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    created = gcp.create_proxy()
    gcp.list_proxies()
    standin.reset_requests()
    gcp.delete_proxy(created.id)
    assert standin.requests() == ["delete", "other"]  # the DELETE and its operation wait
    assert not standin.vm_exists(created.id)


def test_delete_by_a_fresh_adapter_checks_labels_and_tolerates_404(standin: GcpStandIn) -> None:
    created = provider(standin).create_proxy()
    fresh = provider(standin)
    standin.reset_requests()
    fresh.delete_proxy(created.id)
    assert standin.requests() == ["other", "delete", "other"]
    assert not standin.vm_exists(created.id)
    standin.reset_requests()
    fresh.delete_proxy(created.id)  # gone: success, one GET
    assert standin.requests() == ["other"]


def test_delete_treats_a_404_on_the_delete_itself_as_success(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    created = gcp.create_proxy()
    del standin.vms[created.id]  # vanished behind the adapter's back
    gcp.delete_proxy(created.id)
    assert standin.requests()[-1] == "delete"


def test_delete_refuses_a_name_that_is_no_instance_name(standin: GcpStandIn) -> None:
    with pytest.raises(ProviderError, match="not a Compute Engine instance name"):
        provider(standin).delete_proxy("../global/firewalls/x")
    assert standin.requests() == []


# --- firewall ------------------------------------------------------------------------------


def test_firewall_is_created_once_then_found_by_name(standin: GcpStandIn) -> None:
    gcp = provider(standin)
    assert gcp.ensure_firewall(None) == "cloudproxy-default"
    assert standin.requests() == ["firewall", "firewall", "other"]  # 404, insert, wait
    (insert,) = [r for r in standin.served if r.method == "POST" and r.kind == "firewall"]
    assert insert.body == {
        "name": "cloudproxy-default",
        "description": "cloudproxy default: the proxy port of its VMs",
        "network": "global/networks/default",
        "direction": "INGRESS",
        "allowed": [{"IPProtocol": "tcp", "ports": ["8899"]}],
        "sourceRanges": ["0.0.0.0/0"],
        "targetTags": ["cloudproxy-default"],
    }
    standin.reset_requests()
    assert provider(standin).ensure_firewall(None) == "cloudproxy-default"
    assert standin.requests() == ["firewall"]
    standin.reset_requests()
    assert gcp.ensure_firewall("cloudproxy-default") == "cloudproxy-default"
    assert standin.requests() == ["firewall"]  # verified: one GET, nothing to repair


@pytest.mark.parametrize(
    "change",
    [
        {"allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]},
        {"sourceRanges": ["0.0.0.0/0", "::/0"]},
        {"targetTags": ["web"]},
        {"disabled": True},
    ],
    ids=["port", "sources", "target", "disabled"],
)
def test_a_changed_firewall_rule_is_replaced_by_ours(
    standin: GcpStandIn, change: dict[str, Any]
) -> None:
    gcp = provider(standin)
    name = gcp.ensure_firewall(None)
    (rule,) = standin.firewalls.values()
    rule.update(change)  # edited in the console
    standin.reset_requests()
    assert gcp.ensure_firewall(name) == name
    assert [r.method for r in standin.served] == ["GET", "PUT", "POST"]  # read, update, wait
    (rule,) = standin.firewalls.values()
    assert (rule["allowed"], rule["sourceRanges"], rule["targetTags"]) == (
        [{"IPProtocol": "tcp", "ports": ["8899"]}],
        ["0.0.0.0/0"],
        ["cloudproxy-default"],
    )
    assert not rule.get("disabled")


@pytest.mark.parametrize(
    ("allowed_ip", "source"),
    [("203.0.113.7", "203.0.113.7/32"), ("2001:db8::1", "2001:db8::1/128")],
)
def test_firewall_opens_the_port_to_the_allowed_ip_only(
    standin: GcpStandIn, allowed_ip: str, source: str
) -> None:
    proxy = ProxySettings(port=3128, username="u", password="p", allowed_ip=allowed_ip)
    provider(standin, proxy=proxy).ensure_firewall(None)
    (rule,) = standin.firewalls.values()
    assert rule["sourceRanges"] == [source]
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["3128"]}]


def test_firewall_created_meanwhile_by_another_run_is_used(standin: GcpStandIn) -> None:
    provider(standin).ensure_firewall(None)
    standin.fail_next("firewall", 404)  # our lookup misses it; our insert then gets a 409
    standin.reset_requests()
    assert provider(standin).ensure_firewall(None) == "cloudproxy-default"
    assert standin.requests() == ["firewall", "firewall"]


# --- retries and errors --------------------------------------------------------------------


def test_429_is_retried_after_retry_after(standin: GcpStandIn) -> None:
    sleeps = Sleeps()
    gcp = provider(standin, sleep=sleeps)
    standin.fail_next("list", 429, retry_after=7)
    assert gcp.list_proxies() == []
    assert sleeps == [7.0]
    assert standin.requests() == ["list", "list"]


def test_403_rate_limit_is_retried_but_other_403s_are_not(standin: GcpStandIn) -> None:
    sleeps = Sleeps()
    gcp = provider(standin, sleep=sleeps)
    standin.fail_next("create", 403, reason="rateLimitExceeded")
    gcp.create_proxy()
    assert sleeps == [0.5]
    standin.fail_next("list", 403)
    with pytest.raises(ProviderError) as info:
        gcp.list_proxies()
    assert str(info.value).startswith("gcp/default: list refused (403): injected failure 403;")
    assert "GCP_SERVICE_ACCOUNT_KEY" in str(info.value)
    assert sleeps == [0.5]


def test_5xx_until_retries_are_exhausted_is_one_provider_error(standin: GcpStandIn) -> None:
    sleeps = Sleeps()
    gcp = provider(standin, sleep=sleeps)
    standin.fail_next("list", 503, times=10)
    with pytest.raises(ProviderError) as info:
        gcp.list_proxies()
    assert str(info.value) == "gcp/default: list failed (503): injected failure 503"
    assert standin.requests() == ["list"] * 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_401_is_a_one_line_auth_error_without_secrets(
    standin: GcpStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gcp = provider(standin, "eu")
    standin.fail_next("list", 401, times=5)
    with pytest.raises(ProviderError) as info:
        gcp.list_proxies()
    message = str(info.value)
    assert message == (
        "gcp/eu: authentication failed (401); check GCP_EU_SERVICE_ACCOUNT_KEY or GCP_EU_SA_JSON"
    )
    # Not retried by us; google-auth itself re-signs its token and retries a 401 twice.
    assert standin.requests() == ["list"] * 3
    for secret in standin.secrets:
        assert secret not in message
        assert secret not in repr(info.value.__cause__)


@pytest.mark.parametrize("status", [400, 403, 503])
def test_a_secret_the_api_echoes_never_reaches_the_message_or_the_log(
    standin: GcpStandIn, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    gcp = provider(standin)
    pem_line = standin.account("proj-default").private_pem.splitlines()[1]  # of the key
    echoed = f"Invalid value 'user:{PROXY.password}' near {pem_line}"
    standin.fail_next("create", status, times=4, message=echoed)
    with pytest.raises(ProviderError) as info:
        gcp.create_proxy()
    message = str(info.value)
    assert message.startswith("gcp/default: create ") and "Invalid value" in message
    assert "\n" not in message
    assert info.value.__cause__ is None
    for secret in (PROXY.password or "-", pem_line):
        assert secret not in message
        assert secret not in caplog.text
    if status == 503:  # retried: each failure was logged, scrubbed
        assert "transient failure" in caplog.text and "Invalid value 'user:***'" in caplog.text


def test_nothing_secret_is_logged_while_working(
    standin: GcpStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gcp = provider(standin)
    standin.fail_next("create", 500)
    created = gcp.create_proxy()
    gcp.delete_proxy(created.id)
    assert "transient failure" in caplog.text
    for secret in standin.secrets:
        assert secret not in caplog.text
    assert "Bearer" not in caplog.text
    assert "BasicAuth" not in caplog.text


def test_an_unreachable_api_is_retried_then_a_provider_error(standin: GcpStandIn) -> None:
    sleeps = Sleeps()
    gcp = provider(standin, sleep=sleeps)
    standin.close()
    with pytest.raises(ProviderError, match=r"^gcp/default: list failed: cannot reach"):
        gcp.list_proxies()
    assert sleeps == [0.5, 1.0, 2.0]


# --- settings and credentials --------------------------------------------------------------


def test_an_endpoint_with_a_trailing_slash_works(standin: GcpStandIn) -> None:
    settings = standin.settings().model_copy(update={"api_endpoint": standin.url + "/"})
    assert provider(standin, settings=settings).list_proxies() == []
    assert standin.requests_of("list")[0].path.startswith("/compute/v1/")


def test_project_comes_from_the_key_unless_set(standin: GcpStandIn) -> None:
    key_only = standin.settings("default")
    assert key_only.project is None
    provider(standin, settings=key_only).create_proxy()
    assert standin.requests_of("create")[0].path.startswith("/compute/v1/projects/proj-default/")


@pytest.mark.parametrize(
    ("instance", "values", "message"),
    [
        ("default", {}, "GCP_SERVICE_ACCOUNT_KEY or GCP_SA_JSON: gcp/default needs"),
        ("eu", {}, "GCP_EU_SERVICE_ACCOUNT_KEY or GCP_EU_SA_JSON: gcp/eu needs"),
        ("default", {"service_account_key": "{not json"}, "GCP_SERVICE_ACCOUNT_KEY: not valid"),
        ("default", {"service_account_key": "[]"}, "GCP_SERVICE_ACCOUNT_KEY: not a service"),
        ("default", {"sa_json": "/nonexistent/key.json"}, "GCP_SA_JSON: cannot read"),
    ],
)
def test_credential_settings_errors_are_one_line(
    instance: str, values: dict[str, str], message: str
) -> None:
    settings = GcpSettings.model_validate({"enabled": True, **values})
    with pytest.raises(ConfigError) as info:
        factories.gcp(instance=instance, settings=settings, proxy=PROXY)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_broken_key_is_reported_without_its_content(standin: GcpStandIn) -> None:
    info = json.loads(standin.account("proj-default").key_json)
    info["private_key"] = info["private_key"][:200]  # truncated while pasting
    settings = GcpSettings.model_validate({"service_account_key": json.dumps(info)})
    with pytest.raises(ConfigError) as raised:
        factories.gcp(instance="default", settings=settings, proxy=PROXY)
    assert str(raised.value).startswith("GCP_SERVICE_ACCOUNT_KEY: not a usable service account")
    assert info["private_key"][30:80] not in str(raised.value)
    assert raised.value.__cause__ is None


def test_a_key_without_project_needs_gcp_project(standin: GcpStandIn) -> None:
    info = json.loads(standin.account("proj-default").key_json)
    del info["project_id"]
    settings = GcpSettings.model_validate({"service_account_key": json.dumps(info)})
    with pytest.raises(ConfigError, match=r"^GCP_PROJECT: required for gcp/default"):
        factories.gcp(instance="default", settings=settings, proxy=PROXY)


def test_key_text_and_key_file_together_are_refused(standin: GcpStandIn) -> None:
    both = standin.settings("default").model_copy(update={"sa_json": "/some/key.json"})
    with pytest.raises(ConfigError, match="set one of them"):
        factories.gcp(instance="default", settings=both, proxy=PROXY)
