"""A stateful stand-in for Vultr's v2 REST API on 127.0.0.1: instances and firewall groups."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.vultr import VultrProvider
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import SecretStr, VultrSettings
from tests.standins.base import Kind
from tests.standins.http import (
    Failure,
    FailureQueue,
    JsonHandler,
    RequestLog,
    Served,
    inject,
    parse_json_object,
    retry_after_header,
    serve,
)

# One token per account: a request is served from the account its bearer token names.
TOKENS = ("vultr-token-account-a-4f1c9e7b2d", "vultr-token-account-b-8a3e6d0c5f")
PROXY_USER = "proxyuser"
PROXY_PASSWORD = "proxy-password-7d2b9"
PROXY_PORT = 8899
MAX_PER_PAGE = 500
_PROTOCOLS = frozenset({"icmp", "tcp", "udp", "gre", "esp", "ah"})

_INSTANCES = re.compile(r"/v2/instances")
_INSTANCE = re.compile(r"/v2/instances/([^/]+)")
_FIREWALLS = re.compile(r"/v2/firewalls")
_RULES = re.compile(r"/v2/firewalls/([^/]+)/rules")
_RULE = re.compile(r"/v2/firewalls/([^/]+)/rules/([^/]+)")


class ApiError(Exception):
    """An error answer in Vultr's shape: ``{"error": "...", "status": N}``."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class Answer:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Account:
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)  # in creation order
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()  # 2026-01-01T00:00:00+00:00


def classify(method: str, path: str) -> Kind:
    if _INSTANCES.fullmatch(path):
        return {"GET": "list", "POST": "create"}.get(method, "other")  # type: ignore[return-value]
    if _INSTANCE.fullmatch(path):
        return "delete" if method == "DELETE" else "other"
    if path.startswith("/v2/firewalls"):
        return "firewall"
    return "other"


