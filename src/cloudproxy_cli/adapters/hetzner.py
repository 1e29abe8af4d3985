"""Hetzner Cloud servers through hcloud, labelled per instance, with one client and token each."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from hcloud import APIException, Client
from hcloud.firewalls import (
    BoundFirewall,
    FirewallResource,
    FirewallResourceLabelSelector,
    FirewallRule,
)
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer, Server

from cloudproxy_cli import __version__
from cloudproxy_cli.adapters.common import (
    INSTANCE_KEY,
    TAG,
    Envelope,
    FirewallRules,
    Grant,
    ProxySettings,
    Retry,
    canonical_cidr,
    firewall_name,
    guarded_delete,
    instance_labels,
    owns_labels,
    parse_retry_after,
    port_range,
    vm_name,
)
from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import Proxy

log = logging.getLogger("cloudproxy")

T = TypeVar("T")

PROVIDER = "hetzner"
ENDPOINT_ENV = "HETZNER_API_ENDPOINT"
# Per HTTP attempt (connect, read): hcloud's own default is no timeout at all, and a hung API
# must fail this run, not stall every later cron run behind the state lock.
TIMEOUT_S = (5.0, 30.0)
# Hetzner error codes worth another attempt. `conflict` and `locked` mean "the resource is busy
# (e.g. its create action still runs), try again"; the rest are the API's own outages.
_TRANSIENT_CODES = frozenset(
    {
        "rate_limit_exceeded",
        "conflict",
        "locked",
        "server_error",
        "service_error",
        "unavailable",
        "maintenance",
        "timeout",
        "bad_gateway",
    }
)
_FORBIDDEN_CODES = frozenset({"forbidden", "token_readonly"})
# While a server is `initializing` Hetzner already shows the IPv4 it will get, but nothing
# answers there yet (the disk is still being written, cloud-init has not run): reporting it
# would only buy failing probes and an address in `cloudproxy proxies` that serves nothing.
_NOT_BOOTED = frozenset({"initializing"})


class HetznerProvider:
    """One Hetzner Cloud project (API token) and instance name; implements ``Provider``.

    Every server it creates carries the labels ``cloudproxy=true`` and
    ``cloudproxy-instance=<instance>``; it lists, and deletes, only servers carrying both.
    Retries are its own (``call_with_retries``): hcloud's built-in retry loop, which ignores
    Retry-After and may sleep up to 5 x 60 s, is switched off.
    """

    def __init__(
        self,
        *,
        instance: str,
        token: str | None,
        token_env: str,
        endpoint: str | None,
        location: str,
        server_type: str,
        image: str,
        proxy: ProxySettings,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._instance = instance
        self._token = token
        self._token_env = token_env
        self._location = location
        self._server_type = server_type
        self._image = image
        self._proxy = proxy
        self._env = Envelope(
            f"{PROVIDER}/{instance}", tuple(s for s in (token, proxy.password) if s), sleep
        )
        self._labels = instance_labels(instance)
        # Both labels, always: a bare `cloudproxy` would match every instance's servers.
        self._selector = f"{TAG},{INSTANCE_KEY}={instance}"
        # The last HTTP response seen on this thread: APIException carries neither the status
        # nor the headers (Retry-After), so a requests hook keeps them for the classifier.
        self._seen = threading.local()
        # Ids this adapter has seen carrying both labels (listed or created): deleting one of
        # them needs no ownership read. Hetzner never reuses server ids.
        self._owned: set[str] = set()
        self._client: Client | None = None
        if token is not None:
            self._client = _make_client(token, endpoint, self._remember)

    @property
    def _key(self) -> str:
        return self._env.key

    # --- Provider ---------------------------------------------------------------------------

    def list_proxies(self) -> list[Proxy]:
        client = self._require_client()
        servers = self._call(
            "list servers", lambda: client.servers.get_all(label_selector=self._selector)
        )
        # The API already filtered by label; checking again costs nothing and keeps a
        # misbehaving endpoint from handing us another instance's servers.
        self._check_list_answer("list servers", "servers")
        with self._env.reading("list servers"):
            if not all(_valid_id(s.id) for s in servers):  # even one not ours: garbled
                raise self._env.error("list servers: the API listed a server without a valid id")
            mine = [s for s in servers if self._owns(s) and s.status != "deleting"]
            proxies = [self._to_proxy(s) for s in mine]
        self._owned = {p.id for p in proxies}
        return proxies

    def create_proxy(self) -> Proxy:
        from cloudproxy_cli.adapters.user_data import render_user_data

        client = self._require_client()
        # The name doubles as an idempotency key: Hetzner refuses a second server with the same
        # name, so retrying a create whose answer was lost can never make two servers.
        name = vm_name(self._instance)
        try:
            user_data = render_user_data(self._proxy)
        except ValueError as exc:
            raise self._env.error(f"cannot render the user data: {exc}") from None
        attempts = 0

        def create() -> BoundServer:
            nonlocal attempts
            attempts += 1
            try:
                return client.servers.create(
                    name=name,
                    server_type=ServerType(name=self._server_type),
                    image=Image(name=self._image),
                    location=Location(name=self._location),
                    user_data=user_data,
                    labels=dict(self._labels),
                ).server
            except APIException as exc:
                if attempts > 1 and exc.code == "uniqueness_error":
                    # An earlier attempt did create it, but its answer never reached us.
                    found = client.servers.get_by_name(name)
                    if found is not None and self._owns(found):
                        return found
                raise

        # The create action is not waited for: the next run lists the server and probes it.
        server = self._call("create server", create)
        with self._env.reading("create server"):
            proxy = self._to_proxy(server)
        self._owned.add(proxy.id)
        return proxy

    def delete_proxy(self, proxy_id: str) -> None:
        client = self._require_client()
        if not (proxy_id.isascii() and proxy_id.isdigit()):
            log.warning("%s: %r is not a Hetzner server id; nothing to delete", self._key, proxy_id)
            return
        server_id = int(proxy_id)
        guarded_delete(
            proxy_id,
            owned=self._owned,
            # The DELETE endpoint cannot be scoped by label: read the labels first.
            read=lambda: self._call(
                f"read server {proxy_id}",
                lambda: _or_none(lambda: client.servers.get_by_id(server_id)),
            ),
            owns=self._owns,
            delete=lambda _: self._call(
                f"delete server {proxy_id}",
                lambda: _or_none(lambda: client.servers.delete(Server(id=server_id))),
            ),
            key=self._key,
            noun="server",
        )

    def ensure_firewall(self, known_id: str | None) -> str | None:
        """One GET of the remembered firewall; found by name or created if gone; its rules
        set to exactly ours and its label selector applied again if either differs."""
        client = self._require_client()
        name = firewall_name(self._instance)
        found: BoundFirewall | None = None
        if known_id is not None and known_id.isascii() and known_id.isdigit():
            found = self._call(
                "read firewall",
                lambda: _or_none(lambda: client.firewalls.get_by_id(int(known_id))),
            )
            if found is not None and found.name != name:
                found = None  # not ours: never changed
        if found is None:
            found = self._call("find firewall", lambda: client.firewalls.get_by_name(name))
        if found is None:
            return self._create_firewall(client, name)
        self._repair_firewall(client, found)
        return str(found.id)

    # --- firewall ---------------------------------------------------------------------------

    def _create_firewall(self, client: Client, name: str) -> str:
        def create() -> BoundFirewall:
            try:
                return client.firewalls.create(
                    name=name, rules=[self._proxy_rule()], resources=[self._target()]
                ).firewall
            except APIException as exc:
                if exc.code == "uniqueness_error":  # made meanwhile (or by a lost attempt)
                    again = client.firewalls.get_by_name(name)
                    if again is not None:
                        return again
                raise

        created = self._call("create firewall", create)
        log.info("%s: created firewall %s (id %s)", self._key, name, created.id)
        return str(created.id)

    def _repair_firewall(self, client: Client, firewall: BoundFirewall) -> None:
        """``set_rules`` replaces every rule at once (an outbound rule of anyone's would
        block all other outbound traffic); the selector is applied again if it was removed."""
        if not FirewallRules.for_proxy(self._proxy).holds(_grants(firewall.rules)):
            log.warning(
                "%s: firewall %s differs from PROXY_PORT/ONLY_HOST_IP/HOST_IP; repairing it",
                self._key, firewall.id,
            )  # fmt: skip
            self._call(
                "repair firewall rules",
                lambda: client.firewalls.set_rules(firewall, [self._proxy_rule()]),
            )
        if not any(
            r.type == FirewallResource.TYPE_LABEL_SELECTOR
            and r.label_selector is not None
            and r.label_selector.selector == self._selector
            for r in firewall.applied_to or []
        ):
            log.warning("%s: firewall %s lost its label selector; applying it again",
                        self._key, firewall.id)  # fmt: skip
            self._call(
                "apply firewall",
                lambda: client.firewalls.apply_to_resources(firewall, [self._target()]),
            )

    def _target(self) -> FirewallResource:
        # Applied by label: every server this instance creates gets the firewall from the API
        # itself, with no call per server.
        return FirewallResource(
            type=FirewallResource.TYPE_LABEL_SELECTOR,
            label_selector=FirewallResourceLabelSelector(selector=self._selector),
        )

    # --- helpers ----------------------------------------------------------------------------

    def _require_client(self) -> Client:
        if self._client is None:
            raise ProviderError(f"{self._key}: no API token; set {self._token_env}")
        return self._client

    def _owns(self, server: Server) -> bool:
        return owns_labels(server.labels, self._instance)

    def _check_list_answer(self, what: str, key: str) -> None:
        """hcloud iterates whatever the answer holds under ``key`` (a ``{}`` reads as no
        servers): the last page's answer must hold a list there."""
        response = self._last_response()
        try:
            body = response.json() if response is not None else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            raise self._env.error(f"{what}: the answer has no {key!r} list")

    def _to_proxy(self, server: Server) -> Proxy:
        if not _valid_id(server.id):
            raise ProviderError(f"{self._key}: the API listed a server without a valid id")
        created = server.created
        if not isinstance(created, datetime):
            raise ProviderError(f"{self._key}: server {server.id} has no creation time")
        if created.tzinfo is None:  # the API always sends an offset; never guess local time
            created = created.replace(tzinfo=UTC)
        ip = None
        ipv4 = server.public_net.ipv4 if server.public_net is not None else None
        if server.status not in _NOT_BOOTED and ipv4 is not None and isinstance(ipv4.ip, str):
            ip = ipv4.ip or None
        return Proxy(id=str(server.id), created_at=created.astimezone(UTC), ip=ip)

    def _proxy_rule(self) -> FirewallRule:
        rules = FirewallRules.for_proxy(self._proxy)
        return FirewallRule(
            direction=FirewallRule.DIRECTION_IN,
            protocol=FirewallRule.PROTOCOL_TCP,
            port=str(rules.port),
            source_ips=list(rules.sources),
            description="cloudproxy: the proxy port",
        )

    # --- calls, retries and errors ----------------------------------------------------------

    def _remember(self, response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        self._seen.response = response

    def _last_response(self) -> requests.Response | None:
        response: requests.Response | None = getattr(self._seen, "response", None)
        return response

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn`` with bounded retries; every failure becomes a one-line ``ProviderError``."""

        def attempt() -> T:
            self._seen.response = None  # so a transport error is never judged by a stale answer
            return fn()

        return self._env.call(what, attempt, classify=self._classify, translate=self._translate)

    def _translate(self, what: str, exc: Exception) -> Exception | None:
        if isinstance(exc, APIException):
            return self._error(what, exc)
        if isinstance(exc, requests.RequestException):
            # Not str(exc): requests quotes whole URLs and nested reprs; the kind is enough.
            return self._env.error(f"{what} failed: the API did not answer ({type(exc).__name__})")
        if isinstance(exc, AttributeError | LookupError | TypeError | ValueError):
            # hcloud indexes the answer's JSON directly: a malformed answer must fail this
            # instance, not crash the whole run with a KeyError.
            return self._env.error(
                f"{what} failed: unexpected answer from the API ({type(exc).__name__})"
            )
        return None

    def _classify(self, exc: Exception) -> Retry | None:
        if isinstance(exc, APIException):
            response = self._last_response()
            status = response.status_code if response is not None else None
            if isinstance(exc.code, int):  # hcloud's code for an error without a JSON body
                status = exc.code
            transient = exc.code in _TRANSIENT_CODES or (
                status is not None and (status == 429 or status >= 500)
            )
            if not transient:
                return None
            header = response.headers.get("Retry-After") if response is not None else None
            # Not RateLimit-Reset: Hetzner's is when the bucket is full again, while the next
            # request is allowed as soon as one token is back (a second).
            limited = exc.code == "rate_limit_exceeded" or status == 429
            return Retry(parse_retry_after(header), rate_limited=limited)
        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            return Retry()
        return None

    def _error(self, what: str, exc: APIException) -> ProviderError:
        response = self._last_response()
        status = response.status_code if response is not None else None
        code = exc.code
        if code == "unauthorized" or status == 401:
            return ProviderError(
                f"{self._key}: authentication failed (401); check {self._token_env}"
            )
        if code in _FORBIDDEN_CODES or status == 403:
            return ProviderError(
                f"{self._key}: {what}: permission denied (403 {code}); {self._token_env} "
                "must be a Read & Write API token of the project"
            )
        shown = f"HTTP {status}, {code}" if isinstance(code, str) and status else f"HTTP {code}"
        return self._env.error(f"{what} failed ({shown}): {self._env.scrub(exc.message)}")


def _grants(rules: list[FirewallRule] | None) -> frozenset[Grant]:
    """What a Hetzner firewall's rules let in; an outbound (or unreadable) rule is a grant no
    wanted rule matches, so it is repaired away."""
    found: set[Grant] = set()
    for rule in rules or []:
        span = port_range(rule.port or "") or (0, 0)
        addresses = rule.source_ips if rule.direction == FirewallRule.DIRECTION_IN else None
        for address in addresses or [f"out:{rule.destination_ips}"]:
            cidr = canonical_cidr(address) or str(address)
            found.add(Grant(str(rule.protocol), *span, cidr))
    return frozenset(found)


def _valid_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _or_none(fn: Callable[[], T]) -> T | None:
    """``fn()``, or ``None`` when the API says the resource does not exist (404)."""
    try:
        return fn()
    except APIException as exc:
        if exc.code in {"not_found", 404}:
            return None
        raise


def _make_client(token: str, endpoint: str | None, on_response: Callable[..., None]) -> Client:
    extra: dict[str, Any] = {} if endpoint is None else {"api_endpoint": endpoint.rstrip("/")}
    client = Client(
        token=token,
        application_name="cloudproxy",
        application_version=__version__,
        timeout=TIMEOUT_S,
        **extra,
    )
    # hcloud (>= 2.6) has no public switch for these: its transport retries some errors up to
    # 5 times with up to 60 s of jittered sleep each, ignoring Retry-After. Our own bounded
    # retries replace it, and the hook lets them see each answer's status and Retry-After.
    transport = client._client
    transport._retry_max_retries = 0
    transport._session.hooks["response"].append(on_response)
    return client
