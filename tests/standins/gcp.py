"""A stateful Compute Engine REST v1 stand-in on 127.0.0.1 that google-cloud-compute talks to."""

from __future__ import annotations

import functools
import itertools
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import exceptions as auth_exceptions
from google.auth import jwt

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.gcp import GcpProvider
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import GcpSettings
from tests.standins.base import Kind
from tests.standins.http import (
    Failure,
    FailureQueue,
    JsonHandler,
    RequestLog,
    inject,
    serve,
)

ZONE = "us-central1-a"
PROXY = ProxySettings(port=8899, username="gcpuser", password="gcp-Proxy.pass_42")
# Real Compute Engine reports creationTimestamp in Pacific time with an offset.
PACIFIC = timezone(timedelta(hours=-7))
# What a self-signed service-account JWT for the Compute API is addressed to.
AUDIENCE = "https://compute.googleapis.com/"
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_FILTER_TERM = re.compile(r'\(?\s*labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"\s*\)?')
_BASE = "/compute/v1/projects/(?P<project>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(_BASE + path + "$"), action)
    for method, path, action in [
        ("GET", "/zones/(?P<zone>[^/]+)/instances", "list"),
        ("POST", "/zones/(?P<zone>[^/]+)/instances", "insert"),
        ("GET", "/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", "get"),
        ("DELETE", "/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)", "delete"),
        ("GET", "/zones/(?P<zone>[^/]+)/operations/(?P<op>[^/]+)", "get_operation"),
        ("POST", "/zones/(?P<zone>[^/]+)/operations/(?P<op>[^/]+)/wait", "wait"),
        ("GET", "/global/operations/(?P<op>[^/]+)", "get_operation"),
        ("POST", "/global/operations/(?P<op>[^/]+)/wait", "wait"),
        ("GET", "/global/firewalls/(?P<name>[^/]+)", "firewall_get"),
        ("POST", "/global/firewalls", "firewall_insert"),
        ("PUT", "/global/firewalls/(?P<name>[^/]+)", "firewall_update"),
    ]
]
_KINDS: dict[str, Kind] = {
    "list": "list",
    "insert": "create",
    "delete": "delete",
    "firewall_get": "firewall",
    "firewall_insert": "firewall",
    "firewall_update": "firewall",
}
_REASONS = {
    400: "invalid",
    401: "authError",
    403: "forbidden",
    404: "notFound",
    409: "alreadyExists",
    429: "rateLimitExceeded",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or _REASONS.get(status, "backendError")

    def body(self) -> dict[str, Any]:
        # The shape of every Compute Engine error response.
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            }
        }


@dataclass
class ServiceAccount:
    """A throwaway service-account key: the adapter signs with it, the stand-in verifies."""

    project: str
    email: str
    key_id: str
    private_pem: str
    public_pem: bytes
    key_json: str


@functools.cache
def _rsa_key(project: str) -> tuple[str, bytes]:
    """A fresh RSA key per project name, generated once per test session (it takes a while)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def make_service_account(project: str, token_uri: str) -> ServiceAccount:
    private_pem, public_pem = _rsa_key(project)
    email = f"cloudproxy@{project}.iam.gserviceaccount.com"
    key_id = uuid.uuid4().hex
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id,
        "private_key": private_pem,
        "client_email": email,
        "client_id": "100000000000000000001",
        # Loopback: should the library ever fall back to an OAuth token grant, it fails here
        # (the stand-in has no /token) instead of reaching Google.
        "token_uri": token_uri,
    }
    return ServiceAccount(project, email, key_id, private_pem, public_pem, json.dumps(info))


@dataclass
class Request:
    """One request as served, for tests that inspect bodies and parameters."""

    kind: Kind
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None


@dataclass(frozen=True)
class _Failure(Failure):
    reason: str | None = None
    message: str | None = None  # the API's error text (default: "injected failure <status>")


def _injected(failure: Failure) -> tuple[int, dict[str, str], dict[str, Any]]:
    """An injected error in Compute Engine's shape (reason and text as ``fail_next`` gave)."""
    reason = failure.reason if isinstance(failure, _Failure) else None
    message = failure.message if isinstance(failure, _Failure) else None
    error = ApiError(failure.status, message or f"injected failure {failure.status}", reason)
    return failure.status, failure.all_headers(), error.body()


