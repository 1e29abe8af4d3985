"""Vultr instances through the v2 REST API (requests), one session and token per instance."""

from __future__ import annotations

import base64
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from cloudproxy_cli.adapters.common import (
    TAG,
    Envelope,
    FirewallRules,
    Grant,
    HttpError,
    ProxySettings,
    canonical_cidr,
    firewall_name,
    guarded_delete,
    instance_tag,
    owns_tags,
    paginate,
    port_range,
    utc_datetime,
    vm_name,
)
from cloudproxy_cli.adapters.rest import TIMEOUT_S, Named, RestCalls, http_error
from cloudproxy_cli.core.errors import FirewallMissingError, ProviderError
from cloudproxy_cli.core.model import Proxy

log = logging.getLogger("cloudproxy")

PROVIDER = "vultr"
DEFAULT_ENDPOINT = "https://api.vultr.com/v2"
ENDPOINT_ENV = "VULTR_API_ENDPOINT"
PAGE_SIZE = 100  # Vultr allows up to 500; 100 keeps one page for any sane pool
# Vultr reports this (or nothing) as main_ip until the instance has its address.
_NO_ADDRESS = frozenset({"", "0.0.0.0"})  # noqa: S104 - compared with, never bound


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
        timeout_s: tuple[float, float] = TIMEOUT_S,
    ) -> None:
        self._instance = instance
        self._timeout_s = timeout_s
        self._token = token
        self._token_env = token_env
        self._endpoint = endpoint.rstrip("/")
        self._env = Envelope(
            f"{PROVIDER}/{instance}", tuple(s for s in (token, proxy.password) if s), sleep
        )
        host = urlsplit(self._endpoint).hostname or self._endpoint
        self._rest = RestCalls(self._env, host, self._auth_error)
        self._region = region
        self._plan = plan
        self._os_id = os_id
        self._proxy = proxy
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

    # --- Provider ---------------------------------------------------------------------------

    def list_proxies(self) -> list[Proxy]:
        proxies = []
        owned = set()
        # Every instance of the account, page by page: the v2 spec marks the `tag` filter
        # deprecated and offers none that fits (label, hostname, region... name one VM or a
        # place), so ownership is decided here, by both tags.
        with self._env.reading("list instances"):
            for item in self._pages("/instances", "instances", "list instances"):
                self._item_id(item)  # even one not ours: a garbled list is no list
                if not owns_tags(item.get("tags"), self._instance):
                    continue  # another instance's, or not ours at all
                proxy = self._to_proxy(item)
                owned.add(proxy.id)
                proxies.append(proxy)
        self._owned = owned
        return proxies

    def create_proxy(self) -> Proxy:
        from cloudproxy_cli.adapters.user_data import render_user_data

        if self._firewall_missing is not None:
            raise FirewallMissingError(
                f"{self._env.key}: firewall group {self._firewall_missing} no longer exists"
            )
        name = vm_name(self._instance)
        try:
            user_data = render_user_data(self._proxy)
        except ValueError as exc:  # its messages never quote the offending value
            raise self._env.error(f"cannot render the user data: {exc}") from None
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
            # No idempotency key in this API: a create whose answer was lost is looked up by
            # its unique label before it is ever sent again.
            answer = self._rest.create(
                "create instance",
                partial(self._send, _Call("POST", "/instances", "create instance", body=body)),
                partial(self._find_created, name),
            )
        except HttpError as exc:
            if self._firewall_id is not None and _names_firewall(exc):
                self._firewall_missing = self._firewall_id
                raise FirewallMissingError(
                    f"{self._env.key}: firewall group {self._firewall_id} no longer exists"
                    f" ({self._env.scrub(exc)})"
                ) from None
            raise self._rest.error("create instance", exc) from None
        item = answer.get("instance") if isinstance(answer, dict) else None
        if not isinstance(item, dict) or not item.get("id"):
            raise self._env.error("create instance: the answer names no instance")
        with self._env.reading("create instance"):
            proxy = self._to_proxy(item)
        self._owned.add(proxy.id)
        return proxy

    def _find_created(self, name: str) -> dict[str, Any] | None:
        """The instance labelled ``name`` carrying both tags, as a create answers it (``None``:
        no such instance). One request, errors raised as ``_send`` raises them."""
        what = "find instance"
        query: dict[str, str | int] = {"label": name, "per_page": self._page_size}
        answer = self._send(_Call("GET", "/instances", what, params=query))
        found = Named("instances", "label", name, self._instance).pick(answer, self._env, what)
        return None if found is None else {"instance": found}

    def delete_proxy(self, proxy_id: str) -> None:
        path = f"/instances/{_path_segment(proxy_id)}"

        guarded_delete(
            proxy_id,
            owned=self._owned,
            read=lambda: self._rest.item_or_none(
                "read instance",
                partial(self._request, _Call("GET", path, "read instance")),
                "instance",
            ),
            owns=lambda item: owns_tags(item.get("tags"), self._instance),
            delete=lambda _: self._rest.delete(
                "delete instance", partial(self._request, _Call("DELETE", path, "delete instance"))
            ),
            key=self._env.key,
            noun="instance",
        )

    def ensure_firewall(self, known_id: str | None) -> str | None:
        """One GET (the remembered group's rules); the group found by its description (a
        list) or created if gone, and its rules made exactly ours (stale ones deleted,
        missing ones added)."""
        rules = self._group_rules(known_id) if known_id else None
        group_id = known_id if rules is not None else None
        if group_id is None:
            group_id, rules = self._find_or_create_group()
        self._repair_rules(group_id, rules or [])
        self._firewall_id = group_id
        self._firewall_missing = None
        return group_id

    # --- firewall ---------------------------------------------------------------------------

    def _find_or_create_group(self) -> tuple[str, list[dict[str, Any]]]:
        """Our group (by its description) and its rules; a new one, without rules, if none."""
        name = firewall_name(self._instance)
        pages = self._pages("/firewalls", "firewall_groups", "list firewall groups")
        found = next((group for group in pages if group.get("description") == name), None)
        if found is not None:
            group_id = str(found.get("id") or "")
            rules = self._group_rules(group_id) if group_id else None
            if rules is None:
                raise self._env.error(f"firewall group {name} has no readable id")
            return group_id, rules
        answer = self._call(
            _Call("POST", "/firewalls", "create firewall group", body={"description": name})
        )
        created = answer.get("firewall_group") if isinstance(answer, dict) else None
        if not isinstance(created, dict) or not created.get("id"):
            raise self._env.error("create firewall group: no group in the answer")
        return str(created["id"]), []

    def _group_rules(self, group_id: str) -> list[dict[str, Any]] | None:
        """The rules of group ``group_id``; ``None`` if the group is gone (404)."""
        path = f"/firewalls/{_path_segment(group_id)}/rules"
        what = "list firewall rules"
        try:
            first = self._request(_Call("GET", path, what, params={"per_page": self._page_size}))
        except HttpError as exc:
            if exc.status == 404:
                return None
            raise self._rest.error(what, exc) from None
        items = first.get("firewall_rules") if isinstance(first, dict) else None
        if not isinstance(items, list):
            raise self._env.error(f"{what}: the answer has no 'firewall_rules' list")
        meta = first.get("meta")
        links = meta.get("links") if isinstance(meta, dict) else None
        if isinstance(links, dict) and links.get("next"):  # more than a page: read them all
            return list(self._pages(path, "firewall_rules", what))
        return [item for item in items if isinstance(item, dict)]

    def _repair_rules(self, group_id: str, rules: list[dict[str, Any]]) -> None:
        """Add the missing rule(s) first, then delete every other one (and duplicates)."""
        wanted = FirewallRules.for_proxy(self._proxy).grants
        kept: set[Grant] = set()
        stale: list[str] = []
        for rule in rules:
            grant = _grant(rule)
            if grant is not None and grant in wanted and grant not in kept:
                kept.add(grant)
            else:
                stale.append(str(rule.get("id")))
        path = f"/firewalls/{_path_segment(group_id)}/rules"
        for grant in sorted(wanted - kept):
            self._call(_Call("POST", path, "create firewall rule", body=_rule_body(grant)))
        for rule_id in stale:
            rule_path = f"{path}/{_path_segment(rule_id)}"
            self._rest.delete(
                "delete firewall rule",
                partial(self._request, _Call("DELETE", rule_path, "delete firewall rule")),
            )
        if stale or wanted - kept:
            log.info(
                "%s: firewall group %s repaired (%d rule(s) added, %d removed)",
                self._env.key, group_id, len(wanted - kept), len(stale),
            )  # fmt: skip

    # --- helpers ----------------------------------------------------------------------------

    def _pages(
        self, path: str, key: str, what: str, params: dict[str, str | int] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list, following ``meta.links.next``."""
        query: dict[str, str | int] = {**(params or {}), "per_page": self._page_size}

        def fetch(cursor: str | None) -> tuple[Iterable[dict[str, Any]], str | None]:
            page = query if cursor is None else {**query, "cursor": cursor}
            answer = self._call(_Call("GET", path, what, params=page))
            items = answer.get(key) if isinstance(answer, dict) else None
            if not isinstance(items, list):
                raise self._env.error(f"{what}: the answer has no {key!r} list")
            meta = answer.get("meta")
            links = meta.get("links") if isinstance(meta, dict) else None
            following = links.get("next") if isinstance(links, dict) else None
            if following and not isinstance(following, str):
                raise self._env.error(f"{what}: the API's page cursor is not text")
            if not all(isinstance(item, dict) for item in items):
                # Skipping it could hide a VM of ours, and the engine would create another.
                raise self._env.error(f"{what}: the answer lists an item that is not an object")
            return items, following or None

        return paginate(fetch, fail=self._env.error, what=what)

    def _call(self, call: _Call) -> Any:
        """``_request``, with every error answer turned into a one-line ``ProviderError``."""
        return self._rest.call(call.what, call.method, lambda: self._send(call))

    def _request(self, call: _Call) -> Any:
        """One API call, retried on 429/5xx; the decoded JSON body (``None`` when empty).

        Raises ``HttpError`` for an error answer, ``ProviderError`` when unreachable.
        """
        return self._rest.request(call.what, call.method, lambda: self._send(call))

    def _send(self, call: _Call) -> Any:
        if self._token is None:
            raise self._env.error(f"no API token; set {self._token_env}")
        response = self._session.request(
            call.method,
            self._endpoint + call.path,
            params=call.params,
            json=call.body,
            timeout=self._timeout_s,
        )
        if response.status_code >= 400:
            raise http_error(response, "error", self._env)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise self._env.error(f"{call.what}: the answer is not JSON") from None

    def _auth_error(self, _what: str, exc: HttpError) -> ProviderError:
        hint = f"check {self._token_env}"
        if exc.status == 403:
            hint += " and the API key's allowed IP ranges"
        return self._env.error(f"authentication failed ({exc.status}); {hint}")

    def _item_id(self, item: dict[str, Any]) -> str:
        vm_id = item.get("id")
        if not isinstance(vm_id, str) or not vm_id:
            raise self._env.error("the API listed an instance without a valid id")
        return vm_id

    def _to_proxy(self, item: dict[str, Any]) -> Proxy:
        ip = item.get("main_ip")
        return Proxy(
            id=self._item_id(item),
            created_at=self._created_at(item),
            ip=ip if isinstance(ip, str) and ip not in _NO_ADDRESS else None,
        )

    def _created_at(self, item: dict[str, Any]) -> datetime:
        try:
            return utc_datetime(item.get("date_created"))
        except ValueError:
            raise ProviderError(
                f"{self._env.key}: instance {item.get('id')} has no valid date_created"
            ) from None


def _names_firewall(exc: HttpError) -> bool:
    """Whether a failed create blamed the firewall group (Vultr: 400/404 naming it)."""
    return exc.status in (400, 404) and "firewall" in exc.message.lower()


def _grant(rule: dict[str, Any]) -> Grant | None:
    """What one Vultr rule lets in (its port a number or a "low:high" range); ``None`` for
    one we cannot read, or one open to a named source (Cloudflare, a load balancer)."""
    span = port_range(str(rule.get("port") or "").replace(":", "-"))
    cidr = canonical_cidr(f"{rule.get('subnet')}/{rule.get('subnet_size')}")
    if span is None or cidr is None or rule.get("source"):
        return None
    return Grant(str(rule.get("protocol")), *span, cidr)


def _rule_body(grant: Grant) -> dict[str, Any]:
    """One inbound rule. Vultr firewall rules are inbound only (everything outbound is
    allowed), so the group's rules are the whole policy: nothing else, not even SSH."""
    network = ipaddress.ip_network(grant.cidr)
    return {
        "ip_type": f"v{network.version}",
        "protocol": grant.protocol,
        "port": str(grant.low) if grant.low == grant.high else f"{grant.low}:{grant.high}",
        "subnet": str(network.network_address),
        "subnet_size": network.prefixlen,
        "notes": "cloudproxy: proxy port",
    }


def _path_segment(value: str) -> str:
    """An id as one path segment: an id with a '/' must not reach another endpoint."""
    return quote(value, safe="")
