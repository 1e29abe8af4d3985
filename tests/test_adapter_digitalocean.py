"""The DigitalOcean adapter through the real python-digitalocean, against its stand-in."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.digitalocean import DEFAULT_ENDPOINT
from cloudproxy_cli.adapters.user_data import render_user_data
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import DigitalOceanSettings, SecretStr
from cloudproxy_cli.core.errors import ProviderError
from tests.standins.digitalocean import PROXY_PASSWORD, PROXY_PORT, DigitalOceanStandIn

OURS = ["cloudproxy", "cloudproxy-default"]


@pytest.fixture
def standin() -> Iterator[DigitalOceanStandIn]:
    stand = DigitalOceanStandIn()
    try:
        yield stand
    finally:
        stand.close()


def one_line(err: pytest.ExceptionInfo[ProviderError], standin: DigitalOceanStandIn) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("digitalocean/")
    for secret in standin.secrets:
        assert secret not in message
    assert err.value.__cause__ is None  # the library's exception may echo a body: not kept
    return message


# --- list ------------------------------------------------------------------------------------


def test_pagination_follows_next_links_one_request_per_page(standin: DigitalOceanStandIn) -> None:
    ids = {standin.add_droplet(tags=OURS) for _ in range(5)}
    standin.reset_requests()
    listed = standin.provider(page_size=2).list_proxies()
    assert {p.id for p in listed} == ids
    assert standin.requests() == ["list", "list", "list"]


def test_one_page_is_exactly_one_request(standin: DigitalOceanStandIn) -> None:
    for _ in range(3):
        standin.add_droplet(tags=OURS)
    assert len(standin.provider().list_proxies()) == 3
    assert standin.requests() == ["list"]


def test_a_page_that_fails_fails_the_whole_list(standin: DigitalOceanStandIn) -> None:
    # The library's own pagination would return the first page alone here.
    for _ in range(5):
        standin.add_droplet(tags=OURS)
    standin.fail_next("list", 503, times=4, skip=1)
    with pytest.raises(ProviderError) as err:
        standin.provider(page_size=2).list_proxies()
    assert "503" in one_line(err, standin)


def test_a_page_answered_429_is_retried_and_the_list_is_complete(
    standin: DigitalOceanStandIn,
) -> None:
    ids = {standin.add_droplet(tags=OURS) for _ in range(5)}
    standin.fail_next("list", 429, retry_after=2, skip=1)
    assert {p.id for p in standin.provider(page_size=2).list_proxies()} == ids
    assert standin.sleeps == [2.0]


def test_an_endpoint_without_trailing_slash_still_reaches_v2(
    standin: DigitalOceanStandIn,
) -> None:
    standin.add_droplet(tags=OURS)
    provider = standin.provider(endpoint=standin.endpoint.rstrip("/"))
    assert len(provider.list_proxies()) == 1
    assert [s.path for s in standin.served()] == ["/v2/droplets"]


@pytest.mark.parametrize(
    "tags",
    [[], ["cloudproxy"], ["cloudproxy-default"], ["cloudproxy", "cloudproxy-other"]],
    ids=["untagged", "only-cloudproxy", "only-instance-tag", "other-instance"],
)
def test_foreign_droplets_are_invisible_and_never_deleted(
    standin: DigitalOceanStandIn, tags: list[str]
) -> None:
    provider = standin.provider()
    mine = provider.create_proxy()
    foreign = standin.add_droplet(tags=tags)
    assert {p.id for p in provider.list_proxies()} == {mine.id}
    standin.reset_requests()
    provider.delete_proxy(foreign)
    assert standin.vm_exists(foreign)
    assert standin.requests() == ["other"]  # one read of its tags, no delete request


def test_created_at_is_the_apis_time_tz_aware_utc(standin: DigitalOceanStandIn) -> None:
    when = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
    standin.add_droplet(tags=OURS, created_at=when)
    (proxy,) = standin.provider().list_proxies()
    assert proxy.created_at == when
    assert proxy.created_at.utcoffset() == timedelta(0)


def test_no_ip_while_booting_then_the_public_ipv4_only(standin: DigitalOceanStandIn) -> None:
    provider = standin.provider()
    created = provider.create_proxy()
    assert created.ip is None
    assert provider.list_proxies()[0].ip is None
    standin.boot_all()
    (proxy,) = provider.list_proxies()
    # The stand-in lists the private (10.x) address first, as the API may.
    assert proxy.ip is not None and proxy.ip.startswith("127.0.0.")
    assert proxy.port is None


# --- create ----------------------------------------------------------------------------------


def test_create_is_one_request_with_tags_and_user_data_in_it(
    standin: DigitalOceanStandIn,
) -> None:
    proxy = ProxySettings(PROXY_PORT, "someone", "s3cret-pass", None)
    provider = standin.provider(proxy=proxy)
    created = provider.create_proxy()
    assert standin.requests() == ["create"]  # no tagging call after it, no firewall call
    (body,) = standin.create_bodies
    assert body["tags"] == OURS
    assert body["user_data"] == render_user_data(proxy)
    assert body["region"] == "lon1" and body["size"] == "s-1vcpu-1gb"
    assert body["image"] == "ubuntu-24-04-x64"
    assert body["name"].startswith("cloudproxy-default-")
    assert standin.vm_tags(created.id) == dict.fromkeys(OURS, "")
    assert created.created_at.tzinfo is not None
    assert abs(datetime.now(UTC) - created.created_at) < timedelta(minutes=1)


def test_a_create_answered_429_is_retried_after_retry_after(
    standin: DigitalOceanStandIn,
) -> None:
    # POSTs bypass the library's session: the status comes from its error's traceback.
    standin.fail_next("create", 429, retry_after=3)
    created = standin.provider().create_proxy()
    assert standin.sleeps == [3.0]
    assert standin.requests() == ["create", "create"]
    assert standin.droplet_ids() == [created.id]


def test_a_fresh_account_lists_before_its_tag_exists(standin: DigitalOceanStandIn) -> None:
    # As the real API: a tag_name filter naming a tag that does not exist lists nothing.
    assert standin.account_tags() == set()
    assert standin.provider().list_proxies() == []
    assert standin.requests() == ["list"]
    created = standin.provider().create_proxy()  # the create makes the tags
    assert {"cloudproxy", "cloudproxy-default"} <= standin.account_tags()
    assert [p.id for p in standin.provider().list_proxies()] == [created.id]


def test_a_create_failing_with_5xx_gives_up_after_bounded_retries(
    standin: DigitalOceanStandIn,
) -> None:
    standin.fail_next("create", 500, times=10)
    with pytest.raises(ProviderError) as err:
        standin.provider().create_proxy()
    assert "create droplet failed: HTTP 500" in one_line(err, standin)
    # A 500 may hide a droplet made anyway: each resend is preceded by a look-up by name.
    assert standin.requests() == ["create", "list"] * 3 + ["create"]
    assert len(standin.sleeps) == 3
    assert standin.droplet_ids() == []


def test_an_html_error_page_is_still_classified_by_its_status(
    standin: DigitalOceanStandIn,
) -> None:
    # The library raises JSONReadError on a non-JSON body; its status decides all the same.
    standin.add_droplet(tags=OURS)
    standin.fail_next("list", 502, html=True)
    assert len(standin.provider().list_proxies()) == 1
    assert standin.requests() == ["list", "list"]


def test_an_error_the_api_explains_is_reported_without_retry(
    standin: DigitalOceanStandIn,
) -> None:
    settings = DigitalOceanSettings(
        access_token=SecretStr(standin.tokens[0]), api_endpoint=standin.endpoint, size=" "
    )
    provider = factories.digitalocean(
        instance="default", settings=settings, proxy=standin.proxy_settings()
    )
    with pytest.raises(ProviderError) as err:
        provider.create_proxy()
    message = one_line(err, standin)
    assert "create droplet failed: HTTP 422: You must specify a size." in message
    assert standin.requests() == ["create"]


# --- delete ----------------------------------------------------------------------------------


def test_deleting_a_listed_droplet_is_one_request(standin: DigitalOceanStandIn) -> None:
    provider = standin.provider()
    created = provider.create_proxy()
    provider.list_proxies()
    standin.reset_requests()
    provider.delete_proxy(created.id)
    assert standin.requests() == ["delete"]
    assert not standin.vm_exists(created.id)


def test_deleting_an_unseen_droplet_reads_its_tags_first(standin: DigitalOceanStandIn) -> None:
    vm = standin.add_droplet(tags=OURS)
    standin.provider().delete_proxy(vm)  # a new process: nothing listed yet
    assert standin.requests() == ["other", "delete"]
    assert not standin.vm_exists(vm)


def test_deleting_a_droplet_already_gone_succeeds(standin: DigitalOceanStandIn) -> None:
    provider = standin.provider()
    created = provider.create_proxy()
    provider.delete_proxy(created.id)
    provider.delete_proxy(created.id)  # no longer known as ours: the read says 404, done
    assert standin.requests() == ["create", "delete", "other"]


def test_a_delete_answered_404_is_success(standin: DigitalOceanStandIn) -> None:
    provider = standin.provider()
    created = provider.create_proxy()
    standin.provider().delete_proxy(created.id)  # gone behind the first adapter's back
    standin.reset_requests()
    provider.delete_proxy(created.id)  # known as ours, so straight to DELETE: 404
    assert standin.requests() == ["delete"]


def test_a_non_numeric_id_is_refused_without_a_request(standin: DigitalOceanStandIn) -> None:
    with pytest.raises(ProviderError) as err:
        standin.provider().delete_proxy("../firewalls")
    one_line(err, standin)
    assert standin.requests() == []


# --- errors and secrets ----------------------------------------------------------------------


@pytest.mark.parametrize("instance", ["default", "work"])
def test_401_is_a_one_line_auth_error_naming_the_instance(
    standin: DigitalOceanStandIn, instance: str
) -> None:
    provider = standin.provider(instance, token="dop_v1_not_a_token_of_this_standin")
    with pytest.raises(ProviderError) as err:
        provider.list_proxies()
    env = "DIGITALOCEAN_ACCESS_TOKEN" if instance == "default" else "DIGITALOCEAN_WORK_ACCESS_TOKEN"
    assert one_line(err, standin) == (
        f"digitalocean/{instance}: authentication failed (401); check {env}"
    )
    assert "dop_v1_not_a_token" not in str(err.value)
    assert standin.requests() == ["list"]  # never retried


def test_401_on_a_create_is_the_same_auth_error(standin: DigitalOceanStandIn) -> None:
    standin.fail_next("create", 401)
    with pytest.raises(ProviderError) as err:
        standin.provider().create_proxy()
    assert "authentication failed (401)" in one_line(err, standin)


def test_no_token_is_an_error_before_any_request(standin: DigitalOceanStandIn) -> None:
    settings = DigitalOceanSettings(api_endpoint=standin.endpoint)
    provider = factories.digitalocean(
        instance="eu", settings=settings, proxy=standin.proxy_settings()
    )
    with pytest.raises(ProviderError) as err:
        provider.list_proxies()
    assert one_line(err, standin) == (
        "digitalocean/eu: no access token; set DIGITALOCEAN_EU_ACCESS_TOKEN"
    )
    assert standin.requests() == []


def test_no_secret_reaches_the_logs_even_at_debug(
    standin: DigitalOceanStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # python-digitalocean logs each request's parameters at DEBUG: a create's hold the
    # user data, and so the proxy password.
    caplog.set_level(logging.DEBUG)
    provider = standin.provider()
    provider.create_proxy()
    provider.list_proxies()
    standin.fail_next("list", 503, times=4)
    with pytest.raises(ProviderError):
        provider.list_proxies()
    assert caplog.records, "the retries are logged"
    for secret in standin.secrets:
        assert secret not in caplog.text
    assert PROXY_PASSWORD in standin.create_bodies[0]["user_data"]  # it was there to leak


# --- firewall --------------------------------------------------------------------------------


def test_firewall_is_created_once_then_found_by_name(standin: DigitalOceanStandIn) -> None:
    first = standin.provider().ensure_firewall(None)
    # A new account: no tag yet, and the API refuses a firewall naming a missing tag.
    assert [(s.method, s.path) for s in standin.served()] == [
        ("GET", "/v2/firewalls"),
        ("POST", "/v2/tags"),
        ("POST", "/v2/firewalls"),
    ]
    (firewall,) = standin.firewalls()
    assert firewall["id"] == first
    assert firewall["name"] == "cloudproxy-default"
    assert firewall["tags"] == ["cloudproxy-default"]
    assert firewall["droplet_ids"] == []
    # Inbound IPv4 only (see allowed_cidrs); out, everything.
    assert firewall["inbound_rules"] == [
        {"protocol": "tcp", "ports": str(PROXY_PORT), "sources": {"addresses": ["0.0.0.0/0"]}},
    ]
    everywhere = {"addresses": ["0.0.0.0/0", "::/0"]}
    assert firewall["outbound_rules"] == [  # sent as "1-65535"; the API answers "0"
        {"protocol": "tcp", "ports": "0", "destinations": everywhere},
        {"protocol": "udp", "ports": "0", "destinations": everywhere},
    ]
    (post,) = [b for s, b in standin.firewall_bodies if s == "POST"]
    assert {r["ports"] for r in post["outbound_rules"]} == {"1-65535"}

    standin.reset_requests()
    assert standin.provider().ensure_firewall(None) == first  # another process: by name
    assert standin.requests() == ["firewall"]
    standin.reset_requests()
    assert standin.provider().ensure_firewall(first) == first  # verified: one GET, no change
    assert [(s.method, s.path) for s in standin.served()] == [("GET", f"/v2/firewalls/{first}")]
    assert len(standin.firewalls()) == 1


@pytest.mark.parametrize("ports", ["0", "65536", "0-80", "80-22", "x"])
def test_the_standin_refuses_ports_the_api_refuses(
    standin: DigitalOceanStandIn, ports: str
) -> None:
    import requests

    rule = {"protocol": "tcp", "ports": ports, "sources": {"addresses": ["0.0.0.0/0"]}}
    answer = requests.post(
        f"{standin.endpoint}firewalls",
        json={"name": "x", "inbound_rules": [rule], "outbound_rules": []},
        headers={"Authorization": f"Bearer {standin.tokens[0]}"},
        timeout=5,
    )
    assert answer.status_code == 422, answer.text


def test_a_remembered_firewall_that_is_gone_is_made_again(standin: DigitalOceanStandIn) -> None:
    provider = standin.provider()
    first = provider.ensure_firewall(None)
    assert first is not None
    standin.accounts[standin.tokens[0]].firewalls.clear()  # deleted in the console
    again = provider.ensure_firewall(first)
    assert again != first
    assert [f["id"] for f in standin.firewalls()] == [again]


def test_a_changed_firewall_is_rewritten_keeping_its_droplets(
    standin: DigitalOceanStandIn,
) -> None:
    provider = standin.provider()
    first = provider.ensure_firewall(None)
    (firewall,) = standin.accounts[standin.tokens[0]].firewalls.values()
    firewall["inbound_rules"][0]["ports"] = "22"  # changed in the console
    firewall["inbound_rules"].append(
        {"protocol": "tcp", "ports": "443", "sources": {"addresses": ["::/0"]}}
    )
    firewall["tags"] = []
    firewall["droplet_ids"] = [42]
    standin.reset_requests()
    assert provider.ensure_firewall(first) == first
    methods = [s.method for s in standin.served()]
    assert methods == ["GET", "POST", "PUT"]  # read, the tag again, the whole firewall
    (after,) = standin.firewalls()
    assert after["inbound_rules"] == [
        {"protocol": "tcp", "ports": str(PROXY_PORT), "sources": {"addresses": ["0.0.0.0/0"]}},
    ]
    assert after["tags"] == ["cloudproxy-default"]
    assert after["droplet_ids"] == [42]


def test_firewall_after_droplets_exist_reuses_their_tag(standin: DigitalOceanStandIn) -> None:
    provider = standin.provider()
    provider.create_proxy()
    provider.ensure_firewall(None)
    assert standin.account_tags() == set(OURS)
    assert [f["name"] for f in standin.firewalls()] == ["cloudproxy-default"]


def test_firewall_is_found_on_a_later_page(standin: DigitalOceanStandIn) -> None:
    standin.provider("a").ensure_firewall(None)
    wanted = standin.provider("b").ensure_firewall(None)
    standin.reset_requests()
    assert standin.provider("b", page_size=1).ensure_firewall(None) == wanted
    assert standin.requests() == ["firewall", "firewall"]


@pytest.mark.parametrize(
    ("allowed", "source"), [("203.0.113.7", "203.0.113.7/32"), ("2001:db8::7", "2001:db8::7/128")]
)
def test_firewall_admits_only_the_allowed_ip(
    standin: DigitalOceanStandIn, allowed: str, source: str
) -> None:
    standin.provider(proxy=standin.proxy_settings(allowed)).ensure_firewall(None)
    (firewall,) = standin.firewalls()
    assert firewall["inbound_rules"][0]["sources"] == {"addresses": [source]}
    standin.reset_requests()
    # The same settings again: nothing to repair. Others: the rule follows them.
    standin.provider(proxy=standin.proxy_settings(allowed)).ensure_firewall(firewall["id"])
    assert [s.method for s in standin.served()] == ["GET"]
    standin.provider().ensure_firewall(firewall["id"])
    (firewall,) = standin.firewalls()
    assert firewall["inbound_rules"][0]["sources"] == {"addresses": ["0.0.0.0/0"]}


def test_no_firewall_call_in_list_create_or_delete(standin: DigitalOceanStandIn) -> None:
    provider = standin.provider()
    created = provider.create_proxy()
    provider.list_proxies()
    provider.delete_proxy(created.id)
    assert "firewall" not in standin.requests()


# --- accounts and endpoints ------------------------------------------------------------------


def test_accounts_see_only_their_own_droplets(standin: DigitalOceanStandIn) -> None:
    alpha, beta = standin.provider(account=0), standin.provider(account=1)
    a, b = alpha.create_proxy(), beta.create_proxy()
    assert {p.id for p in alpha.list_proxies()} == {a.id}
    assert {p.id for p in beta.list_proxies()} == {b.id}
    beta.delete_proxy(a.id)  # not in beta's account: 404 there, so nothing happens
    assert standin.vm_exists(a.id)
    alpha.ensure_firewall(None)
    assert standin.firewalls(1) == []


def test_each_instance_uses_its_own_endpoint_over_the_library_variable(
    standin: DigitalOceanStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = DigitalOceanStandIn()
    try:
        monkeypatch.setenv("DIGITALOCEAN_END_POINT", other.endpoint)
        here = standin.provider("one")
        there = factories.digitalocean(
            instance="two",
            settings=DigitalOceanSettings(access_token=SecretStr(other.tokens[0])),
            proxy=other.proxy_settings(),
        )
        assert there.endpoint == other.endpoint
        here.create_proxy()
        there.create_proxy()
        here.ensure_firewall(None)
        assert standin.requests() == ["create", "firewall", "firewall", "firewall"]
        assert other.requests() == ["create"]
    finally:
        other.close()


def test_without_endpoint_settings_the_real_api_is_named_and_not_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DIGITALOCEAN_END_POINT", raising=False)
    provider = factories.digitalocean(
        instance="default",
        settings=DigitalOceanSettings(),
        proxy=DigitalOceanStandIn.proxy_settings(),
    )
    assert provider.endpoint == DEFAULT_ENDPOINT