@dataclass
class GcpStandIn:
    """Instances, firewalls and operations of any number of projects, one account per project."""

    tmp_path: Path
    name: str = "gcp"
    page_size: int = 500  # the server's cap on maxResults
    operations_finish: bool = True  # False: `wait` keeps answering RUNNING
    honour_filter: bool = True  # False: `list` ignores its filter (a misread filter)
    # A broken API: every list page names a next page, "again" (repeated) or a new one ("new").
    endless_pages: str | None = None
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name; each records project
    firewalls: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, ServiceAccount] = field(default_factory=dict)
    operation_errors: deque[tuple[str, str]] = field(default_factory=deque)
    request_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    sleeps: list[float] = field(default_factory=list)  # what adapters' retries waited

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(4_000_000_000_000_000_001)
        self._ips = itertools.count(2)
        self._foreign = itertools.count(1)
        self._log: RequestLog[Request] = RequestLog()
        self.failures: FailureQueue[Failure] = FailureQueue()  # see tests/standins/http.py
        self._server = serve(_Handler, self)
        self.url = self._server.url

    # --- building adapters ---------------------------------------------------------------

    def account(self, project: str) -> ServiceAccount:
        if project not in self.accounts:
            self.accounts[project] = make_service_account(project, f"{self.url}/token")
        return self.accounts[project]

    def settings(
        self, instance: str = "default", *, project: str | None = None, via_file: bool | None = None
    ) -> GcpSettings:
        """Settings for ``instance`` in ``project`` (default: a project of its own). The default
        instance passes the key as JSON text and takes the project from it; others pass a key
        file and name the project, so both credential paths run."""
        project = project or f"proj-{instance}"
        key = self.account(project)
        via_file = instance != "default" if via_file is None else via_file
        values: dict[str, Any] = {"enabled": True, "zone": ZONE, "api_endpoint": self.url}
        if via_file:
            path = self.tmp_path / f"gcp-key-{project}.json"
            path.write_text(key.key_json)
            values.update(sa_json=str(path), project=project)
        else:
            values.update(service_account_key=key.key_json)
        return GcpSettings.model_validate(values)

    def provider(self, instance: str = "default", **kwargs: Any) -> GcpProvider:
        """The adapter for ``instance``; ``settings``/``proxy``/``sleep`` may be overridden."""
        settings = kwargs.pop("settings", None) or self.settings(instance)
        proxy = kwargs.pop("proxy", PROXY)
        kwargs.setdefault("sleep", self.sleeps.append)  # retries never really sleep
        return factories.gcp(instance=instance, settings=settings, proxy=proxy, **kwargs)

    @property
    def secrets(self) -> tuple[str, ...]:
        found: list[str] = [PROXY.password or ""]
        for key in self.accounts.values():
            first_line = key.private_pem.splitlines()[1]
            found += [key.private_pem, first_line, key.key_id, key.key_json]
        return tuple(found)

    # --- test controls -------------------------------------------------------------------

    def add_foreign_vm(self, *, instance: str | None, project: str = "proj-default") -> str:
        labels = {"team": "web"} if instance is None else _labels(instance)
        name = f"foreign-{next(self._foreign)}"
        with self._lock:
            self.vms[name] = self._new_vm(project, ZONE, {"name": name, "labels": labels})
        return name

    def vm_exists(self, vm_id: str) -> bool:
        return vm_id in self.vms

    def vm_ids(self) -> list[str]:
        with self._lock:
            return list(self.vms)

    def vm_tags(self, vm_id: str) -> dict[str, str]:
        vm = self.vms[vm_id]
        tags = dict.fromkeys(vm.get("tags", {}).get("items", []), "")
        return {**tags, **vm.get("labels", {})}

    def boot_all(self) -> None:
        with self._lock:
            for vm in self.vms.values():
                vm["status"] = "RUNNING"
                for nic in vm.get("networkInterfaces", []):
                    for config in nic.get("accessConfigs", [])[:1]:
                        config.setdefault("natIP", f"127.0.0.{next(self._ips) % 250 + 2}")

    def fail_next(
        self,
        kind: Kind,
        status: int,
        *,
        times: int = 1,
        retry_after: int | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        failure = _Failure(status, retry_after, reason=reason, message=message)
        self.failures.add(kind, failure, times=times)

    def lose_next_response(self, kind: Kind, status: int = 503) -> None:
        """The next ``kind`` request takes effect, but its response is a ``status`` error."""
        self.failures.add(kind, Failure.ghost(status))

    def fail_next_operation(self, code: str, message: str) -> None:
        """The next insert/delete operation finishes with this error and changes nothing."""
        self.operation_errors.append((code, message))

    @property
    def served(self) -> list[Request]:
        """Every request since ``reset_requests``, as served."""
        return self._log.entries()

    def requests(self) -> list[Kind]:
        return self._log.kinds()

    def requests_of(self, kind: Kind) -> list[Request]:
        return self._log.entries(kind)

    def reset_requests(self) -> None:
        self._log.clear()

    def close(self) -> None:
        self._server.close()

    # --- serving -------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        body = json.loads(raw) if raw else None
        route = _route(method, parts.path)
        if route is None:
            return 404, {}, ApiError(404, f"no such method: {method} {parts.path}").body()
        action, args = route
        kind = _KINDS.get(action, "other")
        with self._lock:
            self._log.add(Request(kind, method, parts.path, query, body))
            failure = self.failures.take(kind)

        def process() -> tuple[int, dict[str, str], dict[str, Any]]:
            with self._lock:
                try:
                    self._authorize(args["project"], headers.get("authorization", ""))
                    result: dict[str, Any] = getattr(self, "_" + action)(
                        body=body, query=query, **args
                    )
                except ApiError as err:
                    return err.status, {}, err.body()
                return 200, {}, result

        return inject(failure, process, _injected, content_type=_Handler.json_content_type)

    def _authorize(self, project: str, header: str) -> None:
        """Bearer JWT signed by the project's own service-account key, or 401."""
        account = self.accounts.get(project)
        if account is None:
            raise ApiError(404, f"The resource 'projects/{project}' was not found")
        scheme, _, token = header.partition(" ")
        try:
            claims = jwt.decode(token, certs=account.public_pem)  # type: ignore[no-untyped-call]
        except (ValueError, auth_exceptions.GoogleAuthError):
            claims = None
        scopes = str((claims or {}).get("scope", ""))
        if (
            scheme != "Bearer"
            or claims is None
            or claims.get("iss") != account.email
            or (claims.get("aud") != AUDIENCE and "auth/compute" not in scopes)
        ):
            raise ApiError(401, "Request had invalid authentication credentials.", "authError")

    def _list(self, *, project: str, zone: str, query: dict[str, str], **_: Any) -> dict[str, Any]:
        wanted = _parse_filter(query.get("filter", "")) if self.honour_filter else {}
        found = sorted(
            (
                vm
                for vm in self.vms.values()
                if vm["_project"] == project
                and vm["_zone"] == zone
                and all(vm.get("labels", {}).get(k) == v for k, v in wanted.items())
            ),
            key=lambda vm: vm["name"],
        )
        size = min(int(query.get("maxResults", 500)), self.page_size)
        start = int(query.get("pageToken") or 0)
        page = found[start : start + size]
        result: dict[str, Any] = {
            "kind": "compute#instanceList",
            "id": f"projects/{project}/zones/{zone}/instances",
            "selfLink": self._link(f"projects/{project}/zones/{zone}/instances"),
        }
        if page:  # like the real API, an empty list has no "items"
            result["items"] = [_public(vm) for vm in page]
        if start + size < len(found):
            result["nextPageToken"] = str(start + size)
        if self.endless_pages is not None:
            result["nextPageToken"] = "0" if self.endless_pages == "again" else str(start + 1)
        return result

    def _insert(
        self, *, project: str, zone: str, body: dict[str, Any], query: dict[str, str], **_: Any
    ) -> dict[str, Any]:
        earlier = self.request_ids.get((project, query.get("requestId", "")))
        if earlier is not None:  # a retried insert runs once, as on the real API
            return self.operations[(project, earlier)]
        name = str(body.get("name", ""))
        _validate_instance(body, zone)
        if name in self.vms:
            raise ApiError(
                409,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
            )
        target = f"projects/{project}/zones/{zone}/instances/{name}"
        op = self._new_operation(project, zone, "insert", target)
        if "error" not in op:
            self.vms[name] = self._new_vm(project, zone, body)
        if query.get("requestId"):
            self.request_ids[(project, query["requestId"])] = op["name"]
        return op

    def _get(self, *, project: str, zone: str, name: str, **_: Any) -> dict[str, Any]:
        return _public(self._find(project, zone, name))

    def _delete(self, *, project: str, zone: str, name: str, **_: Any) -> dict[str, Any]:
        self._find(project, zone, name)
        op = self._new_operation(
            project, zone, "delete", f"projects/{project}/zones/{zone}/instances/{name}"
        )
        if "error" not in op:
            del self.vms[name]
        return op

    def _get_operation(
        self, *, project: str, op: str, zone: str | None = None, **_: Any
    ) -> dict[str, Any]:
        found = self.operations.get((project, op))
        scope = self._link(f"projects/{project}/zones/{zone}") if zone else None
        if found is None or found.get("zone") != scope:
            raise ApiError(404, f"The resource 'projects/{project}/operations/{op}' was not found")
        return found

    def _wait(self, **args: Any) -> dict[str, Any]:
        found = self._get_operation(**args)
        # Operations start RUNNING; `wait` returns when they are DONE, as the real one does
        # (or, like the real one after two minutes, while they still run).
        if self.operations_finish:
            found.update(status="DONE", progress=100, endTime=_now())
        return found

    def _firewall_get(self, *, project: str, name: str, **_: Any) -> dict[str, Any]:
        found = self.firewalls.get((project, name))
        if found is None:
            raise ApiError(
                404, f"The resource 'projects/{project}/global/firewalls/{name}' was not found"
            )
        return found

    def _firewall_insert(self, *, project: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        name = str(body.get("name", ""))
        if not _NAME.fullmatch(name):
            raise ApiError(400, "Invalid value for field 'resource.name'")
        if (project, name) in self.firewalls:
            raise ApiError(
                409, f"The resource 'projects/{project}/global/firewalls/{name}' already exists"
            )
        target = f"projects/{project}/global/firewalls/{name}"
        op = self._new_operation(project, None, "insert", target)
        self.firewalls[(project, name)] = {
            **body,
            "kind": "compute#firewall",
            "id": str(next(self._ids)),
            "creationTimestamp": _now(),
            "selfLink": self._link(target),
        }
        return op

    def _firewall_update(
        self, *, project: str, name: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        """An update replaces the whole rule (what the body leaves out is reset)."""
        found = self._firewall_get(project=project, name=name)
        if body.get("name") != name:
            raise ApiError(400, "Invalid value for field 'resource.name'")
        target = f"projects/{project}/global/firewalls/{name}"
        op = self._new_operation(project, None, "update", target)
        kept = {k: found[k] for k in ("kind", "id", "creationTimestamp", "selfLink")}
        self.firewalls[(project, name)] = {**body, **kept}
        return op

    # --- helpers -------------------------------------------------------------------------

    def _new_operation(
        self, project: str, zone: str | None, kind: str, target: str
    ) -> dict[str, Any]:
        name = f"operation-{uuid.uuid4().hex}"
        scope = f"projects/{project}/zones/{zone}" if zone else f"projects/{project}/global"
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),
            "name": name,
            "operationType": kind,
            "targetLink": self._link(target),
            "status": "RUNNING",
            "progress": 0,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": self._link(f"{scope}/operations/{name}"),
        }
        if zone:
            op["zone"] = self._link(f"projects/{project}/zones/{zone}")
        if self.operation_errors and zone:
            code, message = self.operation_errors.popleft()
            op.update(
                status="DONE",
                progress=100,
                endTime=_now(),
                error={"errors": [{"code": code, "message": message}]},
                httpErrorStatusCode=403,
                httpErrorMessage="FORBIDDEN",
            )
        self.operations[(project, name)] = op
        return op

    def _find(self, project: str, zone: str, name: str) -> dict[str, Any]:
        vm = self.vms.get(name)
        if vm is None or vm["_project"] != project or vm["_zone"] != zone:
            raise ApiError(
                404,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
            )
        return vm

    def _new_vm(self, project: str, zone: str, body: dict[str, Any]) -> dict[str, Any]:
        vm: dict[str, Any] = json.loads(json.dumps(body))  # a deep copy: the server's own
        vm.update(
            _project=project,
            _zone=zone,
            kind="compute#instance",
            id=str(next(self._ids)),
            creationTimestamp=_now(),
            status="PROVISIONING",
            zone=self._link(f"projects/{project}/zones/{zone}"),
            selfLink=self._link(f"projects/{project}/zones/{zone}/instances/{body['name']}"),
        )
        nics = vm.setdefault("networkInterfaces", [{"accessConfigs": [{}]}])
        for n, nic in enumerate(nics):
            nic.update(name=f"nic{n}", networkIP=f"10.128.0.{len(self.vms) % 250 + 2}")
        return vm

    def _link(self, path: str) -> str:
        return f"https://www.googleapis.com/compute/v1/{path}"


def _route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for route_method, pattern, action in _ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return action, match.groupdict()
    return None


def _labels(instance: str) -> dict[str, str]:
    return {"cloudproxy": "true", "cloudproxy-instance": instance}


def _now() -> str:
    return datetime.now(PACIFIC).isoformat(timespec="milliseconds")


def _public(vm: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in vm.items() if not k.startswith("_")}


def _parse_filter(text: str) -> dict[str, str]:
    """The subset of the list filter syntax the adapter uses: ``(labels.K = "V")`` terms joined
    by ``AND`` (or by juxtaposition, which also means AND). Anything else is a 400."""
    wanted: dict[str, str] = {}
    rest = text.strip()
    while rest:
        match = _FILTER_TERM.match(rest)
        if match is None:
            raise ApiError(400, "Invalid value for field 'filter'")
        wanted[match[1]] = match[2]
        rest = rest[match.end() :].strip()
        rest = rest.removeprefix("AND ").strip()
    return wanted


def _validate_instance(body: dict[str, Any], zone: str) -> None:
    name = str(body.get("name", ""))
    if not _NAME.fullmatch(name):
        raise ApiError(400, "Invalid value for field 'resource.name'")
    for key, value in body.get("labels", {}).items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ApiError(400, "Invalid value for field 'resource.labels'")
    if not str(body.get("machineType", "")).startswith(f"zones/{zone}/machineTypes/"):
        raise ApiError(400, "Invalid value for field 'resource.machineType'")
    boot = [d for d in body.get("disks", []) if d.get("boot")]
    if len(boot) != 1 or "sourceImage" not in boot[0].get("initializeParams", {}):
        raise ApiError(400, "Invalid value for field 'resource.disks'")
    scheduling = body.get("scheduling", {})
    if scheduling.get("provisioningModel", "STANDARD") not in {"STANDARD", "SPOT"}:
        raise ApiError(400, "Invalid value for field 'resource.scheduling.provisioningModel'")


class _Handler(JsonHandler[GcpStandIn]):
    protocol_version = "HTTP/1.0"  # no keep-alive: each answer closes its connection
    json_content_type = "application/json; charset=UTF-8"

    def _answer(self) -> None:
        self.guarded(self._serve)

    def _serve(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, payload = self.owner.handle(
            self.command, self.path, headers, self.read_body()
        )
        self.send_json(status, payload, extra)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def make_standin(tmp_path: Path) -> GcpStandIn:
    return GcpStandIn(tmp_path)
