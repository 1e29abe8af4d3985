"""A stateful Hetzner Cloud API on 127.0.0.1: servers, firewalls, labels, pages, tokens, errors."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.hetzner import HetznerProvider
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import HetznerSettings
from tests.standins.base import Kind
from tests.standins.http import (
    Failure,
    FailureQueue,
    JsonHandler,
    RequestLog,
    inject,
    serve,
)

# What every adapter built by `provider()` deploys unless a test passes its own.
PROXY = ProxySettings(port=8899, username="proxyuser", password="proxy-pass-f00d")

# Hetzner's error code for each status the tests inject (docs.hetzner.cloud, "Errors").
ERROR_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    423: "locked",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "unavailable",
    504: "timeout",
}
SERVER_TYPES = frozenset({"cx23", "cx33", "cx43", "cx53", "cpx11", "cpx21", "cax11"})
LOCATIONS = frozenset({"nbg1", "fsn1", "hel1", "ash", "hil", "sin"})
IMAGES = frozenset({"ubuntu-24.04", "ubuntu-22.04", "debian-12"})
MAX_PER_PAGE = 50  # the API's own cap; tests lower it to force several pages
RATE_LIMIT = 3600


class ApiError(Exception):
    """An error answer in Hetzner's shape: ``{"error": {"code": ..., "message": ...}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Request:
    """One request as served: for asserting what the adapter actually sent."""

    kind: Kind
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    project: str | None  # whose token it carried (None: unknown token)


@dataclass
class Project:
    """What one API token sees: Hetzner scopes every token to one project."""

    servers: dict[int, dict[str, Any]] = field(default_factory=dict)
    firewalls: dict[int, dict[str, Any]] = field(default_factory=dict)


# --- label selectors ----------------------------------------------------------------------


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """The subset of Hetzner's label selectors cloudproxy could need: ``k``, ``!k``, ``k=v``,
    ``k==v``, ``k!=v``, comma meaning AND. Anything else (``in``/``notin`` sets) is refused
    rather than silently misread."""
    terms: list[tuple[str, str, str | None]] = []
    for raw in text.split(","):
        term = raw.strip()
        if not term or "(" in term or " " in term:
            raise ApiError(400, "invalid_input", f"invalid label_selector: {text!r}")
        if term.startswith("!"):
            terms.append(("absent", term[1:], None))
        elif "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("ne", key, value))
        elif "=" in term:
            key, value = term.replace("==", "=", 1).split("=", 1)
            terms.append(("eq", key, value))
        else:
            terms.append(("present", term, None))
    return terms


def selector_matches(terms: list[tuple[str, str, str | None]], labels: dict[str, str]) -> bool:
    for op, key, value in terms:
        ok = {
            "present": key in labels,
            "absent": key not in labels,
            "eq": labels.get(key) == value,
            "ne": labels.get(key) != value,
        }[op]
        if not ok:
            return False
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the stand-in -------------------------------------------------------------------------


