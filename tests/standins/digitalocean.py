"""A stateful stand-in for DigitalOcean's v2 API on 127.0.0.1: droplets, tags and firewalls."""

from __future__ import annotations

import ipaddress
import itertools
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.digitalocean import DigitalOceanProvider
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import DigitalOceanSettings, SecretStr
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
TOKENS = ("dop_v1_standin_account_a_5e0c2f9b71", "dop_v1_standin_account_b_93d1a7c4e8")
PROXY_USER = "proxyuser"
PROXY_PASSWORD = "proxy-password-3c8e1"
PROXY_PORT = 8899
DEFAULT_PER_PAGE = 20  # as the real API
MAX_PER_PAGE = 200

_DROPLETS = re.compile(r"/v2/droplets")
_DROPLET = re.compile(r"/v2/droplets/([^/]+)")
_FIREWALLS = re.compile(r"/v2/firewalls")
_FIREWALL = re.compile(r"/v2/firewalls/([^/]+)")
_TAGS = re.compile(r"/v2/tags")
# What the API accepts: tags of letters, digits, ':', '-', '_'; names of hostname characters.
_TAG_NAME = re.compile(r"[A-Za-z0-9:_-]{1,255}")
_DROPLET_NAME = re.compile(r"[A-Za-z0-9.-]{1,255}")
_FIREWALL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}")
# What a rule's ports may be in a request: one port, a range or "all" (never "0", which the
# API only answers with, for "all ports").
_PORTS = re.compile(r"all|([1-9][0-9]*)(?:-([1-9][0-9]*))?")

# DigitalOcean's error ids, by status.
_ERROR_IDS = {
    400: "bad_request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "not_found",
    409: "conflict",
    422: "unprocessable_entity",
    405: "method_not_allowed",
    429: "too_many_requests",
}


class ApiError(Exception):
    """An error answer in DigitalOcean's shape: ``{"id": ..., "message": ..., "request_id"}``."""

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
    text: str | None = None  # a non-JSON body (with its own Content-Type header)


@dataclass(frozen=True)
class _Failure(Failure):
    html: bool = False  # a load balancer's HTML page instead of the API's JSON error


@dataclass
class Droplet:
    id: int
    name: str
    region: str
    size: str
    image: str
    tags: list[str]
    user_data: str | None
    created_at: datetime
    status: str = "new"
    public_ip: str | None = None
    private_ip: str | None = None


@dataclass
class Account:
    droplets: dict[int, Droplet] = field(default_factory=dict)  # in creation order
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)


def classify(method: str, path: str) -> Kind:
    if _DROPLETS.fullmatch(path):
        return {"GET": "list", "POST": "create"}.get(method, "other")  # type: ignore[return-value]
    if _DROPLET.fullmatch(path):
        return "delete" if method == "DELETE" else "other"
    # Tags are made only for the firewall, which applies to droplets by tag.
    if _FIREWALLS.match(path) or _TAGS.match(path):
        return "firewall"
    return "other"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # the API's form


