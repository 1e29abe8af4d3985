"""moto's EC2 on 127.0.0.1 behind a gate that checks signatures, counts and fails requests."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import io
import itertools
import re
import secrets
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, quote, urlencode
from xml.sax.saxutils import escape

import botocore.loaders
import botocore.session
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.models.instances import Instance, InstanceState
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from cloudproxy_cli.adapters.aws import UBUNTU_OWNER, AwsProvider
from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.app import factories
from cloudproxy_cli.config import AwsSettings
from tests.standins.base import Kind
from tests.standins.http import (
    Dropped,
    Failure,
    FailureQueue,
    LoopbackServer,
    RawAnswer,
    RequestLog,
    inject,
)

REGION = "us-east-1"
PROXY_USER = "proxyuser"
PROXY_PASSWORD = "proxy-password-5e8c1"
PROXY_PORT = 8899

# moto ships no Ubuntu 24.04 image, so each account of the stand-in gets Canonical's: two
# amd64 builds (the adapter must pick the newer), and newer images it must not pick: an arm64
# build, an older LTS, and a look-alike published by someone else.
UBUNTU_NOBLE = "ami-0b1b2c3d4e5f60002"
_NOBLE = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04"
UBUNTU_IMAGES = (  # id, name, architecture, creation date, owner
    ("ami-0b1b2c3d4e5f60001", f"{_NOBLE}-amd64-server-20250101", "x86_64", "2025-01-01", None),
    (UBUNTU_NOBLE, f"{_NOBLE}-amd64-server-20250601", "x86_64", "2025-06-01", None),
    ("ami-0b1b2c3d4e5f60003", f"{_NOBLE}-arm64-server-20250701", "arm64", "2025-07-01", None),
    (
        "ami-0b1b2c3d4e5f60004",
        "ubuntu/images/hvm-ssd-gp3/ubuntu-jammy-22.04-amd64-server-20250801",
        "x86_64",
        "2025-08-01",
        None,
    ),
    ("ami-0b1b2c3d4e5f60005", f"{_NOBLE}-amd64-server-20250901", "x86_64", "2025-09-01", "1" * 12),
)
_GONE_STATES = frozenset({"shutting-down", "terminated"})
_STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}
_FIREWALL_ACTIONS = frozenset(
    {
        "DescribeSecurityGroups",
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
        "RevokeSecurityGroupIngress",
        "DeleteSecurityGroup",
    }
)
_ERROR_CODES = {
    401: "AuthFailure",
    403: "UnauthorizedOperation",
    429: "RequestLimitExceeded",
    500: "InternalError",
    503: "Unavailable",
}
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<scope>\d{8}/[^/]+/[^/]+/aws4_request), "
    r"SignedHeaders=(?P<headers>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)
_INSTANCE_ID = re.compile(rb"<instanceId>(i-[0-9a-f]+)</instanceId>")

_XML = "text/xml;charset=UTF-8"
Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def classify(action: str, params: dict[str, str]) -> Kind:
    if action == "DescribeInstances":
        # A look-up of given instances (the ownership check of a delete) is not a listing.
        return "other" if any(k.startswith("InstanceId.") for k in params) else "list"
    if action == "RunInstances":
        return "create"
    if action in {"TerminateInstances", "CancelSpotInstanceRequests"}:
        return "delete"
    if action in _FIREWALL_ACTIONS:
        return "firewall"
    return "other"


def tag_specifications(params: dict[str, str]) -> dict[str, dict[str, str]]:
    """The ``TagSpecification.N`` parameters of a query request, by resource type."""
    found: dict[str, dict[str, str]] = {}
    for n in itertools.count(1):
        resource = params.get(f"TagSpecification.{n}.ResourceType")
        if resource is None:
            return found
        tags = found.setdefault(resource, {})
        for m in itertools.count(1):
            key = params.get(f"TagSpecification.{n}.Tag.{m}.Key")
            if key is None:
                break
            tags[key] = params.get(f"TagSpecification.{n}.Tag.{m}.Value", "")
    raise AssertionError("unreachable")  # pragma: no cover


@functools.cache
def _shared_loader() -> Any:
    return botocore.loaders.create_loader()


def botocore_session() -> Any:
    """A new botocore session (so new credentials, config and client) whose loader is shared:
    parsing EC2's service model takes ~0.4 s per session, which tests pay once this way.
    (boto3 appends its data path to the loader each time: a longer list, the same files.)"""
    session = botocore.session.Session()
    session.register_component("data_loader", _shared_loader())
    return session


def _new_account_id() -> str:
    # Random per stand-in: moto's backends are process-wide, so fresh accounts keep each
    # stand-in (and each test) apart without resetting anyone else's.
    return f"{secrets.randbelow(9 * 10**11) + 10**11}"


@dataclass(frozen=True)
class Key:
    """An access key: its id, secret and the account it belongs to."""

    key_id: str
    secret: str
    account: str


@dataclass
class SpotRequest:
    """The one-time spot request RunInstances opens for a spot instance (moto 5 opens none)."""

    instance_id: str
    account: str
    tags: dict[str, str]
    state: str = "active"


@dataclass(frozen=True)
class _Request:
    """One request as the gate saw it (never its credentials)."""

    kind: Kind
    action: str
    params: dict[str, str]  # its query parameters, as sent
    session_token: str | None  # its X-Amz-Security-Token


@dataclass
class _Served:
    """An answer: its status line, headers and body."""

    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _QuietHandler(MotoRequestHandler):
    # Headers and body go out in separate writes: with Nagle's algorithm on, each answer
    # waits for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass  # one stderr line per request is noise in test output


class AwsStandIn:
    """EC2 for the adapter (moto, one fresh account per ``account`` name), plus test controls.

    In front of moto, a WSGI gate: it verifies each request's SigV4 signature against the
    access keys it issued (and so serves each from its key's account), records and classifies
    it, answers injected failures, and completes what moto does not model: a launch without
    a subnet goes to the default VPC's subnet (moto's EC2-Classic would give it a random
    public address), instances start ``pending`` without an address, and a spot RunInstances
    opens a spot request.
    """

    name = "aws"

    def __init__(self) -> None:
        self.accounts = {"a": _new_account_id(), "b": _new_account_id()}
        self.sleeps: list[float] = []  # what adapters' retries waited (they never really sleep)
        self.spot_requests: dict[str, SpotRequest] = {}
        self._keys: dict[str, Key] = {}  # by key id
        self._issued: dict[tuple[str, str], Key] = {}  # by (account, instance)
        self._ready: set[str] = set()  # accounts whose moto backend is set up
        self._log: RequestLog[_Request] = RequestLog()
        self.failures: FailureQueue[Failure] = FailureQueue()  # see tests/standins/http.py
        self.answers: dict[str, bytes] = {}  # the last 200 answer of each action, as sent
        # RunInstances answers by (account, ClientToken): EC2 launches once per token.
        self._client_tokens: dict[tuple[str, str], _Served] = {}
        self._lock = threading.RLock()
        self._addresses = itertools.count(1)
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = LoopbackServer(
            make_server("127.0.0.1", 0, self._serve, threaded=True, request_handler=_QuietHandler)
        )
        self.endpoint = self._server.url

    # --- credentials and adapters -----------------------------------------------------------

    @property
    def secrets(self) -> tuple[str, ...]:
        with self._lock:
            issued = [s for k in self._keys.values() for s in (k.key_id, k.secret)]
        return (*issued, PROXY_PASSWORD)

    def key(self, instance: str = "default", account: str = "a") -> Key:
        """The access key of ``instance`` in ``account`` ("a" or "b"): each its own."""
        with self._lock:
            found = self._issued.get((account, instance))
            if found is None:
                found = Key(
                    key_id="AKIA" + secrets.token_hex(8).upper(),
                    secret=secrets.token_urlsafe(30),
                    account=self.accounts[account],
                )
                self._issued[account, instance] = found
                self._keys[found.key_id] = found
            return found

    def settings(self, instance: str = "default", account: str = "a", **fields: Any) -> AwsSettings:
        key = self.key(instance, account)
        values: dict[str, Any] = {
            "enabled": True,
            "access_key_id": key.key_id,
            "secret_access_key": key.secret,
            "region": REGION,
            "api_endpoint": self.endpoint,
        }
        return AwsSettings(**(values | fields))

    @staticmethod
    def proxy_settings(allowed_ip: str | None = None) -> ProxySettings:
        return ProxySettings(PROXY_PORT, PROXY_USER, PROXY_PASSWORD, allowed_ip)

    def provider(
        self,
        instance: str = "default",
        *,
        account: str = "a",
        allowed_ip: str | None = None,
        page_size: int | None = None,
        **fields: Any,
    ) -> AwsProvider:
        """A real adapter through ``factories.aws``; ``fields`` override ``AwsSettings``."""
        extra: dict[str, Any] = {} if page_size is None else {"page_size": page_size}
        return factories.aws(
            instance=instance,
            settings=self.settings(instance, account, **fields),
            proxy=self.proxy_settings(allowed_ip),
            sleep=self.sleeps.append,
            botocore_session=botocore_session(),
            **extra,
        )

    # --- the VMs ----------------------------------------------------------------------------

    def backend(self, account: str = "a") -> Any:
        """moto's EC2 backend of ``account`` (a name, or an account id), set up on first use."""
        account_id = self.accounts.get(account, account)
        with self._lock:
            if account_id not in self._ready:
                # moto fills every new account with ~1300 stock images (thousands of objects,
                # a second or two over a test run); the adapter looks only for ours.
                with mock.patch("moto.settings.ec2_load_default_amis", return_value=False):
                    backend = ec2_backends[account_id][REGION]
                self._set_up(backend)
                self._ready.add(account_id)
        return ec2_backends[account_id][REGION]

    def default_subnet(self, account: str = "a") -> str:
        backend = self.backend(account)
        vpc_id = backend.get_default_vpc().id
        return min(
            str(subnet.id)
            for subnets in backend.subnets.values()
            for subnet in subnets.values()
            if subnet.vpc_id == vpc_id and subnet.default_for_az
        )

    def add_foreign_vm(
        self, *, instance: str | None, account: str = "a", tags: dict[str, str] | None = None
    ) -> str:
        """A VM our adapters did not create: untagged, or with ``instance``'s two tags (or
        exactly ``tags``)."""
        if tags is None:
            tags = (
                {} if instance is None else {"cloudproxy": "true", "cloudproxy-instance": instance}
            )
        backend = self.backend(account)
        reservation = backend.run_instances(
            UBUNTU_NOBLE,
            1,
            None,
            [],
            region_name=REGION,
            subnet_id=self.default_subnet(account),
            instance_type="t3.micro",
            is_instance_type_default=False,
            tags={"instance": tags},
        )
        vm: Instance = reservation.instances[0]
        vm._state = InstanceState("pending", 0)
        return str(vm.id)

    def instance(self, vm_id: str) -> Instance | None:
        """moto's instance ``vm_id`` in any account of this stand-in."""
        for account in list(self._ready):
            for vm in ec2_backends[account][REGION].all_instances():
                if vm.id == vm_id:
                    return vm
        return None

    def vm_exists(self, vm_id: str) -> bool:
        vm = self.instance(vm_id)
        return vm is not None and vm.state not in _GONE_STATES

    def vm_ids(self) -> list[str]:
        with self._lock:
            return [
                str(vm.id)
                for account in list(self._ready)
                for vm in ec2_backends[account][REGION].all_instances()
                if vm.state not in _GONE_STATES
            ]

    def vm_tags(self, vm_id: str) -> dict[str, str]:
        vm = self.instance(vm_id)
        assert vm is not None, vm_id
        return {t["key"]: t["value"] for t in vm.get_tags()}

    def vm_account(self, vm_id: str) -> str:
        """The name ("a"/"b") of the account that holds ``vm_id``."""
        for name in self.accounts:
            if any(vm.id == vm_id for vm in self.backend(name).all_instances()):
                return name
        raise KeyError(vm_id)

    def console(self, account: str = "a") -> Any:
        """A plain boto3 EC2 client of ``account``: someone changing things in the console."""
        from cloudproxy_cli.adapters.aws import make_client

        key = self.key("console", account)
        return make_client(
            instance="console", key_id=key.key_id, secret=key.secret, token=None,
            region=REGION, endpoint=self.endpoint, botocore_session=botocore_session(),
        )  # fmt: skip

    def firewall(self, group_id: str, account: str = "a") -> dict[str, Any]:
        """Security group ``group_id`` as a test wants to see it: name, VPC, tags, rules."""
        backend = self.backend(account)
        group = backend.get_security_group_from_id(group_id)
        assert group is not None, group_id
        return {
            "name": group.name,
            "vpc_id": group.vpc_id,
            "default_vpc": group.vpc_id == backend.get_default_vpc().id,
            "tags": {t["key"]: t["value"] for t in group.get_tags()},
            "rules": [
                (r.ip_protocol, r.from_port, r.to_port, next(iter(r.ip_range.values()), None))
                for r in group.ingress_rules
            ],
        }

    def set_vm(self, vm_id: str, *, state: str | None = None, ip: str | None = None) -> None:
        """Put ``vm_id`` in ``state`` and/or give it the public address ``ip`` (loopback)."""
        vm = self.instance(vm_id)
        assert vm is not None, vm_id
        if state is not None:
            vm._state = InstanceState(state, _STATE_CODES[state])
        if ip is not None:
            assert ip.startswith("127."), "stand-ins hand out loopback addresses only"
            vm.nics[0].public_ip = ip

    def boot_all(self, *, with_address: bool = True) -> None:
        """Every pending VM runs, with a 127.0.0.x public address unless ``with_address`` is
        false (an instance in a subnet that maps none)."""
        with self._lock:
            for account in list(self._ready):
                for vm in ec2_backends[account][REGION].all_instances():
                    if vm.state == "pending":
                        vm._state = InstanceState("running", 16)
                        if with_address:
                            n = next(self._addresses)
                            vm.nics[0].public_ip = f"127.0.{n // 250}.{n % 250 + 1}"

    # --- requests ---------------------------------------------------------------------------

    @property
    def sent(self) -> list[dict[str, str]]:
        """The parameters of every request, as sent."""
        return [r.params for r in self._log.entries()]

    @property
    def actions(self) -> list[str]:
        """The action of every request."""
        return [r.action for r in self._log.entries()]

    @property
    def session_tokens(self) -> list[str | None]:
        """The X-Amz-Security-Token of every request."""
        return [r.session_token for r in self._log.entries()]

    @property
    def creates(self) -> list[dict[str, str]]:
        """The parameters of every RunInstances sent (retries included)."""
        return [p for p in self.sent if p.get("Action") == "RunInstances"]

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

    def reset_requests(self) -> None:
        self._log.clear()

    def close(self) -> None:
        self._server.close()
        for account in self._ready:  # moto's backends outlive us: free this stand-in's accounts
            ec2_backends.pop(account, None)

    # --- the gate in front of moto -----------------------------------------------------------

    def _serve(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        action = params.get("Action", "")
        kind = classify(action, params)
        key = self._signed_by(environ, body)
        self._log.add(_Request(kind, action, params, environ.get("HTTP_X_AMZ_SECURITY_TOKEN")))
        if key is None:  # refused before it can take an injected failure
            answer = _error(
                401, "AuthFailure", "AWS was not able to validate the provided access credentials"
            )
        else:
            try:
                answer = inject(
                    self.failures.take(kind),
                    lambda: self._process(environ, key, action, params),
                    _injected,
                    content_type=_XML,
                )
            except Dropped:
                # werkzeug treats a ConnectionError as a client gone away: no answer, no log.
                with contextlib.suppress(OSError):
                    environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
                raise ConnectionAbortedError("dropped by the stand-in") from None
            except RawAnswer as raw:
                answer = _Served(_status_line(raw.status), list(raw.headers.items()), raw.payload)
        if key is not None and answer.status.startswith("200"):
            self.answers[action] = answer.body
        headers = [(k, v) for k, v in answer.headers if k.lower() != "content-length"]
        start_response(answer.status, [*headers, ("Content-Length", str(len(answer.body)))])
        return [answer.body]

    def _process(self, environ: Environ, key: Key, action: str, params: dict[str, str]) -> _Served:
        self.backend(key.account)
        # moto serves the account a request names in this header (before any key lookup).
        environ["HTTP_X_MOTO_ACCOUNT_ID"] = key.account
        if action == "CancelSpotInstanceRequests":
            return self._cancel_spot_requests(key, params)
        if action != "RunInstances":
            return self._call_moto(environ)
        token = (key.account, params.get("ClientToken") or "")
        with self._lock:
            earlier = self._client_tokens.get(token) if token[1] else None
        if earlier is not None:  # as EC2: one launch per ClientToken, the same answer again
            return earlier
        if "SubnetId" not in params and not any(k.startswith("NetworkInterface") for k in params):
            # EC2 launches into the default VPC's default subnet; moto would launch into
            # EC2-Classic (retired in 2022), with a random public address.
            launch = urlencode({**params, "SubnetId": self.default_subnet(key.account)}).encode()
            environ["wsgi.input"] = io.BytesIO(launch)
            environ["CONTENT_LENGTH"] = str(len(launch))
        served = self._call_moto(environ)
        if served.status.startswith("200"):
            self._launched(key.account, params, served.body)
            if token[1]:
                with self._lock:
                    self._client_tokens[token] = served
        return served

    def _call_moto(self, environ: Environ) -> _Served:
        served = _Served()

        def capture(status: str, headers: list[tuple[str, str]], *_: object) -> None:
            served.status, served.headers = status, headers

        served.body = b"".join(self._moto(environ, capture))
        return served

    def _signed_by(self, environ: Environ, body: bytes) -> Key | None:
        """The issued key whose secret signed this request (AWS Signature Version 4), if any."""
        match = _AUTHORIZATION.fullmatch(environ.get("HTTP_AUTHORIZATION", ""))
        if match is None:
            return None
        with self._lock:
            key = self._keys.get(match["key"])
        if key is None:
            return None
        names = match["headers"].split(";")
        headers = "".join(f"{n}:{' '.join(_header(environ, n).split())}\n" for n in names)
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, v in sorted(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        )
        canonical = "\n".join(
            [
                environ["REQUEST_METHOD"],
                quote(environ.get("PATH_INFO") or "/", safe="/-_.~"),
                query,
                headers,
                match["headers"],
                hashlib.sha256(body).hexdigest(),
            ]
        )
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                _header(environ, "x-amz-date"),
                match["scope"],
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        signing_key = ("AWS4" + key.secret).encode()
        for part in match["scope"].split("/"):  # date, region, service, "aws4_request"
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        return key if hmac.compare_digest(expected, match["signature"]) else None

    def _launched(self, account: str, params: dict[str, str], answer: bytes) -> None:
        """What EC2 does at launch and moto does not: new instances are pending (no address
        yet), and a spot launch opens a spot request tagged as the request asked."""
        spot = params.get("InstanceMarketOptions.MarketType") == "spot"
        spot_tags = tag_specifications(params).get("spot-instances-request", {})
        with self._lock:
            for vm_id in dict.fromkeys(m.decode() for m in _INSTANCE_ID.findall(answer)):
                vm = self.backend(account).get_instance(vm_id)
                assert vm.public_ip is None, "moto must not hand out a public address"
                vm._state = InstanceState("pending", 0)
                if spot:
                    request_id = "sir-" + secrets.token_hex(4)
                    self.spot_requests[request_id] = SpotRequest(vm_id, account, dict(spot_tags))
                    # moto serializes this attribute as the instance's SpotInstanceRequestId.
                    vm.spot_instance_request_id = request_id

    def _cancel_spot_requests(self, key: Key, params: dict[str, str]) -> _Served:
        ids = [v for k, v in sorted(params.items()) if k.startswith("SpotInstanceRequestId.")]
        with self._lock:
            for request_id in ids:
                request = self.spot_requests.get(request_id)
                if request is None or request.account != key.account:
                    return _error(
                        400,
                        "InvalidSpotInstanceRequestID.NotFound",
                        f"The spot instance request ID '{request_id}' does not exist",
                    )
            for request_id in ids:
                self.spot_requests[request_id].state = "cancelled"
        items = "".join(
            f"<item><spotInstanceRequestId>{escape(i)}</spotInstanceRequestId>"
            "<state>cancelled</state></item>"
            for i in ids
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<CancelSpotInstanceRequestsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>{uuid.uuid4()}</requestId>"
            f"<spotInstanceRequestSet>{items}</spotInstanceRequestSet>"
            "</CancelSpotInstanceRequestsResponse>"
        ).encode()
        return _answer(200, body)

    @staticmethod
    def _set_up(backend: Any) -> None:
        # Default subnets map public IPs at launch, and moto's would be random public ones:
        # here no instance gets an address until boot_all gives it a loopback one.
        for subnets in backend.subnets.values():
            for subnet in subnets.values():
                subnet.map_public_ip_on_launch = False
        for ami_id, name, arch, date, owner in UBUNTU_IMAGES:
            backend.amis[ami_id] = Ami(
                backend,
                ami_id,
                name=name,
                owner_id=owner or UBUNTU_OWNER,
                public=True,
                virtualization_type="hvm",
                architecture=arch,
                root_device_type="ebs",
                creation_date=datetime.fromisoformat(date).replace(tzinfo=UTC),
                region_name=f"{REGION}a",
            )


def _header(environ: Environ, name: str) -> str:
    if name in {"content-type", "content-length"}:
        return str(environ.get(name.upper().replace("-", "_"), ""))
    return str(environ.get("HTTP_" + name.upper().replace("-", "_"), ""))


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def _answer(status: int, body: bytes, extra: Iterable[tuple[str, str]] = ()) -> _Served:
    return _Served(_status_line(status), [("Content-Type", _XML), *extra], body)


def _error(
    status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
) -> _Served:
    """An error in EC2's shape (the query protocol's ``Response/Errors/Error``)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    return _answer(status, body, headers)


def _injected(failure: Failure) -> _Served:
    code = _ERROR_CODES.get(failure.status, "InternalError")
    return _error(failure.status, code, "injected by the stand-in", failure.all_headers().items())


def make_standin(tmp_path: Path) -> AwsStandIn:
    return AwsStandIn()