class HetznerStandIn:
    """Hetzner's API for the endpoints cloudproxy uses, with two projects (two tokens)."""

    name = "hetzner"

    def __init__(self) -> None:
        self.token = f"hc-{secrets.token_hex(16)}"  # project "a": what `provider()` uses
        self.other_token = f"hc-{secrets.token_hex(16)}"  # project "b"
        self.root_password = secrets.token_urlsafe(12)  # what a create answers; never logged
        self.secrets = (self.token, self.other_token, PROXY.password or "", self.root_password)
        self.projects = {"a": Project(), "b": Project()}
        self._tokens = {self.token: "a", self.other_token: "b"}
        self.max_per_page = MAX_PER_PAGE
        self._log: RequestLog[Request] = RequestLog()
        self.slept: list[float] = []  # what adapters built by `provider()` waited
        self.lost_create_answers = 0  # creates that succeed but answer 504 (a lost response)
        self.malformed_answers = 0  # requests answered 200 with an empty JSON object
        self.failures: FailureQueue[Failure] = FailureQueue()  # see tests/standins/http.py
        self._ids = itertools.count(1000)
        self._addresses = itertools.count()
        self._lock = threading.Lock()
        self._server = serve(_Handler, self)
        self.endpoint = f"{self._server.url}/v1"

    # --- StandIn ----------------------------------------------------------------------------

    def provider(
        self,
        instance: str = "default",
        *,
        token: str | None = None,
        proxy: ProxySettings = PROXY,
        **settings: Any,
    ) -> HetznerProvider:
        values: dict[str, Any] = {
            "enabled": True,
            "access_token": self.token if token is None else token,
            "api_endpoint": self.endpoint,
            **settings,
        }
        return factories.hetzner(
            instance=instance,
            settings=HetznerSettings.model_validate(values),
            proxy=proxy,
            sleep=self.slept.append,
            environ={},
        )

    def add_foreign_vm(
        self,
        *,
        instance: str | None,
        labels: dict[str, str] | None = None,
        project: str = "a",
    ) -> str:
        if labels is None:
            labels = (
                {} if instance is None else {"cloudproxy": "true", "cloudproxy-instance": instance}
            )
        with self._lock:
            server = self._new_server(self.projects[project], f"other-{next(self._ids)}", labels)
        return str(server["id"])

    def vm_exists(self, vm_id: str) -> bool:
        return self._find(vm_id) is not None

    def vm_ids(self) -> list[str]:
        with self._lock:
            return [str(i) for p in self.projects.values() for i in p.servers]

    def vm_tags(self, vm_id: str) -> dict[str, str]:
        server = self._find(vm_id)
        assert server is not None, f"no server {vm_id}"
        return dict(server["labels"])

    def boot_all(self) -> None:
        with self._lock:
            for project in self.projects.values():
                for server in project.servers.values():
                    server["status"] = "running"

    def fail_next(
        self, kind: Kind, status: int, *, times: int = 1, retry_after: int | None = None
    ) -> None:
        self.failures.add(kind, Failure(status, retry_after), times=times)

    def requests(self) -> list[Kind]:
        return self._log.kinds()

    def reset_requests(self) -> None:
        self._log.clear()

    def close(self) -> None:
        self._server.close()  # a test may close early to make the API unreachable

    # --- for tests --------------------------------------------------------------------------

    @property
    def log(self) -> list[Request]:
        """Every request since ``reset_requests``, as served."""
        return self._log.entries()

    def served(self, kind: Kind) -> list[Request]:
        return self._log.entries(kind)

    def server_ids(self, project: str = "a") -> list[str]:
        """The project's server ids (the stand-in's own state)."""
        with self._lock:
            return [str(i) for i in self.projects[project].servers]

    def server(self, vm_id: str) -> dict[str, Any]:
        found = self._find(vm_id)
        assert found is not None, f"no server {vm_id}"
        return found

    def _find(self, vm_id: str) -> dict[str, Any] | None:
        for project in self.projects.values():
            if vm_id.isdigit() and int(vm_id) in project.servers:
                return project.servers[int(vm_id)]
        return None

    # --- the API ----------------------------------------------------------------------------

    def handle(
        self, method: str, url: str, token: str | None, body: Any
    ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        query = parse_qs(parts.query)
        kind = _classify(method, path)
        project_name = self._tokens.get(token or "")
        with self._lock:
            self._log.add(Request(kind, method, path, query, body, project_name))
            failure = self.failures.take(kind)
            if failure is None and self.malformed_answers:
                self.malformed_answers -= 1
                return 200, {}, {}

        def process() -> tuple[int, dict[str, str], Any]:
            try:
                if project_name is None:
                    raise ApiError(401, "unauthorized", "unable to authenticate")
                with self._lock:
                    return self._route(method, path, query, body, self.projects[project_name])
            except ApiError as exc:
                return exc.status, {}, {"error": {"code": exc.code, "message": exc.message}}

        return inject(failure, process, _failure)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, project: Project
    ) -> tuple[int, dict[str, str], Any]:
        segments = path.split("/")[2:]  # "", "v1", ...
        match method, segments:
            case "GET", ["servers"]:
                return 200, {}, self._list(project.servers, "servers", query)
            case "POST", ["servers"]:
                return self._create_server(project, body)
            case "GET", ["servers", sid] if sid.isdigit() and int(sid) in project.servers:
                return 200, {}, {"server": project.servers[int(sid)]}
            case "DELETE", ["servers", sid] if sid.isdigit() and int(sid) in project.servers:
                server = project.servers.pop(int(sid))
                for firewall in project.firewalls.values():
                    _unapply(firewall, server["id"])
                return 200, {}, {"action": _action("delete_server", server["id"], "server")}
            case "GET" | "DELETE", ["servers", sid]:
                raise ApiError(404, "not_found", f"server with ID '{sid}' not found")
            case "GET", ["firewalls"]:
                return 200, {}, self._list(project.firewalls, "firewalls", query)
            case "POST", ["firewalls"]:
                return self._create_firewall(project, body)
            case "GET", ["firewalls", fid] if fid.isdigit() and int(fid) in project.firewalls:
                return 200, {}, {"firewall": project.firewalls[int(fid)]}
            case "POST", ["firewalls", fid, "actions", action] if (
                fid.isdigit() and int(fid) in project.firewalls
            ):
                return self._firewall_action(project, int(fid), action, body)
            case "GET" | "POST", ["firewalls", fid, *_]:
                raise ApiError(404, "not_found", f"firewall with ID '{fid}' not found")
        raise ApiError(404, "not_found", f"{method} {path} not found")

    def _list(
        self, items: dict[int, dict[str, Any]], key: str, query: dict[str, list[str]]
    ) -> dict[str, Any]:
        chosen = sorted(items.values(), key=lambda item: item["id"])
        if "name" in query:
            chosen = [item for item in chosen if item["name"] == query["name"][0]]
        if "label_selector" in query:
            terms = parse_selector(query["label_selector"][0])
            chosen = [item for item in chosen if selector_matches(terms, item["labels"])]
        page = _positive(query, "page", 1)
        per_page = min(_positive(query, "per_page", 25), self.max_per_page)
        last = max(1, -(-len(chosen) // per_page))
        return {
            key: chosen[(page - 1) * per_page : page * per_page],
            "meta": {
                "pagination": {
                    "page": page,
                    "per_page": per_page,
                    "previous_page": page - 1 if page > 1 else None,
                    "next_page": page + 1 if page < last else None,
                    "last_page": last,
                    "total_entries": len(chosen),
                }
            },
        }

    def _create_server(self, project: Project, body: Any) -> tuple[int, dict[str, str], Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "json_error", "request body is not a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "invalid_input", "invalid input in field 'name'")
        if any(s["name"] == name for s in project.servers.values()):
            raise ApiError(409, "uniqueness_error", "server name is already used")
        for field_name, known in (
            ("server_type", SERVER_TYPES),
            ("image", IMAGES),
            ("location", LOCATIONS),
        ):
            value = body.get(field_name, "nbg1" if field_name == "location" else None)
            if value not in known:
                raise ApiError(400, "invalid_input", f"{field_name} {value!r} not found")
        user_data = body.get("user_data")
        if user_data is not None and len(str(user_data).encode()) > 32 * 1024:
            raise ApiError(400, "invalid_input", "user_data is limited to 32 KiB")
        server = self._new_server(project, name, dict(body.get("labels") or {}), body)
        answer = {
            "server": server,
            "action": _action("create_server", server["id"], "server"),
            "next_actions": [_action("start_server", server["id"], "server")],
            "root_password": self.root_password,
        }
        if self.lost_create_answers:
            self.lost_create_answers -= 1  # created, but the answer never arrives
            raise ApiError(504, "timeout", "request timed out")
        return 201, {}, answer

    def _new_server(
        self, project: Project, name: str, labels: dict[str, str], body: Any = None
    ) -> dict[str, Any]:
        body = body if isinstance(body, dict) else {}
        server_id = next(self._ids)
        address = f"127.0.0.{2 + next(self._addresses) % 250}"
        server: dict[str, Any] = {
            "id": server_id,
            "name": name,
            "status": "initializing",
            "created": _now(),
            # Like the real API: the IPv4 is allocated (and shown) while still initializing.
            "public_net": {
                "ipv4": {"id": server_id, "ip": address, "blocked": False, "dns_ptr": name},
                "ipv6": None,
                "floating_ips": [],
                "firewalls": [],
            },
            "private_net": [],
            "server_type": {"id": 1, "name": body.get("server_type", "cx23")},
            "location": {"id": 1, "name": body.get("location", "nbg1")},
            "image": {"id": 1, "name": body.get("image", "ubuntu-24.04"), "type": "system"},
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": labels,
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": 40,
            "placement_group": None,
        }
        project.servers[server_id] = server
        # A firewall applied by label selector reaches a new server through the API itself.
        for firewall in project.firewalls.values():
            _apply_if_selected(firewall, server)
        return server

    def _create_firewall(self, project: Project, body: Any) -> tuple[int, dict[str, str], Any]:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ApiError(400, "invalid_input", "invalid input in field 'name'")
        if any(f["name"] == body["name"] for f in project.firewalls.values()):
            raise ApiError(409, "uniqueness_error", "firewall name is already used")
        firewall = {
            "id": next(self._ids),
            "name": body["name"],
            "labels": dict(body.get("labels") or {}),
            "created": _now(),
            "rules": _firewall_rules(body.get("rules", [])),
            "applied_to": _label_targets(body.get("apply_to", [])),
        }
        project.firewalls[firewall["id"]] = firewall
        for server in project.servers.values():
            _apply_if_selected(firewall, server)
        return 201, {}, {"firewall": firewall, "actions": []}

    def _firewall_action(
        self, project: Project, firewall_id: int, action: str, body: Any
    ) -> tuple[int, dict[str, str], Any]:
        """``set_rules`` (replaces every rule) and ``apply_to_resources`` (adds targets)."""
        firewall = project.firewalls[firewall_id]
        body = body if isinstance(body, dict) else {}
        if action == "set_rules":
            firewall["rules"] = _firewall_rules(body.get("rules", []))
        elif action == "apply_to_resources":
            added = _label_targets(body.get("apply_to", []))
            firewall["applied_to"].extend(added)
            for server in project.servers.values():
                if all(f["id"] != firewall_id for f in server["public_net"]["firewalls"]):
                    _apply_if_selected({**firewall, "applied_to": added}, server)
        else:
            raise ApiError(404, "not_found", f"no firewall action {action}")
        return 201, {}, {"actions": [_action(action, firewall_id, "firewall")]}


# --- helpers ------------------------------------------------------------------------------


def _firewall_rules(given: Any) -> list[dict[str, Any]]:
    """Rules as the API validates and stores them."""
    rules = []
    for rule in given if isinstance(given, list) else []:
        if rule.get("direction") not in {"in", "out"} or rule.get("protocol") not in {
            "tcp",
            "udp",
            "icmp",
            "esp",
            "gre",
        }:
            raise ApiError(400, "invalid_input", "invalid firewall rule")
        if rule["protocol"] in {"tcp", "udp"} and not rule.get("port"):
            raise ApiError(400, "invalid_input", "port is required for tcp and udp rules")
        if rule["direction"] == "in" and not rule.get("source_ips"):
            raise ApiError(400, "invalid_input", "source_ips is required for inbound rules")
        rules.append(
            {
                "direction": rule["direction"],
                "protocol": rule["protocol"],
                "port": rule.get("port"),
                "source_ips": list(rule.get("source_ips", [])),
                "destination_ips": list(rule.get("destination_ips", [])),
                "description": rule.get("description"),
            }
        )
    return rules


def _label_targets(given: Any) -> list[dict[str, Any]]:
    applied_to = []
    for resource in given if isinstance(given, list) else []:
        if resource.get("type") != "label_selector":
            raise ApiError(400, "invalid_input", "only label_selector resources are faked")
        selector = resource["label_selector"]["selector"]
        parse_selector(selector)
        applied_to.append(
            {
                "type": "label_selector",
                "label_selector": {"selector": selector},
                "applied_to_resources": [],
            }
        )
    return applied_to


def _classify(method: str, path: str) -> Kind:
    segments = path.split("/")[2:]
    if segments == ["servers"]:
        return "list" if method == "GET" else "create" if method == "POST" else "other"
    if len(segments) == 2 and segments[0] == "servers" and method == "DELETE":
        return "delete"
    if segments and segments[0] == "firewalls":
        return "firewall"
    return "other"  # e.g. GET /servers/{id}: the ownership check before a delete


def _failure(failure: Failure) -> tuple[int, dict[str, str], Any]:
    status = failure.status
    headers = failure.all_headers()
    if status == 429 and not failure.headers:
        headers["RateLimit-Remaining"] = "0"
        headers["RateLimit-Reset"] = str(int(time.time()) + RATE_LIMIT)
    if status == 502:  # the load balancer in front of the API answers in HTML, not JSON
        return status, headers, "<html><body><h1>502 Bad Gateway</h1></body></html>"
    code = ERROR_CODES.get(status, "server_error" if status >= 500 else "invalid_input")
    return status, headers, {"error": {"code": code, "message": f"injected {status}"}}


def _positive(query: dict[str, list[str]], key: str, default: int) -> int:
    try:
        value = int(query[key][0]) if key in query else default
    except ValueError:
        raise ApiError(400, "invalid_input", f"invalid {key}") from None
    if value < 1:
        raise ApiError(400, "invalid_input", f"invalid {key}")
    return value


def _action(command: str, resource_id: int, resource_type: str) -> dict[str, Any]:
    return {
        "id": secrets.randbelow(10**9),
        "command": command,
        "status": "running",
        "progress": 0,
        "started": _now(),
        "finished": None,
        "resources": [{"id": resource_id, "type": resource_type}],
        "error": None,
    }


def _apply_if_selected(firewall: dict[str, Any], server: dict[str, Any]) -> None:
    for resource in firewall["applied_to"]:
        terms = parse_selector(resource["label_selector"]["selector"])
        if selector_matches(terms, server["labels"]):
            resource["applied_to_resources"].append(
                {"type": "server", "server": {"id": server["id"]}}
            )
            server["public_net"]["firewalls"].append({"id": firewall["id"], "status": "applied"})
            return


def _unapply(firewall: dict[str, Any], server_id: int) -> None:
    for resource in firewall["applied_to"]:
        resource["applied_to_resources"] = [
            r for r in resource["applied_to_resources"] if r["server"]["id"] != server_id
        ]


class _Handler(JsonHandler[HetznerStandIn]):
    def _answer(self) -> None:
        self.guarded(self._serve)

    def _serve(self) -> None:
        raw = self.read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        status, headers, payload = self.owner.handle(self.command, self.path, token, body)
        headers = {
            "X-Correlation-Id": secrets.token_hex(8),
            "RateLimit-Limit": str(RATE_LIMIT),
            "RateLimit-Remaining": str(RATE_LIMIT - 1),
            **headers,
        }
        if isinstance(payload, str):  # the load balancer's HTML page
            self.send_body(status, payload.encode(), {"Content-Type": "text/html", **headers})
        else:
            self.send_json(status, payload, headers)

    do_GET = do_POST = do_DELETE = do_PUT = _answer


def make_standin(tmp_path: Path | None = None) -> HetznerStandIn:
    return HetznerStandIn()