class DigitalOceanStandIn:
    """DigitalOcean's API for the adapter, plus controls for tests (``tests/standins/base.py``).

    Boot hooks for end-to-end tests: ``on_boot(droplet_id, ip, user_data)`` runs (in the
    caller's thread) for each droplet that ``boot``/``boot_all`` starts; ``on_delete(droplet_id)``
    runs (in the server's thread) after a droplet is deleted through the API. A hook's exception
    never reaches the client: it is kept in ``hook_errors``.
    """

    name = "digitalocean"

    def __init__(self, tokens: tuple[str, ...] = TOKENS) -> None:
        self.secrets: tuple[str, ...] = (*tokens, PROXY_PASSWORD)
        self.tokens = tokens
        self.accounts = {token: Account() for token in tokens}
        self.create_bodies: list[dict[str, Any]] = []  # every POST /v2/droplets body, as sent
        # (method, body) of every firewall POST/PUT that was served, as sent.
        self.firewall_bodies: list[tuple[str, dict[str, Any]]] = []
        self.sleeps: list[float] = []  # what adapters' retries waited (they never really sleep)
        self.on_boot: Callable[[str, str, str | None], None] | None = None
        self.on_delete: Callable[[str], None] | None = None
        self.hook_errors: list[BaseException] = []
        self._log: RequestLog[Served] = RequestLog()
        self.failures: FailureQueue[Failure] = FailureQueue()  # see tests/standins/http.py
        self._lock = threading.Lock()
        self._ids = itertools.count(100_000_001)
        self._addresses = itertools.count(0)
        self._server = serve(_Handler, self)
        self.endpoint = f"{self._server.url}/v2/"

    # --- StandIn ----------------------------------------------------------------------------

    def provider(
        self,
        instance: str = "default",
        *,
        account: int = 0,
        token: str | None = None,
        page_size: int | None = None,
        proxy: ProxySettings | None = None,
        endpoint: str | None = None,
    ) -> DigitalOceanProvider:
        settings = DigitalOceanSettings(
            enabled=True,
            access_token=SecretStr(token if token is not None else self.tokens[account]),
            api_endpoint=endpoint if endpoint is not None else self.endpoint,
        )
        extra: dict[str, Any] = {} if page_size is None else {"page_size": page_size}
        return factories.digitalocean(
            instance=instance,
            settings=settings,
            proxy=proxy if proxy is not None else self.proxy_settings(),
            sleep=self.sleeps.append,
            **extra,
        )

    @staticmethod
    def proxy_settings(allowed_ip: str | None = None) -> ProxySettings:
        return ProxySettings(PROXY_PORT, PROXY_USER, PROXY_PASSWORD, allowed_ip)

    def add_foreign_vm(self, *, instance: str | None, account: int = 0) -> str:
        tags = [] if instance is None else ["cloudproxy", f"cloudproxy-{instance}"]
        return self.add_droplet(tags=tags, account=account)

    def add_droplet(
        self,
        *,
        tags: list[str],
        account: int = 0,
        created_at: datetime | None = None,
        user_data: str | None = None,
    ) -> str:
        """A droplet made outside any adapter (another tool, the console, an earlier run)."""
        with self._lock:
            state = self.accounts[self.tokens[account]]
            droplet = self._new_droplet(
                {"name": "made-elsewhere", "region": "lon1", "size": "s-1vcpu-1gb"}, tags
            )
            droplet.user_data = user_data
            if created_at is not None:
                droplet.created_at = created_at
            state.droplets[droplet.id] = droplet
            state.tags.update(tags)
        return str(droplet.id)

    def vm_exists(self, vm_id: str) -> bool:
        return self._find(vm_id) is not None

    def vm_ids(self) -> list[str]:
        with self._lock:
            return [str(i) for a in self.accounts.values() for i in a.droplets]

    def vm_tags(self, vm_id: str) -> dict[str, str]:
        droplet = self._find(vm_id)
        assert droplet is not None, vm_id
        return dict.fromkeys(droplet.tags, "")

    def boot_all(self) -> None:
        with self._lock:
            everything = [d.id for a in self.accounts.values() for d in a.droplets.values()]
        self.boot(str(i) for i in everything)

    def boot(self, vm_ids: Iterable[str]) -> None:
        """These droplets (those still ``new``) become ``active`` with their addresses."""
        booted = []
        with self._lock:
            for vm_id in vm_ids:
                droplet = self._find_locked(vm_id)
                if droplet is None or droplet.status != "new":
                    continue
                n = next(self._addresses)
                droplet.private_ip = f"10.106.{n // 250}.{n % 250 + 2}"
                droplet.public_ip = f"127.0.{n // 250}.{n % 250 + 2}"  # never 127.0.0.1
                droplet.status = "active"
                booted.append((str(droplet.id), droplet.public_ip, droplet.user_data))
        if self.on_boot is not None:
            for vm_id, ip, user_data in booted:
                self.on_boot(vm_id, ip, user_data)

    def fail_next(
        self,
        kind: Kind,
        status: int,
        *,
        times: int = 1,
        retry_after: int | None = None,
        skip: int = 0,
        html: bool = False,
    ) -> None:
        """The next ``times`` requests of ``kind`` (after ``skip`` served normally) answer
        ``status``: in DigitalOcean's JSON error shape, or as a load balancer's HTML page."""
        failure = _Failure(status, retry_after, html=html)
        self.failures.add(kind, failure, times=times, skip=skip)

    def requests(self) -> list[Kind]:
        return self._log.kinds()

    def served(self) -> list[Served]:
        """Every request since ``reset_requests``, with its method and path."""
        return self._log.entries()

    def reset_requests(self) -> None:
        self._log.clear()

    def close(self) -> None:
        self._server.close()

    # --- test inspection --------------------------------------------------------------------

    def user_data(self, vm_id: str) -> str | None:
        droplet = self._find(vm_id)
        assert droplet is not None, vm_id
        return droplet.user_data

    def droplet_ids(self, account: int = 0) -> list[str]:
        with self._lock:
            return [str(i) for i in self.accounts[self.tokens[account]].droplets]

    def firewalls(self, account: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(f) for f in self.accounts[self.tokens[account]].firewalls.values()]

    def account_tags(self, account: int = 0) -> set[str]:
        with self._lock:
            return set(self.accounts[self.tokens[account]].tags)

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
            content_type=_Handler.json_content_type,
        )

    def _serve(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        authorization: str | None,
        raw_body: bytes,
    ) -> Answer:
        deleted: list[str] = []
        try:
            token = (authorization or "").removeprefix("Bearer ")
            account = self.accounts.get(token)
            if not (authorization or "").startswith("Bearer ") or account is None:
                raise ApiError(401, "Unable to authenticate you")
            body = _json_body(raw_body) if method in {"POST", "PUT", "PATCH"} else {}
            with self._lock:
                answer = self._route(account, method, path, query, body)
                if method == "DELETE" and answer.status == 204:
                    deleted.append(path.rsplit("/", 1)[-1])
        except ApiError as exc:
            return _error_answer(exc.status, exc.message, retry_after_header(exc.retry_after))
        for vm_id in deleted:
            self._run_hook(self.on_delete, vm_id)
        return answer

    def _run_hook(self, hook: Callable[..., None] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except BaseException as exc:  # kept for the test to assert on, never sent to a client
            self.hook_errors.append(exc)

    def _route(
        self,
        account: Account,
        method: str,
        path: str,
        query: dict[str, str],
        body: dict[str, Any],
    ) -> Answer:
        routes: list[tuple[re.Pattern[str], dict[str, Callable[..., Answer]]]] = [
            (_DROPLETS, {"GET": self._list_droplets, "POST": self._create_droplet}),
            (_DROPLET, {"GET": self._get_droplet, "DELETE": self._delete_droplet}),
            (_FIREWALLS, {"GET": self._list_firewalls, "POST": self._create_firewall}),
            (_FIREWALL, {"GET": self._get_firewall, "PUT": self._update_firewall}),
            (_TAGS, {"POST": self._create_tag}),
        ]
        for pattern, handlers in routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                raise ApiError(405, "Method not allowed")
            return handler(account, *match.groups(), query=query, body=body, path=path)
        raise ApiError(404, "The resource you were accessing could not be found.")

    def _list_droplets(
        self, account: Account, *, query: dict[str, str], path: str, **_: Any
    ) -> Answer:
        if "tag_name" in query and "name" in query:
            raise ApiError(422, "tag_name can not be combined with name")
        # As the real API: a tag that does not exist (a fresh account) lists no droplets.
        items = [
            self._view(d)
            for d in account.droplets.values()
            if ("tag_name" not in query or query["tag_name"] in d.tags)
            and ("name" not in query or query["name"].lower() == d.name.lower())
        ]
        page, links, meta = self._paginate(items, query, path)
        return Answer(200, {"droplets": page, "links": links, "meta": meta})

    def _create_droplet(self, account: Account, *, body: dict[str, Any], **_: Any) -> Answer:
        name = body.get("name")
        if not isinstance(name, str) or not _DROPLET_NAME.fullmatch(name):
            raise ApiError(422, "Name is invalid: only a-z, A-Z, 0-9, . and - are allowed")
        for key in ("size", "image"):
            if not isinstance(body.get(key), str) or not body[key].strip():
                raise ApiError(422, f"You must specify a {key}.")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(
            isinstance(t, str) and _TAG_NAME.fullmatch(t) for t in tags
        ):
            raise ApiError(422, "tags may contain letters, numbers, colons, dashes, underscores")
        user_data = body.get("user_data")
        if user_data is not None and (not isinstance(user_data, str) or len(user_data) > 65536):
            raise ApiError(422, "user_data must be a string of at most 64 KiB")
        self.create_bodies.append(body)
        droplet = self._new_droplet(body, tags)
        droplet.user_data = user_data
        account.droplets[droplet.id] = droplet
        account.tags.update(tags)  # the API makes missing tags for a droplet create
        action = {"id": next(self._ids), "rel": "create", "href": f"{self.endpoint}actions/1"}
        return Answer(202, {"droplet": self._view(droplet), "links": {"actions": [action]}})

    def _get_droplet(self, account: Account, vm_id: str, **_: Any) -> Answer:
        droplet = account.droplets.get(int(vm_id)) if vm_id.isdigit() else None
        if droplet is None:
            raise ApiError(404, "The resource you were accessing could not be found.")
        return Answer(200, {"droplet": self._view(droplet)})

    def _delete_droplet(self, account: Account, vm_id: str, **_: Any) -> Answer:
        if not vm_id.isdigit() or account.droplets.pop(int(vm_id), None) is None:
            raise ApiError(404, "The resource you were accessing could not be found.")
        return Answer(204)

    def _list_firewalls(
        self, account: Account, *, query: dict[str, str], path: str, **_: Any
    ) -> Answer:
        page, links, meta = self._paginate(list(account.firewalls.values()), query, path)
        return Answer(200, {"firewalls": page, "links": links, "meta": meta})

    def _create_firewall(self, account: Account, *, body: dict[str, Any], **_: Any) -> Answer:
        name = self._firewall_name(account, body)
        self.firewall_bodies.append(("POST", body))
        firewall_id = str(uuid.uuid4())
        firewall: dict[str, Any] = {
            "id": firewall_id,
            "status": "waiting",
            "created_at": _iso(datetime.now(UTC)),
            "pending_changes": [],
            **self._firewall_fields(account, name, body),
        }
        account.firewalls[firewall_id] = firewall
        return Answer(202, {"firewall": firewall})

    def _get_firewall(self, account: Account, firewall_id: str, **_: Any) -> Answer:
        found = account.firewalls.get(firewall_id)
        if found is None:
            raise ApiError(404, "The resource you were accessing could not be found.")
        return Answer(200, {"firewall": found})

    def _update_firewall(
        self, account: Account, firewall_id: str, *, body: dict[str, Any], **_: Any
    ) -> Answer:
        """PUT replaces the whole firewall: what the body leaves out is gone afterwards."""
        found = account.firewalls.get(firewall_id)
        if found is None:
            raise ApiError(404, "The resource you were accessing could not be found.")
        name = self._firewall_name(account, body, keep=firewall_id)
        self.firewall_bodies.append(("PUT", body))
        found.update(self._firewall_fields(account, name, body))
        return Answer(200, {"firewall": found})

    @staticmethod
    def _firewall_name(account: Account, body: dict[str, Any], keep: str | None = None) -> str:
        name = body.get("name")
        if not isinstance(name, str) or not _FIREWALL_NAME.fullmatch(name):
            raise ApiError(422, "name is invalid")
        if any(f["name"] == name and i != keep for i, f in account.firewalls.items()):
            raise ApiError(409, "duplicate name")
        return name

    @staticmethod
    def _firewall_fields(account: Account, name: str, body: dict[str, Any]) -> dict[str, Any]:
        tags = body.get("tags") or []
        for tag in tags:
            if tag not in account.tags:  # unlike a droplet create, a firewall makes no tags
                raise ApiError(422, f"tag {tag!r} not found")
        return {
            "name": name,
            "inbound_rules": _rules(body.get("inbound_rules"), "sources"),
            "outbound_rules": _rules(body.get("outbound_rules"), "destinations"),
            "droplet_ids": list(body.get("droplet_ids") or []),
            "tags": list(tags),
        }

    def _create_tag(self, account: Account, *, body: dict[str, Any], **_: Any) -> Answer:
        name = body.get("name")
        if not isinstance(name, str) or not _TAG_NAME.fullmatch(name):
            raise ApiError(422, "tag name is invalid")
        account.tags.add(name)  # an existing tag is simply returned
        count = sum(1 for d in account.droplets.values() if name in d.tags)
        resources = {"count": count, "droplets": {"count": count}}
        return Answer(201, {"tag": {"name": name, "resources": resources}})

    # --- state ------------------------------------------------------------------------------

    def _new_droplet(self, body: dict[str, Any], tags: list[str]) -> Droplet:
        return Droplet(
            id=next(self._ids),
            name=str(body["name"]),
            region=str(body.get("region") or "nyc3"),
            size=str(body.get("size") or "s-1vcpu-1gb"),
            image=str(body.get("image") or "ubuntu-24-04-x64"),
            tags=list(tags),
            user_data=None,
            created_at=datetime.now(UTC),
        )

    def _view(self, droplet: Droplet) -> dict[str, Any]:
        """The droplet as the API shows it (without its user data, as the real API)."""
        v4 = []
        if droplet.private_ip is not None:
            v4.append({"ip_address": droplet.private_ip, "netmask": "255.255.240.0",
                       "gateway": "10.106.0.1", "type": "private"})  # fmt: skip
        if droplet.public_ip is not None:
            v4.append({"ip_address": droplet.public_ip, "netmask": "255.255.240.0",
                       "gateway": "127.0.0.1", "type": "public"})  # fmt: skip
        return {
            "id": droplet.id,
            "name": droplet.name,
            "memory": 1024,
            "vcpus": 1,
            "disk": 25,
            "locked": False,
            "status": droplet.status,
            "kernel": None,
            "created_at": _iso(droplet.created_at),
            "features": ["droplet_agent", "private_networking"],
            "backup_ids": [],
            "next_backup_window": None,
            "snapshot_ids": [],
            "image": {"slug": droplet.image, "distribution": "Ubuntu"},
            "volume_ids": [],
            "size": {"slug": droplet.size},
            "size_slug": droplet.size,
            "networks": {"v4": v4, "v6": []},
            "region": {"slug": droplet.region, "name": droplet.region},
            "tags": list(droplet.tags),
            "vpc_uuid": "5a4981aa-9653-4bd1-bef5-d6bff52042e4",
        }

    def _paginate(
        self, items: list[Any], query: dict[str, str], path: str
    ) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """Page-number pagination as the API's: ``per_page`` (capped at 200) and ``page``,
        with absolute ``links.pages`` URLs that keep the request's other parameters."""
        try:
            per_page = min(int(query.get("per_page", DEFAULT_PER_PAGE)), MAX_PER_PAGE)
            page = int(query.get("page", "1"))
        except ValueError:
            raise ApiError(400, "invalid page or per_page") from None
        if per_page < 1 or page < 1:
            raise ApiError(400, "invalid page or per_page")
        last = max(1, -(-len(items) // per_page))

        def link(number: int) -> str:
            params = {**query, "page": str(number), "per_page": str(per_page)}
            base = self.endpoint.removesuffix("/v2/")
            return f"{base}{path}?{urlencode(sorted(params.items()))}"

        pages: dict[str, str] = {}
        if page > 1:
            pages.update(first=link(1), prev=link(min(page - 1, last)))
        if page < last:
            pages.update(next=link(page + 1), last=link(last))
        start = (page - 1) * per_page
        return items[start : start + per_page], {"pages": pages}, {"total": len(items)}

    def _find(self, vm_id: str) -> Droplet | None:
        with self._lock:
            return self._find_locked(vm_id)

    def _find_locked(self, vm_id: str) -> Droplet | None:
        if not vm_id.isdigit():
            return None
        for account in self.accounts.values():
            if int(vm_id) in account.droplets:
                return account.droplets[int(vm_id)]
        return None


def _rules(value: Any, side: str) -> list[dict[str, Any]]:
    """Firewall rules as the API validates them: protocol, ports, addresses."""
    if not isinstance(value, list):
        raise ApiError(422, f"rules must be a list with {side}")
    rules = []
    for rule in value:
        if not isinstance(rule, dict) or rule.get("protocol") not in {"tcp", "udp", "icmp"}:
            raise ApiError(422, "protocol must be one of tcp, udp, icmp")
        ports = _ports(rule) if rule["protocol"] != "icmp" else "0"
        targets = rule.get(side)
        addresses = targets.get("addresses") if isinstance(targets, dict) else None
        if not isinstance(addresses, list) or not addresses:
            raise ApiError(422, f"a rule needs {side}")
        for address in addresses:
            try:
                ipaddress.ip_network(str(address), strict=False)
            except ValueError:
                raise ApiError(422, "invalid address") from None
        rules.append({"protocol": rule["protocol"], "ports": ports,
                      side: {"addresses": list(addresses)}})  # fmt: skip
    return rules


def _ports(rule: dict[str, Any]) -> str:
    """A tcp/udp rule's ports as the API stores them: "0" when they are all of them."""
    ports = rule.get("ports")
    match = _PORTS.fullmatch(ports) if isinstance(ports, str) else None
    if match is None or not isinstance(ports, str):
        raise ApiError(422, "ports must be a port, a range of ports, or all")
    if ports == "all":
        return "0"
    low, high = int(match[1]), int(match[2] or match[1])
    if not 1 <= low <= high <= 65535:
        raise ApiError(422, "ports must be within 1-65535")
    return "0" if (low, high) == (1, 65535) else ports


def _error_answer(status: int, message: str, headers: dict[str, str]) -> Answer:
    error_id = _ERROR_IDS.get(status, "server_error")
    body = {"id": error_id, "message": message, "request_id": str(uuid.uuid4())}
    return Answer(status, body, headers)


def _injected(failure: Failure) -> Answer:
    """An injected error answer: the API's JSON error, or a load balancer's HTML page."""
    status, headers = failure.status, failure.all_headers()
    if isinstance(failure, _Failure) and failure.html:
        page = f"<html><body><h1>{status} Bad Gateway</h1></body></html>"
        return Answer(status, text=page, headers={"Content-Type": "text/html", **headers})
    message = "API Rate limit exceeded." if status == 429 else "Server was unable"
    return _error_answer(status, f"{message} (injected)", headers)


def _json_body(raw: bytes) -> dict[str, Any]:
    body = parse_json_object(raw)
    if body is None:
        raise ApiError(400, "unable to parse request body")
    return body


class _Handler(JsonHandler[DigitalOceanStandIn]):
    json_content_type = "application/json; charset=utf-8"

    def _answer(self) -> None:
        self.guarded(self._serve)

    def _serve(self) -> None:
        raw = self.read_body()
        answer = self.owner.serve(self.command, self.path, self.headers.get("Authorization"), raw)
        if answer.text is not None:  # its Content-Type is among its headers
            self.send_body(answer.status, answer.text.encode(), answer.headers)
        else:
            self.send_json(answer.status, answer.body, answer.headers)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _answer


def make_standin(tmp_path: Path) -> DigitalOceanStandIn:
    return DigitalOceanStandIn()
