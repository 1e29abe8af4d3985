"""The Vultr adapter through requests against the stateful stand-in of Vultr's v2 API."""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests

from cloudproxy_cli.adapters.user_data import render_user_data
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import SecretStr, VultrSettings
from cloudproxy_cli.core.errors import FirewallMissingError, ProviderError, RateLimitedError
from tests.standins.vultr import (
    PROXY_PASSWORD,
    PROXY_PORT,
    TOKENS,
    Answer,
    VultrStandIn,
    make_standin,
)

MINE = ["cloudproxy", "cloudproxy-default"]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[VultrStandIn]:
    stand = make_standin(tmp_path)
    try:
        yield stand
    finally:
        stand.close()


def loopback_session() -> requests.Session:
    """A session that ignores HTTP(S)_PROXY: calls to 127.0.0.1 must stay on loopback."""
    session = requests.Session()
    session.trust_env = False
    return session


def assert_clean(message: str, api: VultrStandIn) -> None:
    """One line, and none of the credentials the adapters were given."""
    assert "\n" not in message
    for secret in api.secrets:
        assert secret not in message


# --- listing --------------------------------------------------------------------------------


def test_one_page_is_one_request(api: VultrStandIn) -> None:
    for _ in range(3):
        api.add_vm(tags=MINE)
    provider = api.provider()
    assert len(provider.list_proxies()) == 3
    assert api.requests() == ["list"]


def test_the_list_uses_no_deprecated_tag_filter(api: VultrStandIn) -> None:
    mine = api.add_vm(tags=MINE)
    api.add_vm(tags=["cloudproxy", "cloudproxy-other"])
    api.add_vm(tags=[])
    assert [p.id for p in api.provider().list_proxies()] == [mine]
    (listed,) = api.served()
    assert "tag" not in parse_qs(listed.query)  # marked deprecated in the v2 spec
    assert parse_qs(listed.query)["per_page"] == ["100"]


def test_pages_are_followed_by_cursor(api: VultrStandIn) -> None:
    ids = {api.add_vm(tags=MINE) for _ in range(5)}
    api.add_vm(tags=[])  # filtered out by the API's tag filter: pages hold only candidates
    provider = api.provider(page_size=2)
    assert {p.id for p in provider.list_proxies()} == ids
    assert api.requests() == ["list", "list", "list"]


def test_only_vms_with_both_tags_are_listed(api: VultrStandIn) -> None:
    mine = api.add_vm(tags=[*MINE, "extra"])
    api.add_vm(tags=[])
    api.add_vm(tags=["cloudproxy-default"])  # the instance tag alone is someone else's
    api.add_vm(tags=["cloudproxy"])
    api.add_vm(tags=["cloudproxy", "cloudproxy-other"])
    api.add_vm(tags=MINE, account=1)  # same tags, another account
    assert [p.id for p in api.provider().list_proxies()] == [mine]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_failed_list_raises_after_bounded_retries(api: VultrStandIn, status: int) -> None:
    api.add_vm(tags=MINE)
    provider = api.provider()
    api.fail_next("list", status, times=4)
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    message = str(info.value)
    assert message.startswith("vultr/default: list instances failed: HTTP ")
    assert str(status) in message
    assert_clean(message, api)
    assert api.requests() == ["list"] * 4
    assert api.sleeps == [0.5, 1.0, 2.0]  # exponential backoff without a Retry-After


def test_a_failure_on_a_later_page_raises_too(api: VultrStandIn) -> None:
    for _ in range(3):
        api.add_vm(tags=MINE)
    provider = api.provider(page_size=2)
    api.fail_next("list", 503, times=4, skip=1)  # the first page is served, the second never
    with pytest.raises(ProviderError):
        provider.list_proxies()  # no partial inventory comes back
    assert api.requests() == ["list"] * 5


def test_429_honours_retry_after_then_succeeds(api: VultrStandIn) -> None:
    mine = api.add_vm(tags=MINE)
    provider = api.provider()
    api.fail_next("list", 429, retry_after=3)
    assert [p.id for p in provider.list_proxies()] == [mine]
    assert api.sleeps == [3.0]
    assert api.requests() == ["list", "list"]


