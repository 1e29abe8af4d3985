"""Vultr instances through the v2 REST API (requests), one session and token per instance."""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests

from cloudproxy_cli.adapters.common import (
    TAG,
    HttpError,
    ProxySettings,
    TransportError,
    call_with_retries,
    classify_http,
    firewall_name,
    instance_tag,
    one_line,
    parse_retry_after,
    utc_datetime,
)
from cloudproxy_cli.core.errors import FirewallMissingError, ProviderError
from cloudproxy_cli.core.model import Proxy

if TYPE_CHECKING:
    from cloudproxy_cli.config import VultrSettings

log = logging.getLogger("cloudproxy")

PROVIDER = "vultr"
DEFAULT_ENDPOINT = "https://api.vultr.com/v2"
ENDPOINT_ENV = "VULTR_API_ENDPOINT"
PAGE_SIZE = 100  # Vultr allows up to 500; 100 keeps one page for any sane pool
TIMEOUT_S = (10.0, 60.0)  # (connect, read): a hung API must fail the run, not stall it
# Vultr reports this (or nothing) as main_ip until the instance has its address.
_NO_ADDRESS = frozenset({"", "0.0.0.0"})  # noqa: S104 - compared with, never bound
_MAX_PAGES = 1000  # a cursor that never ends is a broken API, not a huge account
_IDEMPOTENT = frozenset({"GET", "DELETE"})


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    what: str  # for messages: "list instances", "create instance", ...
    params: dict[str, str | int] | None = None
    body: dict[str, Any] | None = None