class VultrStandIn:
    """Vultr's API for the adapter, plus controls for tests (see ``tests/standins/base.py``)."""

    name = "vultr"

    def __init__(self, tokens: tuple[str, ...] = TOKENS) -> None:
        self.secrets: tuple[str, ...] = (*tokens, PROXY_PASSWORD)
        self.tokens = tokens
        self.accounts = {token: Account() for token in tokens}
        self.create_bodies: list[dict[str, Any]] = []  # every POST /v2/instances body, as sent
        self.sleeps: list[float] = []  # what adapters' retries waited (they never really sleep)
        self._log: RequestLog[Served] = RequestLog()
        self.failures: FailureQueue[Failure] = FailureQueue()  # see tests/standins/http.py
        self._lock = threading.Lock()
        self._addresses = itertools.count(1)
        self._rule_ids = itertools.count(1)
        self._sessions: list[requests.Session] = []
        self._server = serve(_Handler, self)
        self.endpoint = f"{self._server.url}/v2"

    # --- StandIn ----------------------------------------------------------------------------

    def provider(
        self,
        instance: str = "default",
        *,
        account: int = 0,
        token: str | None = None,
        page_size: int | None = None,
        allowed_ip: str | None = None,
    ) -> VultrProvider:
        settings = VultrSettings(
            enabled=True,
            api_token=SecretStr(token if token is not None else self.tokens[account]),
            api_endpoint=self.endpoint,
        )
        # trust_env off: an HTTP(S)_PROXY in the test environment must not divert loopback calls.
        session = requests.Session()
        session.trust_env = False
        self._sessions.append(session)
        extra: dict[str, Any] = {} if page_size is None else {"page_size": page_size}
        return factories.vultr(
            instance=instance,
            settings=settings,
            proxy=self.proxy_settings(allowed_ip),
            session=session,
            sleep=self.sleeps.append,
            **extra,
        )

    @staticmethod
    def proxy_settings(allowed_ip: str | None = None) -> ProxySettings:
        return ProxySettings(PROXY_PORT, PROXY_USER, PROXY_PASSWORD, allowed_ip)

    def add_foreign_vm(self, *, instance: str | None, account: int = 0) -> str:
        tags = [] if instance is None else ["cloudproxy", f"cloudproxy-{instance}"]
        return self.add_vm(tags=tags, account=account)

    def add_vm(
        self,
        *,
        tags: list[str],
        account: int = 0,
        date_created: str | None = None,
        main_ip: str = "0.0.0.0",  # what Vultr reports while booting
    ) -> str:
        with self._lock:
            vm = self._new_instance({"region": "ewr", "plan": "vc2-1c-1gb", "os_id": 2284}, tags)
            vm["main_ip"] = main_ip
            if date_created is not None:
                vm["date_created"] = date_created
            self.accounts[self.tokens[account]].instances[vm["id"]] = vm
        return str(vm["id"])

    def vm_exists(self, vm_id: str) -> bool:
        return self._find(vm_id) is not None

    def vm_ids(self) -> list[str]:
        with self._lock:
            return [i for a in self.accounts.values() for i in a.instances]

    def vm_tags(self, vm_id: str) -> dict[str, str]:
        vm = self._find(vm_id)
        assert vm is not None, vm_id
        return dict.fromkeys(vm["tags"], "")

    def vm_account(self, vm_id: str) -> int:
        for index, token in enumerate(self.tokens):
            if vm_id in self.accounts[token].instances:
                return index
        raise KeyError(vm_id)

    def boot_all(self) -> None:
        with self._lock:
            for account in self.accounts.values():
                for vm in account.instances.values():
                    if vm["status"] == "pending":
                        n = next(self._addresses)
                        vm["main_ip"] = f"127.0.{n // 250}.{n % 250 + 1}"
                        vm.update(status="active", server_status="ok")

    def fail_next(
        self,
        kind: Kind,
        status: int,
        *,
        times: int = 1,
        retry_after: int | None = None,
        skip: int = 0,
    ) -> None:
        """As ``StandIn.fail_next``; ``skip``: serve that many requests of ``kind`` first."""
        self.failures.add(kind, Failure(status, retry_after), times=times, skip=skip)

    def requests(self) -> list[Kind]:
        return self._log.kinds()

    def served(self) -> list[Served]:
        """Every request since ``reset_requests``, with its method, path and query."""
        return self._log.entries()

    def reset_requests(self) -> None:
        self._log.clear()

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        self._server.close()

    # --- test inspection --------------------------------------------------------------------

    def instance_ids(self, account: int = 0) -> list[str]:
        """The ids of the account's instances, in creation order (the stand-in's own state)."""
        with self._lock:
            return list(self.accounts[self.tokens[account]].instances)

    def firewall_groups(self, account: int = 0) -> list[dict[str, Any]]:
        state = self.accounts[self.tokens[account]]
        return [self._group(state, g) for g in state.firewalls.values()]

    def firewall_rules(self, group_id: str, account: int = 0) -> list[dict[str, Any]]:
        return list(self.accounts[self.tokens[account]].rules[group_id])

    def add_firewall_group(self, description: str, account: int = 0) -> str:
        """A group made outside the adapter (or left without its rule by a failed run)."""
        with self._lock:
            state = self.accounts[self.tokens[account]]
            group = {"id": str(uuid.uuid4()), "description": description}
            group.update(date_created=_now(), date_modified=_now())
            state.firewalls[group["id"]] = group
            state.rules[group["id"]] = []
        return group["id"]

    # --- the API ----------------------------------------------------------------------------

    def serve(self, method: str, target: str, authorization: str | None, raw_body: bytes) -> Answer:
        url = urlsplit(target)
        path = url.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        kind = classify(method, path)
        self._log.add(Served(kind, method, path, url.query))
        return inject(
            self.failures.take(kind),
            lambda: self._serve(method, path, query, authorization, raw_body),
            _injected,
        )

    def _serve(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        authorization: str | None,
        raw_body: bytes,
    ) -> Answer:
        try:
            token = (authorization or "").removeprefix("Bearer ")
            account = self.accounts.get(token)
            if not authorization or not authorization.startswith("Bearer ") or account is None:
                raise ApiError(401, "Invalid API token.")
            body = _json_body(raw_body) if method in {"POST", "PATCH", "PUT"} else {}
            with self._lock:
                return self._route(account, method, path, query, body)
        except ApiError as exc:
            headers = retry_after_header(exc.retry_after)
            return Answer(exc.status, {"error": exc.message, "status": exc.status}, headers)

    def _route(
        self,
        account: Account,
        method: str,
        path: str,
        query: dict[str, str],
        body: dict[str, Any],
    ) -> Answer:
        routes: list[tuple[re.Pattern[str], dict[str, Callable[..., Answer]]]] = [
            (_INSTANCES, {"GET": self._list_instances, "POST": self._create_instance}),
            (_INSTANCE, {"GET": self._get_instance, "DELETE": self._delete_instance}),
            (_FIREWALLS, {"GET": self._list_firewalls, "POST": self._create_firewall}),
            (_RULES, {"GET": self._list_rules, "POST": self._create_rule}),
            (_RULE, {"DELETE": self._delete_rule}),
        ]
        for pattern, handlers in routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                raise ApiError(405, "Method not allowed.")
            return handler(account, *match.groups(), query=query, body=body)
        raise ApiError(404, "Invalid API endpoint.")

    def _list_instances(self, account: Account, *, query: dict[str, str], **_: Any) -> Answer:
        # `tag` is deprecated in the v2 spec, but still served; `label` is an exact match.
        items = [
            vm
            for vm in account.instances.values()
            if ("tag" not in query or query["tag"] in vm["tags"])
            and ("label" not in query or query["label"] == vm["label"])
        ]
        page, meta = _paginate(items, query)
        return Answer(200, {"instances": page, "meta": meta})

    def _create_instance(self, account: Account, *, body: dict[str, Any], **_: Any) -> Answer:
        for key in ("region", "plan"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ApiError(400, f"Invalid {key}.")
        if not isinstance(body.get("os_id"), int):
            raise ApiError(400, "Invalid os_id.")
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "Invalid tags.")
        if "user_data" in body:
            try:
                base64.b64decode(body["user_data"], validate=True)
            except (binascii.Error, TypeError):
                raise ApiError(400, "Invalid user_data: must be base64 encoded.") from None
        firewall = body.get("firewall_group_id")
        if firewall and firewall not in account.firewalls:
            raise ApiError(400, "Invalid firewall group.")
        self.create_bodies.append(body)
        vm = self._new_instance(body, tags)
        account.instances[vm["id"]] = vm
        # The create answer alone carries the root password, as the real API's does.
        return Answer(202, {"instance": {**vm, "default_password": "Root-Pass-Only-Once"}})

    def _get_instance(self, account: Account, vm_id: str, **_: Any) -> Answer:
        vm = account.instances.get(vm_id)
        if vm is None:
            raise ApiError(404, "Invalid instance-id.")
        return Answer(200, {"instance": vm})

    def _delete_instance(self, account: Account, vm_id: str, **_: Any) -> Answer:
        if account.instances.pop(vm_id, None) is None:
            raise ApiError(404, "Invalid instance-id.")
        return Answer(204)

    def _list_firewalls(self, account: Account, *, query: dict[str, str], **_: Any) -> Answer:
        groups = [self._group(account, g) for g in account.firewalls.values()]
        page, meta = _paginate(groups, query)
        return Answer(200, {"firewall_groups": page, "meta": meta})

    def _create_firewall(self, account: Account, *, body: dict[str, Any], **_: Any) -> Answer:
        description = body.get("description", "")
        if not isinstance(description, str):
            raise ApiError(400, "Invalid description.")
        group = {"id": str(uuid.uuid4()), "description": description}
        group.update(date_created=_now(), date_modified=_now())
        account.firewalls[group["id"]] = group
        account.rules[group["id"]] = []
        return Answer(201, {"firewall_group": self._group(account, group)})

    def _list_rules(
        self, account: Account, group_id: str, *, query: dict[str, str], **_: Any
    ) -> Answer:
        if group_id not in account.firewalls:
            raise ApiError(404, "Invalid firewall group.")
        page, meta = _paginate(account.rules[group_id], query)
        return Answer(200, {"firewall_rules": page, "meta": meta})

    def _create_rule(
        self, account: Account, group_id: str, *, body: dict[str, Any], **_: Any
    ) -> Answer:
        if group_id not in account.firewalls:
            raise ApiError(404, "Invalid firewall group.")
        ip_type, protocol = body.get("ip_type"), body.get("protocol")
        if ip_type not in {"v4", "v6"}:
            raise ApiError(400, "Invalid ip_type.")
        if protocol not in _PROTOCOLS:
            raise ApiError(400, "Invalid protocol.")
        try:
            network = ipaddress.ip_network(f"{body.get('subnet')}/{body.get('subnet_size')}")
        except ValueError:
            raise ApiError(400, "Invalid subnet or subnet_size.") from None
        if f"v{network.version}" != ip_type:
            raise ApiError(400, "Subnet does not match ip_type.")
        port = body.get("port")
        if protocol in {"tcp", "udp"} and not (isinstance(port, str) and port):
            raise ApiError(400, "A port is required for tcp and udp rules.")
        rule = {
            "id": next(self._rule_ids),
            "type": ip_type,
            "ip_type": ip_type,
            "action": "accept",
            "protocol": protocol,
            "port": port or "",
            "subnet": body["subnet"],
            "subnet_size": body["subnet_size"],
            "source": body.get("source", ""),
            "notes": body.get("notes", ""),
        }
        account.rules[group_id].append(rule)
        return Answer(201, {"firewall_rule": rule})

    def _delete_rule(self, account: Account, group_id: str, rule_id: str, **_: Any) -> Answer:
        rules = account.rules.get(group_id)
        if rules is None:
            raise ApiError(404, "Invalid firewall group.")
        kept = [r for r in rules if str(r["id"]) != rule_id]
        if len(kept) == len(rules):
            raise ApiError(404, "Invalid firewall rule.")
        account.rules[group_id] = kept
        return Answer(204)

    # --- state ------------------------------------------------------------------------------

    def _new_instance(self, body: dict[str, Any], tags: list[str]) -> dict[str, Any]:
        label = body.get("label", "")
        return {
            "id": str(uuid.uuid4()),
            "os": "Ubuntu 24.04 LTS x64",
            "ram": 1024,
            "disk": 25,
            "main_ip": "0.0.0.0",  # Vultr's "no address yet"
            "vcpu_count": 1,
            "region": body["region"],
            "plan": body["plan"],
            "date_created": _now(),
            "status": "pending",
            "allowed_bandwidth": 1000,
            "netmask_v4": "",
            "gateway_v4": "0.0.0.0",  # as the real API reports it while booting
            "power_status": "running",
            "server_status": "none",
            "v6_network": "",
            "v6_main_ip": "",
            "v6_network_size": 0,
            "label": label,
            "internal_ip": "",
            "kvm": "",
            "hostname": body.get("hostname", label),
            "os_id": body["os_id"],
            "app_id": 0,
            "image_id": "",
            "firewall_group_id": body.get("firewall_group_id", ""),
            "features": [],
            "tags": list(tags),
        }

    def _find(self, vm_id: str) -> dict[str, Any] | None:
        with self._lock:
            for account in self.accounts.values():
                if vm_id in account.instances:
                    return account.instances[vm_id]
        return None

    @staticmethod
    def _group(account: Account, group: dict[str, Any]) -> dict[str, Any]:
        instances = sum(
            1 for vm in account.instances.values() if vm["firewall_group_id"] == group["id"]
        )
        return {
            **group,
            "instance_count": instances,
            "rule_count": len(account.rules[group["id"]]),
            "max_rule_count": 50,
        }