def test_a_retry_after_beyond_the_cap_fails_now(api: VultrStandIn) -> None:
    provider = api.provider()
    api.fail_next("list", 429, retry_after=3600)
    with pytest.raises(
        RateLimitedError, match=r"rate limited until \d\d:\d\d:\d\dZ \(Retry-After\)"
    ):
        provider.list_proxies()
    assert api.sleeps == []


def test_a_garbled_answer_is_an_error_not_an_empty_list(
    api: VultrStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = api.provider()
    original = api.serve

    def garbled(method: str, target: str, auth: str | None, raw: bytes) -> Answer:
        answer = original(method, target, auth, raw)
        answer.body = {"unexpected": True}
        return answer

    monkeypatch.setattr(api, "serve", garbled)
    with pytest.raises(ProviderError, match="no 'instances' list"):
        provider.list_proxies()


# --- addresses and dates --------------------------------------------------------------------


def test_no_ip_while_booting_then_a_loopback_address(api: VultrStandIn) -> None:
    provider = api.provider()
    created = provider.create_proxy()
    assert created.ip is None  # the create answer says main_ip 0.0.0.0
    assert [p.ip for p in provider.list_proxies()] == [None]
    api.boot_all()
    (booted,) = provider.list_proxies()
    assert booted.ip is not None and booted.ip.startswith("127.0.0.")
    assert booted.port is None


def test_an_empty_main_ip_is_no_ip(api: VultrStandIn) -> None:
    api.add_vm(tags=MINE, main_ip="")
    assert [p.ip for p in api.provider().list_proxies()] == [None]


@pytest.mark.parametrize(
    ("date_created", "expected"),
    [
        ("2026-01-01T00:00:00+00:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T02:30:00+02:30", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_created_at_is_aware_utc(api: VultrStandIn, date_created: str, expected: datetime) -> None:
    api.add_vm(tags=MINE, date_created=date_created)
    (proxy,) = api.provider().list_proxies()
    assert proxy.created_at == expected
    assert proxy.created_at.utcoffset() == timedelta(0)


# --- creating -------------------------------------------------------------------------------


def test_create_is_one_request_with_tags_user_data_and_firewall(api: VultrStandIn) -> None:
    provider = api.provider()
    firewall = provider.ensure_firewall(None)
    api.reset_requests()
    created = provider.create_proxy()
    assert api.requests() == ["create"]
    (body,) = api.create_bodies
    assert body["tags"] == ["cloudproxy", "cloudproxy-default"]  # in the create call itself
    assert body["label"].startswith("cloudproxy-default-")
    assert body["hostname"] == body["label"]
    assert (body["region"], body["plan"], body["os_id"]) == ("ewr", "vc2-1c-1gb", 2284)
    assert body["firewall_group_id"] == firewall
    user_data = base64.b64decode(body["user_data"]).decode()
    assert user_data == render_user_data(api.proxy_settings())
    assert api.vm_tags(created.id) == {"cloudproxy": "", "cloudproxy-default": ""}


def test_labels_are_unique(api: VultrStandIn) -> None:
    provider = api.provider()
    for _ in range(3):
        provider.create_proxy()
    assert len({b["label"] for b in api.create_bodies}) == 3


def test_create_without_an_ensured_firewall_names_none(api: VultrStandIn) -> None:
    api.provider().create_proxy()
    assert "firewall_group_id" not in api.create_bodies[0]


def test_create_retries_a_503_and_creates_once(api: VultrStandIn) -> None:
    provider = api.provider()
    api.fail_next("create", 503, retry_after=1)
    created = provider.create_proxy()
    # A 503 may hide an instance made anyway: it is looked up by label before the resend.
    assert api.requests() == ["create", "list", "create"]
    assert api.sleeps == [1.0]
    assert [p.id for p in provider.list_proxies()] == [created.id]


def test_a_failed_create_says_why_without_user_data(api: VultrStandIn) -> None:
    provider = api.provider()
    api.fail_next("create", 500, times=4)
    with pytest.raises(ProviderError) as info:
        provider.create_proxy()
    message = str(info.value)
    assert message.startswith("vultr/default: create instance failed: HTTP 500")
    assert_clean(message, api)
    assert api.create_bodies == []
    assert not api.accounts[TOKENS[0]].instances


def test_a_vanished_firewall_raises_firewall_missing(api: VultrStandIn) -> None:
    provider = api.provider()
    gone = provider.ensure_firewall(None)
    assert gone is not None
    api.accounts[TOKENS[0]].firewalls.pop(gone)  # deleted after this run verified it
    api.reset_requests()
    with pytest.raises(FirewallMissingError) as info:
        provider.create_proxy()
    assert gone in str(info.value)
    assert_clean(str(info.value), api)
    # The rest of this run's creates fail the same way without asking the API again.
    with pytest.raises(FirewallMissingError):
        provider.create_proxy()
    assert api.requests() == ["create"]
    # The next run finds (here: makes) the firewall again and creates normally.
    firewall = provider.ensure_firewall(None)
    provider.create_proxy()
    assert api.create_bodies[-1]["firewall_group_id"] == firewall


# --- deleting -------------------------------------------------------------------------------


def test_delete_after_list_is_one_request(api: VultrStandIn) -> None:
    provider = api.provider()
    vm = api.add_vm(tags=MINE)
    provider.list_proxies()
    api.reset_requests()
    provider.delete_proxy(vm)
    assert api.requests() == ["delete"]
    assert not api.vm_exists(vm)


def test_delete_of_an_unseen_vm_reads_its_tags_first(api: VultrStandIn) -> None:
    vm = api.add_vm(tags=MINE)
    provider = api.provider()
    provider.delete_proxy(vm)
    assert api.requests() == ["other", "delete"]
    assert not api.vm_exists(vm)


@pytest.mark.parametrize(
    "tags",
    [[], ["cloudproxy"], ["cloudproxy-default"], ["cloudproxy", "cloudproxy-other"]],
    ids=["untagged", "common-only", "instance-only", "other-instance"],
)
def test_foreign_vms_are_never_deleted(api: VultrStandIn, tags: list[str]) -> None:
    foreign = api.add_vm(tags=tags)
    provider = api.provider()
    provider.list_proxies()
    provider.delete_proxy(foreign)
    assert api.vm_exists(foreign)
    assert "delete" not in api.requests()


def test_deleting_what_is_gone_succeeds(api: VultrStandIn) -> None:
    provider = api.provider()
    created = provider.create_proxy()
    provider.delete_proxy(created.id)
    api.reset_requests()
    provider.delete_proxy(created.id)  # unknown now: one read, 404, done
    assert api.requests() == ["other"]
    # Listed, then deleted behind our back: the DELETE's 404 is success too.
    vm = api.add_vm(tags=MINE)
    provider.list_proxies()
    api.accounts[TOKENS[0]].instances.pop(vm)
    provider.delete_proxy(vm)


def test_a_failed_delete_raises(api: VultrStandIn) -> None:
    provider = api.provider()
    created = provider.create_proxy()
    api.fail_next("delete", 500, times=4)
    with pytest.raises(ProviderError, match=r"^vultr/default: delete instance failed: HTTP 500"):
        provider.delete_proxy(created.id)
    assert api.vm_exists(created.id)


# --- firewall -------------------------------------------------------------------------------


def test_firewall_is_created_once_with_only_the_proxy_port(api: VultrStandIn) -> None:
    firewall = api.provider().ensure_firewall(None)
    assert api.requests() == ["firewall"] * 3  # find, create group, add its rule
    (group,) = api.firewall_groups()
    assert (group["id"], group["description"]) == (firewall, "cloudproxy-default")
    rules = api.firewall_rules(group["id"])
    assert [
        (r["ip_type"], r["protocol"], r["port"], r["subnet"], r["subnet_size"]) for r in rules
    ] == [("v4", "tcp", str(PROXY_PORT), "0.0.0.0", 0)]

    api.reset_requests()
    assert api.provider().ensure_firewall(None) == firewall  # found by name, rules read
    assert api.requests() == ["firewall", "firewall"]
    assert len(api.firewall_groups()) == 1
    assert firewall is not None
    assert len(api.firewall_rules(firewall)) == 1


def test_firewall_admits_only_the_host_ip_when_set(api: VultrStandIn) -> None:
    firewall = api.provider(allowed_ip="203.0.113.7").ensure_firewall(None)
    assert firewall is not None
    (rule,) = api.firewall_rules(firewall)
    assert (rule["protocol"], rule["port"], rule["subnet"], rule["subnet_size"]) == (
        "tcp",
        str(PROXY_PORT),
        "203.0.113.7",
        32,
    )


def test_a_known_firewall_costs_one_read_of_its_rules(api: VultrStandIn) -> None:
    known = api.provider().ensure_firewall(None)
    api.reset_requests()
    assert api.provider().ensure_firewall(known) == known
    assert [(s.method, s.path) for s in api.served()] == [("GET", f"/v2/firewalls/{known}/rules")]


def test_a_changed_group_gets_exactly_its_rule_back(api: VultrStandIn) -> None:
    provider = api.provider()
    known = provider.ensure_firewall(None)
    assert known is not None
    (rule,) = api.accounts[TOKENS[0]].rules[known]
    rule["port"] = "22"  # changed in the console, and a rule added there
    extra = {"id": 999, "port": str(PROXY_PORT), "ip_type": "v6", "subnet": "::"}
    api.accounts[TOKENS[0]].rules[known].append({**rule, **extra, "subnet_size": 0})
    api.reset_requests()
    assert provider.ensure_firewall(known) == known
    assert [s.method for s in api.served()] == ["GET", "POST", "DELETE", "DELETE"]
    assert [
        (r["protocol"], r["port"], r["subnet"], r["subnet_size"]) for r in api.firewall_rules(known)
    ] == [("tcp", str(PROXY_PORT), "0.0.0.0", 0)]


def test_a_group_left_without_its_rule_gets_it(api: VultrStandIn) -> None:
    # A previous run created the group, then failed before adding the rule.
    group = api.add_firewall_group("cloudproxy-default")
    assert api.provider().ensure_firewall(None) == group
    assert api.requests() == ["firewall"] * 3  # list, its rules, the missing rule
    assert len(api.firewall_rules(group)) == 1


def test_each_instance_has_its_own_firewall(api: VultrStandIn) -> None:
    first = api.provider("default").ensure_firewall(None)
    second = api.provider("second").ensure_firewall(None)
    assert first != second
    assert sorted(g["description"] for g in api.firewall_groups()) == [
        "cloudproxy-default",
        "cloudproxy-second",
    ]


def test_a_failed_firewall_lookup_raises(api: VultrStandIn) -> None:
    api.fail_next("firewall", 500, times=4)
    with pytest.raises(ProviderError, match="list firewall groups failed"):
        api.provider().ensure_firewall(None)
    assert api.firewall_groups() == []


# --- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance", "variable"), [("default", "VULTR_API_TOKEN"), ("eu", "VULTR_EU_API_TOKEN")]
)
def test_401_is_a_one_line_auth_error(
    api: VultrStandIn, caplog: pytest.LogCaptureFixture, instance: str, variable: str
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = api.provider(instance, token="not-a-valid-token-1234")
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    message = str(info.value)
    assert message == f"vultr/{instance}: authentication failed (401); check {variable}"
    assert "not-a-valid-token-1234" not in message + caplog.text + repr(info.value.__cause__)
    assert api.requests() == ["list"]  # never retried


def test_403_names_the_access_control_list(api: VultrStandIn) -> None:
    provider = api.provider()
    api.fail_next("create", 403)
    with pytest.raises(ProviderError) as info:
        provider.create_proxy()
    assert str(info.value).startswith("vultr/default: authentication failed (403); check ")
    assert_clean(str(info.value), api)


def test_no_token_fails_without_a_request(api: VultrStandIn) -> None:
    provider = factories.vultr(
        instance="default",
        settings=VultrSettings(enabled=True, api_endpoint=api.endpoint),
        proxy=api.proxy_settings(),
        session=loopback_session(),
    )
    with pytest.raises(ProviderError, match=r"^vultr/default: no API token; set VULTR_API_TOKEN$"):
        provider.list_proxies()
    assert api.requests() == []


def test_the_token_echoed_by_the_api_is_scrubbed(
    api: VultrStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = api.provider()
    original = api.serve

    def echoing(method: str, target: str, auth: str | None, raw: bytes) -> Answer:
        answer = original(method, target, auth, raw)
        # The token straddles the 200-character cut: not even its start may remain.
        echo = f"{'x' * 165} bad request from {auth} for {PROXY_PASSWORD}"
        answer.status, answer.body = 400, {"error": echo, "status": 400}
        return answer

    monkeypatch.setattr(api, "serve", echoing)
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    assert "HTTP 400: " + "x" * 165 + " bad request from Bearer ***" in str(info.value)
    assert TOKENS[0][:8] not in str(info.value)
    assert_clean(str(info.value), api)


def test_an_unreachable_api_is_a_short_error(api: VultrStandIn) -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    provider = factories.vultr(
        instance="default",
        settings=VultrSettings(
            enabled=True, api_token=SecretStr(TOKENS[0]), api_endpoint=f"http://127.0.0.1:{port}/v2"
        ),
        proxy=api.proxy_settings(),
        session=loopback_session(),
        sleep=sleeps.append,
    )
    with pytest.raises(ProviderError) as info:
        provider.list_proxies()
    assert str(info.value) == (
        "vultr/default: list instances failed: cannot reach 127.0.0.1 (ConnectionError)"
    )
    assert len(sleeps) == 3  # a GET is safe to retry
    with pytest.raises(ProviderError):
        provider.create_proxy()
    assert len(sleeps) == 6  # refused: never sent, so as safe to send again as a GET


# --- accounts and endpoints -----------------------------------------------------------------


def test_accounts_are_isolated_by_token(api: VultrStandIn) -> None:
    first, second = api.provider(account=0), api.provider(account=1)
    a, b = first.create_proxy(), second.create_proxy()
    # Each request was served from the account its own token names.
    assert (api.vm_account(a.id), api.vm_account(b.id)) == (0, 1)
    assert [p.id for p in first.list_proxies()] == [a.id]
    assert [p.id for p in second.list_proxies()] == [b.id]
    second.delete_proxy(a.id)  # not in its account: gone, as far as it can tell
    assert api.vm_exists(a.id)
    # Firewalls too belong to one account each.
    assert first.ensure_firewall(None) != second.ensure_firewall(None)
    assert len(api.firewall_groups(0)) == len(api.firewall_groups(1)) == 1


def test_endpoint_setting_then_env_then_the_real_api(
    api: VultrStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = api.proxy_settings()

    def endpoint(settings: VultrSettings) -> str:
        return factories.vultr(instance="x", settings=settings, proxy=proxy).endpoint

    monkeypatch.delenv("VULTR_API_ENDPOINT", raising=False)
    assert endpoint(VultrSettings()) == "https://api.vultr.com/v2"
    monkeypatch.setenv("VULTR_API_ENDPOINT", "http://127.0.0.1:1/v2/")
    assert endpoint(VultrSettings()) == "http://127.0.0.1:1/v2"
    assert endpoint(VultrSettings(api_endpoint=api.endpoint)) == api.endpoint


def test_settings_reach_the_create_call(api: VultrStandIn) -> None:
    settings = VultrSettings(
        api_token=SecretStr(TOKENS[0]),
        api_endpoint=api.endpoint,
        region="fra",
        plan="vc2-2c-4gb",
        os_id=1743,
    )
    provider = factories.vultr(
        instance="default",
        settings=settings,
        proxy=api.proxy_settings(),
        session=loopback_session(),
    )
    provider.create_proxy()
    body = api.create_bodies[0]
    assert (body["region"], body["plan"], body["os_id"]) == ("fra", "vc2-2c-4gb", 1743)