class VultrProvider:
    """One Vultr account (API token) and instance name; implements ``Provider``.

    Every instance it creates carries the tags ``cloudproxy`` and ``cloudproxy-<instance>``;
    it lists, and deletes, only instances that carry both.
    """

    def __init__(
        self,
        *,
        instance: str,
        token: str | None,
        token_env: str,
        endpoint: str,
        region: str,
        plan: str,
        os_id: int,
        proxy: ProxySettings,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._instance = instance
        self._token = token
        self._token_env = token_env
        self._endpoint = endpoint.rstrip("/")
        self._host = urlsplit(self._endpoint).hostname or self._endpoint
        self._region = region
        self._plan = plan
        self._os_id = os_id
        self._proxy = proxy
        self._sleep = sleep
        self._page_size = page_size
        self._session = session if session is not None else requests.Session()
        if token is not None:
            # The token travels in a header only: never in a URL that an exception could quote.
            self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["Accept"] = "application/json"
        self._firewall_id: str | None = None
        self._firewall_missing: str | None = None  # the id the API said is gone
        # Ids this adapter has seen carrying both tags (listed or created): deleting one of
        # them needs no ownership read. Ids are UUIDs, never reused.
        self._owned: set[str] = set()

    @property
    def endpoint(self) -> str:
        """The API base URL this instance talks to."""
        return self._endpoint

    @property
    def _key(self) -> str:
        return f"{PROVIDER}/{self._instance}"

    # --- Provider ---------------------------------------------------------------------------

    def list_proxies(self) -> list[Proxy]:
        tag = instance_tag(self._instance)
        proxies = []
        owned = set()
        for item in self._pages("/instances", "instances", "list instances", {"tag": tag}):
            if not _is_ours(item, tag):
                continue  # the tag filter matched, but the other mark is missing
            proxy = self._to_proxy(item)
            owned.add(proxy.id)
            proxies.append(proxy)
        self._owned = owned
        return proxies

    def create_proxy(self) -> Proxy:
        from cloudproxy_cli.adapters.user_data import render_user_data

        if self._firewall_missing is not None:
            raise FirewallMissingError(
                f"{self._key}: firewall group {self._firewall_missing} no longer exists"
            )
        name = f"{instance_tag(self._instance)}-{secrets.token_hex(4)}"
        try:
            user_data = render_user_data(self._proxy)
        except ValueError as exc:  # its messages never quote the offending value
            raise ProviderError(f"{self._key}: cannot render the user data: {exc}") from None
        body: dict[str, Any] = {
            "region": self._region,
            "plan": self._plan,
            "os_id": self._os_id,
            "label": name,
            "hostname": name,
            "tags": [TAG, instance_tag(self._instance)],
            "user_data": base64.b64encode(user_data.encode()).decode("ascii"),
        }
        if self._firewall_id is not None:
            body["firewall_group_id"] = self._firewall_id
        try:
            answer = self._request(_Call("POST", "/instances", "create instance", body=body))
        except HttpError as exc:
            if self._firewall_id is not None and _names_firewall(exc):
                self._firewall_missing = self._firewall_id
                raise FirewallMissingError(
                    f"{self._key}: firewall group {self._firewall_id} no longer exists"
                    f" ({self._scrub(str(exc))})"
                ) from None
            raise self._error("create instance", exc) from None
        item = answer.get("instance") if isinstance(answer, dict) else None
        if not isinstance(item, dict) or not item.get("id"):
            raise ProviderError(f"{self._key}: create instance: the answer names no instance")
        proxy = self._to_proxy(item)
        self._owned.add(proxy.id)
        return proxy

    def delete_proxy(self, proxy_id: str) -> None:
        path = f"/instances/{_path_segment(proxy_id)}"
        if proxy_id not in self._owned:
            # Not seen with both tags: read its tags before deleting anything.
            try:
                answer = self._request(_Call("GET", path, "read instance"))
            except HttpError as exc:
                if exc.status == 404:
                    return  # already gone
                raise self._error("read instance", exc) from None
            item = answer.get("instance") if isinstance(answer, dict) else None
            if not isinstance(item, dict) or not _is_ours(item, instance_tag(self._instance)):
                log.warning(
                    "%s: instance %s lacks this instance's tags; not deleting it",
                    self._key,
                    proxy_id,
                )
                return
        try:
            self._request(_Call("DELETE", path, "delete instance"))
        except HttpError as exc:
            if exc.status != 404:
                raise self._error("delete instance", exc) from None
        self._owned.discard(proxy_id)

    def ensure_firewall(self, known_id: str | None) -> str | None:
        if known_id is not None:
            self._firewall_id = known_id
            self._firewall_missing = None
            return known_id
        name = firewall_name(self._instance)
        found = next(
            (
                group
                for group in self._pages("/firewalls", "firewall_groups", "list firewall groups")
                if group.get("description") == name
            ),
            None,
        )
        if found is None:
            answer = self._call(
                _Call("POST", "/firewalls", "create firewall group", body={"description": name})
            )
            found = answer.get("firewall_group") if isinstance(answer, dict) else None
            if not isinstance(found, dict):
                raise ProviderError(f"{self._key}: create firewall group: no group in the answer")
            found = {**found, "rule_count": 0}
        group_id = str(found.get("id") or "")
        if not group_id:
            raise ProviderError(f"{self._key}: firewall group {name} has no id")
        if found.get("rule_count") == 0:
            # Just created, or a previous run failed between creating the group and its rule:
            # a group without the rule would block the proxy port forever.
            self._call(
                _Call(
                    "POST",
                    f"/firewalls/{_path_segment(group_id)}/rules",
                    "create firewall rule",
                    body=self._firewall_rule(),
                )
            )
        self._firewall_id = group_id
        self._firewall_missing = None
        return group_id

    # --- helpers ----------------------------------------------------------------------------

    def _firewall_rule(self) -> dict[str, Any]:
        """The one inbound rule: the proxy port over TCP, from ``allowed_ip`` or from anywhere.

        Vultr firewall rules are inbound only (everything outbound is allowed), so this single
        rule is the whole policy: nothing else, not even SSH, is reachable.
        """
        allowed = self._proxy.allowed_ip
        if allowed is None:
            subnet, size, ip_type = "0.0.0.0", 0, "v4"  # noqa: S104 - a rule subnet, not a bind
        else:
            address = ipaddress.ip_address(allowed)
            subnet, size = str(address), address.max_prefixlen
            ip_type = f"v{address.version}"
        return {
            "ip_type": ip_type,
            "protocol": "tcp",
            "port": str(self._proxy.port),
            "subnet": subnet,
            "subnet_size": size,
            "notes": "cloudproxy: proxy port",
        }

    def _pages(
        self, path: str, key: str, what: str, params: dict[str, str | int] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list, following ``meta.links.next``."""
        query: dict[str, str | int] = {**(params or {}), "per_page": self._page_size}
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            answer = self._call(_Call("GET", path, what, params=query))
            items = answer.get(key) if isinstance(answer, dict) else None
            if not isinstance(items, list):
                raise ProviderError(f"{self._key}: {what}: the answer has no {key!r} list")
            yield from (item for item in items if isinstance(item, dict))
            meta = answer.get("meta")
            links = meta.get("links") if isinstance(meta, dict) else None
            cursor = links.get("next") if isinstance(links, dict) else None
            if not cursor:
                return
            if not isinstance(cursor, str) or cursor in seen:
                raise ProviderError(f"{self._key}: {what}: the API's page cursor loops")
            seen.add(cursor)
            query = {**query, "cursor": cursor}
        raise ProviderError(f"{self._key}: {what}: more than {_MAX_PAGES} pages")

    def _call(self, call: _Call) -> Any:
        """``_request``, with every error answer turned into a one-line ``ProviderError``."""
        try:
            return self._request(call)
        except HttpError as exc:
            raise self._error(call.what, exc) from None

    def _request(self, call: _Call) -> Any:
        """One API call, retried on 429/5xx; the decoded JSON body (``None`` when empty).

        Raises ``HttpError`` for an error answer, ``ProviderError`` when unreachable.
        """
        if self._token is None:
            raise ProviderError(f"{self._key}: no API token; set {self._token_env}")
        url = self._endpoint + call.path

        def once() -> requests.Response:
            try:
                response = self._session.request(
                    call.method, url, params=call.params, json=call.body, timeout=TIMEOUT_S
                )
            except requests.RequestException as exc:
                # requests' own messages quote the URL and more; a short one of ours suffices.
                retryable = call.method in _IDEMPOTENT or isinstance(exc, requests.ConnectTimeout)
                raise TransportError(
                    f"cannot reach {self._host} ({type(exc).__name__})", retryable=retryable
                ) from None
            if response.status_code >= 400:
                raise HttpError(
                    response.status_code,
                    self._scrub(_error_message(response)),
                    parse_retry_after(response.headers.get("Retry-After")),
                )
            return response

        try:
            response = call_with_retries(
                once, what=f"{self._key}: {call.what}", classify=classify_http, sleep=self._sleep
            )
        except HttpError as exc:
            if exc.status in (401, 403):
                raise self._error(call.what, exc) from None
            raise
        except TransportError as exc:
            raise ProviderError(f"{self._key}: {call.what} failed: {exc}") from None
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProviderError(f"{self._key}: {call.what}: the answer is not JSON") from None

    def _error(self, what: str, exc: HttpError) -> ProviderError:
        if exc.status in (401, 403):
            hint = f"check {self._token_env}"
            if exc.status == 403:
                hint += " and the API key's allowed IP ranges"
            return ProviderError(f"{self._key}: authentication failed ({exc.status}); {hint}")
        return ProviderError(f"{self._key}: {what} failed: {exc}")

    def _scrub(self, text: str) -> str:
        """One short line without a secret, whatever the API chose to echo."""
        return one_line(text, (self._token, self._proxy.password))

    def _to_proxy(self, item: dict[str, Any]) -> Proxy:
        ip = item.get("main_ip")
        return Proxy(
            id=str(item["id"]),
            created_at=self._created_at(item),
            ip=ip if isinstance(ip, str) and ip not in _NO_ADDRESS else None,
        )

    def _created_at(self, item: dict[str, Any]) -> datetime:
        try:
            return utc_datetime(item.get("date_created"))
        except ValueError:
            raise ProviderError(
                f"{self._key}: instance {item.get('id')} has no valid date_created"
            ) from None


def _is_ours(item: dict[str, Any], tag: str) -> bool:
    tags = item.get("tags")
    return isinstance(tags, list) and TAG in tags and tag in tags


def _names_firewall(exc: HttpError) -> bool:
    """Whether a failed create blamed the firewall group (Vultr: 400/404 naming it)."""
    return exc.status in (400, 404) and "firewall" in exc.message.lower()


def _error_message(response: requests.Response) -> str:
    """Vultr's ``{"error": "...", "status": N}``; else the reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.reason or ""


def _path_segment(value: str) -> str:
    """An id as one path segment: an id with a '/' must not reach another endpoint."""
    return quote(value, safe="")


def from_settings(
    *,
    instance: str,
    settings: VultrSettings,
    proxy: ProxySettings,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    page_size: int = PAGE_SIZE,
) -> VultrProvider:
    """The adapter for one ``[providers.vultr.<instance>]``.

    Endpoint: ``api_endpoint``, else ``$VULTR_API_ENDPOINT``, else the real API. ``session``,
    ``sleep`` and ``page_size`` are test seams.
    """
    from cloudproxy_cli.config import env_name

    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    endpoint = settings.api_endpoint or os.environ.get(ENDPOINT_ENV, "").strip() or DEFAULT_ENDPOINT
    return VultrProvider(
        instance=instance,
        token=token,
        token_env=env_name(PROVIDER, instance, "api_token"),
        endpoint=endpoint,
        region=settings.region,
        plan=settings.plan,
        os_id=settings.os_id,
        proxy=proxy,
        session=session,
        sleep=sleep,
        page_size=page_size,
    )
