"""The Hetzner adapter through the real hcloud SDK against the stand-in, request by request."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.user_data import render_user_data
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import HetznerSettings
from cloudproxy_cli.core.errors import ProviderError, RateLimitedError
from tests.standins.hetzner import (
    PROXY,
    ApiError,
    HetznerStandIn,
    parse_selector,
    selector_matches,
)

SELECTOR = "cloudproxy,cloudproxy-instance=default"


@pytest.fixture
def hz() -> Iterator[HetznerStandIn]:
    standin = HetznerStandIn()
    try:
        yield standin
    finally:
        standin.close()


def ids(proxies: list) -> set[str]:  # type: ignore[type-arg]
    return {p.id for p in proxies}


# --- listing -------------------------------------------------------------------------------


def test_one_page_is_one_request_with_the_exact_selector(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    created = {provider.create_proxy().id for _ in range(3)}
    hz.reset_requests()
    assert ids(provider.list_proxies()) == created
    (request,) = hz.log
    assert request.kind == "list"
    # Both labels, the instance's by value: a bare `cloudproxy` would list every instance.
    assert request.query["label_selector"] == [SELECTOR]


def test_every_page_is_followed_one_request_each(hz: HetznerStandIn) -> None:
    hz.max_per_page = 2
    provider = hz.provider()
    created = {provider.create_proxy().id for _ in range(5)}
    hz.add_foreign_vm(instance="other")
    hz.reset_requests()
    assert ids(provider.list_proxies()) == created
    assert hz.requests() == ["list", "list", "list"]
    assert [r.query["page"] for r in hz.log] == [["1"], ["2"], ["3"]]


def test_other_instances_and_unlabelled_servers_are_invisible(hz: HetznerStandIn) -> None:
    default, eu = hz.provider("default"), hz.provider("eu")
    mine, theirs = default.create_proxy(), eu.create_proxy()
    hz.add_foreign_vm(instance=None)
    hz.add_foreign_vm(instance=None, labels={"cloudproxy": "true"})  # the reference's default
    hz.add_foreign_vm(instance=None, labels={"cloudproxy-instance": "default"})
    assert ids(default.list_proxies()) == {mine.id}
    assert ids(eu.list_proxies()) == {theirs.id}


def test_a_server_being_deleted_is_not_counted(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    going, staying = provider.create_proxy(), provider.create_proxy()
    hz.server(going.id)["status"] = "deleting"
    assert ids(provider.list_proxies()) == {staying.id}


def test_created_at_is_aware_utc(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    before = datetime.now(UTC).replace(microsecond=0)
    provider.create_proxy()
    (proxy,) = provider.list_proxies()
    assert proxy.created_at.utcoffset() == timedelta(0)
    assert before <= proxy.created_at <= datetime.now(UTC)


def test_no_address_while_initializing_even_though_the_api_shows_one(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    created = provider.create_proxy()
    assert created.ip is None
    assert hz.server(created.id)["public_net"]["ipv4"]["ip"].startswith("127.0.0.")
    assert [p.ip for p in provider.list_proxies()] == [None]
    hz.boot_all()
    (booted,) = provider.list_proxies()
    assert booted.ip == hz.server(created.id)["public_net"]["ipv4"]["ip"]
    assert booted.port is None


# --- creating ------------------------------------------------------------------------------


def test_create_is_one_request_carrying_labels_and_user_data(
    hz: HetznerStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = hz.provider().create_proxy()
    (request,) = hz.log
    assert request.kind == "create"
    body = request.body
    assert body["labels"] == {"cloudproxy": "true", "cloudproxy-instance": "default"}
    assert body["user_data"] == render_user_data(PROXY)
    assert (body["server_type"], body["image"], body["location"]) == (
        "cx23",
        "ubuntu-24.04",
        "nbg1",
    )
    assert re.fullmatch(r"cloudproxy-default-[0-9a-f]{8}", body["name"])
    assert hz.vm_tags(proxy.id) == body["labels"]
    for secret in (*hz.secrets, body["user_data"]):
        assert secret not in caplog.text


def test_settings_choose_type_image_and_location(hz: HetznerStandIn) -> None:
    hz.provider(size="cpx11", image="debian-12", location="hel1").create_proxy()
    body = hz.log[0].body
    assert (body["server_type"], body["image"], body["location"]) == ("cpx11", "debian-12", "hel1")


def test_a_rejected_create_is_one_line_and_not_retried(hz: HetznerStandIn) -> None:
    with pytest.raises(ProviderError) as info:
        hz.provider(size="cx21").create_proxy()  # the reference's long-deprecated default
    assert str(info.value) == (
        "hetzner/default: create server failed (HTTP 400, invalid_input): "
        "server_type 'cx21' not found"
    )
    assert hz.requests() == ["create"]


def test_a_create_whose_answer_was_lost_makes_one_server(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    hz.lost_create_answers = 1
    proxy = provider.create_proxy()
    (server,) = hz.projects["a"].servers.values()
    assert proxy.id == str(server["id"])
    # Retried under the same name, refused as a duplicate, then found by that name.
    assert hz.requests() == ["create", "create", "list"]
    assert hz.log[2].query["name"] == [server["name"]]
    assert hz.slept == [0.5]


# --- deleting ------------------------------------------------------------------------------


def test_deleting_a_listed_server_is_one_request(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    created = provider.create_proxy()
    provider.list_proxies()
    hz.reset_requests()
    provider.delete_proxy(created.id)
    assert hz.requests() == ["delete"]
    assert not hz.vm_exists(created.id)


def test_deleting_an_unlisted_server_reads_its_labels_first(hz: HetznerStandIn) -> None:
    created = hz.provider().create_proxy()
    hz.reset_requests()
    hz.provider().delete_proxy(created.id)  # a fresh adapter has listed nothing
    assert hz.requests() == ["other", "delete"]
    assert not hz.vm_exists(created.id)


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"cloudproxy": "true"},
        {"cloudproxy-instance": "default"},
        {"cloudproxy": "true", "cloudproxy-instance": "eu"},
    ],
    ids=["unlabelled", "no-instance", "no-cloudproxy", "other-instance"],
)
def test_servers_without_both_labels_are_never_deleted(
    hz: HetznerStandIn, labels: dict[str, str]
) -> None:
    provider = hz.provider()
    provider.list_proxies()
    foreign = hz.add_foreign_vm(instance=None, labels=labels)
    hz.reset_requests()
    provider.delete_proxy(foreign)
    assert hz.vm_exists(foreign)
    assert hz.requests() == ["other"]


def test_already_gone_counts_as_deleted(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    created = provider.create_proxy()
    provider.list_proxies()
    hz.projects["a"].servers.clear()  # deleted behind our back: the DELETE answers 404
    provider.delete_proxy(created.id)
    provider.delete_proxy(created.id)  # unknown now: the ownership read answers 404
    provider.delete_proxy("not-a-server-id")
    assert hz.requests()[-3:] == ["list", "delete", "other"]


# --- retries and errors --------------------------------------------------------------------


def test_429_waits_what_retry_after_says_then_succeeds(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    provider.create_proxy()
    hz.reset_requests()
    hz.fail_next("list", 429, retry_after=3)
    assert len(provider.list_proxies()) == 1
    # Exactly our one wait: hcloud's own retry loop (random sleeps, no Retry-After) is off.
    assert hz.slept == [3.0]
    assert hz.requests() == ["list", "list"]


def test_a_retry_after_beyond_the_cap_fails_now(hz: HetznerStandIn) -> None:
    hz.fail_next("list", 429, retry_after=3600)
    with pytest.raises(RateLimitedError, match=r"rate limited until .*Z \(Retry-After\)$"):
        hz.provider().list_proxies()
    assert hz.slept == []
    assert hz.requests() == ["list"]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_a_bounded_number_of_times(
    hz: HetznerStandIn, status: int
) -> None:
    hz.fail_next("list", status, times=10)
    with pytest.raises(ProviderError) as info:
        hz.provider().list_proxies()
    message = str(info.value)
    assert message.startswith("hetzner/default: list servers failed (HTTP ")
    assert str(status) in message and "\n" not in message
    assert hz.requests() == ["list"] * 4
    assert hz.slept == [0.5, 1.0, 2.0]


def test_a_malformed_answer_fails_the_instance_not_the_run(hz: HetznerStandIn) -> None:
    hz.malformed_answers = 1
    with pytest.raises(ProviderError) as info:
        hz.provider().list_proxies()
    assert str(info.value) == (
        "hetzner/default: list servers failed: unexpected answer from the API (KeyError)"
    )


def test_an_unreachable_api_is_a_one_line_error(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    hz.close()  # nothing listens on that loopback port any more
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    assert str(info.value) == (
        "hetzner/default: list servers failed: the API did not answer (ConnectionError)"
    )
    assert hz.slept == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    ("instance", "var"), [("default", "HETZNER_ACCESS_TOKEN"), ("eu", "HETZNER_EU_ACCESS_TOKEN")]
)
def test_a_rejected_token_is_a_one_line_auth_error(
    hz: HetznerStandIn, caplog: pytest.LogCaptureFixture, instance: str, var: str
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "hc-not-a-real-token-0123456789"
    with pytest.raises(ProviderError) as info:
        hz.provider(instance, token=wrong).list_proxies()
    assert str(info.value) == f"hetzner/{instance}: authentication failed (401); check {var}"
    assert hz.requests() == ["list"]  # never retried
    assert hz.log[0].project is None  # the stand-in really refused that token
    for secret in (wrong, *hz.secrets):
        assert secret not in str(info.value) and secret not in caplog.text
        assert secret not in repr(info.value.__cause__)


def test_a_read_only_token_is_told_apart(hz: HetznerStandIn) -> None:
    hz.fail_next("create", 403)
    with pytest.raises(ProviderError) as info:
        hz.provider().create_proxy()
    assert str(info.value) == (
        "hetzner/default: create server: permission denied (403 forbidden); "
        "HETZNER_ACCESS_TOKEN must be a Read & Write API token of the project"
    )


def test_no_token_fails_the_instance_without_a_request(hz: HetznerStandIn) -> None:
    settings = HetznerSettings(enabled=True, api_endpoint=hz.endpoint)
    provider = factories.hetzner(instance="default", settings=settings, proxy=PROXY, environ={})
    with pytest.raises(
        ProviderError, match=r"^hetzner/default: no API token; set HETZNER_ACCESS_TOKEN$"
    ):
        provider.list_proxies()
    assert hz.requests() == []


def test_the_endpoint_comes_from_the_environment_when_not_set(hz: HetznerStandIn) -> None:
    settings = HetznerSettings.model_validate({"enabled": True, "access_token": hz.token})
    provider = factories.hetzner(
        instance="default",
        settings=settings,
        proxy=PROXY,
        environ={"HETZNER_API_ENDPOINT": hz.endpoint + "/"},
    )
    assert provider.list_proxies() == []
    assert hz.requests() == ["list"]


# --- several accounts ----------------------------------------------------------------------


def test_two_projects_each_see_and_delete_only_their_own(hz: HetznerStandIn) -> None:
    first = hz.provider("default")
    second = hz.provider("default", token=hz.other_token)  # same instance name, other project
    a, b = first.create_proxy(), second.create_proxy()
    assert ids(first.list_proxies()) == {a.id}
    assert ids(second.list_proxies()) == {b.id}
    second.delete_proxy(a.id)  # not in its project: the API says 404, so nothing happens
    assert hz.vm_exists(a.id)
    # Every request carried the token of the adapter that sent it.
    assert {r.project for r in hz.log} == {"a", "b"}
    assert hz.projects["a"].servers.keys() == {int(a.id)}
    assert hz.projects["b"].servers.keys() == {int(b.id)}


# --- the firewall --------------------------------------------------------------------------


def test_the_firewall_is_created_once_then_found_by_name(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    firewall_id = provider.ensure_firewall(None)
    assert hz.requests() == ["firewall", "firewall"]
    assert hz.log[0].query["name"] == ["cloudproxy-default"]
    body = hz.log[1].body
    assert body["name"] == "cloudproxy-default"
    assert body["rules"] == [
        {
            "direction": "in",
            "protocol": "tcp",
            "port": "8899",
            "source_ips": ["0.0.0.0/0"],  # IPv6 is never opened to all (allowed_cidrs)
            "description": "cloudproxy: the proxy port",
        }
    ]
    assert body["apply_to"] == [
        {"type": "label_selector", "label_selector": {"selector": SELECTOR}}
    ]
    hz.reset_requests()
    assert hz.provider().ensure_firewall(None) == firewall_id
    assert hz.requests() == ["firewall"]
    hz.reset_requests()
    assert provider.ensure_firewall(firewall_id) == firewall_id  # verified: one GET
    assert [(r.method, r.path) for r in hz.log] == [("GET", f"/v1/firewalls/{firewall_id}")]
    hz.reset_requests()
    assert provider.ensure_firewall("12345") == firewall_id  # gone: found by name again
    assert [r.method for r in hz.log] == ["GET", "GET"]


def test_the_firewall_reaches_new_servers_by_label_alone(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    firewall_id = int(provider.ensure_firewall(None) or 0)
    mine = provider.create_proxy()
    other = hz.provider("eu").create_proxy()
    assert hz.server(mine.id)["public_net"]["firewalls"] == [
        {"id": firewall_id, "status": "applied"}
    ]
    assert hz.server(other.id)["public_net"]["firewalls"] == []


def test_the_firewall_opens_the_port_only_to_the_allowed_ip(hz: HetznerStandIn) -> None:
    proxy = ProxySettings(port=3128, username="u", password="p", allowed_ip="203.0.113.7")
    hz.provider(proxy=proxy).ensure_firewall(None)
    (rule,) = hz.log[1].body["rules"]
    assert (rule["port"], rule["source_ips"]) == ("3128", ["203.0.113.7/32"])


def test_a_found_firewall_with_another_port_is_repaired(
    hz: HetznerStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    known = hz.provider().ensure_firewall(None)
    moved = ProxySettings(port=3128, username="u", password="p")
    hz.reset_requests()
    assert hz.provider(proxy=moved).ensure_firewall(known) == known
    assert [r.path.rsplit("/", 1)[-1] for r in hz.log] == [str(known), "set_rules"]
    assert "repairing it" in caplog.text
    (firewall,) = hz.projects["a"].firewalls.values()
    assert [(r["direction"], r["port"], r["source_ips"]) for r in firewall["rules"]] == [
        ("in", "3128", ["0.0.0.0/0"])
    ]


def test_a_firewall_that_lost_its_selector_gets_it_back(hz: HetznerStandIn) -> None:
    provider = hz.provider()
    known = provider.ensure_firewall(None)
    (firewall,) = hz.projects["a"].firewalls.values()
    firewall["applied_to"] = []  # removed in the console
    hz.reset_requests()
    assert provider.ensure_firewall(known) == known
    assert [r.path.rsplit("/", 1)[-1] for r in hz.log] == [str(known), "apply_to_resources"]
    mine = provider.create_proxy()
    assert hz.server(mine.id)["public_net"]["firewalls"] == [
        {"id": int(known or 0), "status": "applied"}
    ]


# --- the stand-in's label selectors --------------------------------------------------------


def test_the_standin_selector_subset() -> None:
    labels = {"cloudproxy": "true", "cloudproxy-instance": "default"}
    assert selector_matches(parse_selector(SELECTOR), labels)
    assert not selector_matches(parse_selector("cloudproxy,cloudproxy-instance=eu"), labels)
    assert selector_matches(parse_selector("cloudproxy-instance!=eu,!other"), labels)
    assert not selector_matches(parse_selector("cloudproxy,missing"), labels)
    with pytest.raises(ApiError):
        parse_selector("env in (a,b)")