def _injected(failure: Failure) -> Answer:
    status = failure.status
    body = {"error": f"injected failure {status}", "status": status}
    return Answer(status, body, failure.all_headers())


def _json_body(raw: bytes) -> dict[str, Any]:
    body = parse_json_object(raw)
    if body is None:
        raise ApiError(400, "Invalid JSON.")
    return body


def _cursor(kind: str, offset: int) -> str:
    return base64.b64encode(f"{kind}__{offset}".encode()).decode()


def _paginate(items: list[Any], query: dict[str, str]) -> tuple[list[Any], dict[str, Any]]:
    """Vultr's cursor pagination: ``per_page`` (1..500, default 100) and opaque ``cursor``s."""
    try:
        per_page = int(query.get("per_page", "100"))
    except ValueError:
        raise ApiError(400, "Invalid per_page.") from None
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ApiError(400, "Invalid per_page.")
    offset = 0
    if query.get("cursor"):
        try:
            _, _, number = base64.b64decode(query["cursor"]).decode().partition("__")
            offset = int(number)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ApiError(400, "Invalid cursor.") from None
    end = offset + per_page
    links = {
        "next": _cursor("next", end) if end < len(items) else "",
        "prev": _cursor("prev", max(0, offset - per_page)) if offset > 0 else "",
    }
    return items[offset:end], {"total": len(items), "links": links}


class _Handler(JsonHandler[VultrStandIn]):
    def _answer(self) -> None:
        self.guarded(self._serve)

    def _serve(self) -> None:
        raw = self.read_body()
        answer = self.owner.serve(self.command, self.path, self.headers.get("Authorization"), raw)
        self.send_json(answer.status, answer.body, answer.headers)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _answer


def make_standin(tmp_path: Path) -> VultrStandIn:
    return VultrStandIn()
