"""Google Compute Engine proxies through google-cloud-compute (REST transport)."""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from cloudproxy_cli.adapters.common import (
    INSTANCE_KEY,
    MAX_PAGES,
    TAG,
    Envelope,
    FirewallRules,
    Grant,
    ProxySettings,
    Retry,
    canonical_cidr,
    firewall_name,
    guarded_delete,
    instance_tag,
    owns_labels,
    paginate,
    parse_retry_after,
    port_range,
    utc_datetime,
    vm_name,
)
from cloudproxy_cli.core.errors import ConfigError, ProviderError
from cloudproxy_cli.core.model import Proxy

if TYPE_CHECKING:
    from google.cloud import compute_v1
    from google.oauth2 import service_account

log = logging.getLogger("cloudproxy")

T = TypeVar("T")

PROVIDER = "gcp"
NETWORK = "global/networks/default"
CALL_TIMEOUT_S = 30.0
# Bounded waits for insert/delete: past this the operation keeps running on Google's side and
# the next run's list shows how it ended.
OPERATION_TIMEOUT_S = 180.0
MAX_WAITS = 5
PAGE_SIZE = 500  # the API's maximum maxResults
RETRIED_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# Instance, firewall and network-tag names (RFC 1035 labels, at most 63 characters).
GCE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
GCE_NAME_MAX = 63
# The instance label of the VMs this adapter creates: underscored, a key the list filter grammar
# certainly accepts. VMs made before carry the shared hyphenated key, and stay ours.
GCP_INSTANCE_KEY = "cloudproxy_instance"
LIST_KIND = "compute#instanceList"  # what every instances.list answer says it is
LEGACY_INSTANCE_KEY = INSTANCE_KEY


@dataclass(frozen=True, slots=True)
class GcpMachine:
    """What every VM of one instance is made of, and where."""

    zone: str
    size: str
    image_project: str
    image_family: str
    spot: bool = False


class GcpProvider:
    """The proxies of one GCP instance: VMs in ``project``/``zone`` labelled ``cloudproxy=true``
    and ``cloudproxy_instance=<instance>`` (or, made by an earlier version,
    ``cloudproxy-instance=<instance>``), with the network tag its firewall targets."""

    def __init__(
        self,
        *,
        instance: str,
        machine: GcpMachine,
        proxy: ProxySettings,
        project: str,
        credentials: service_account.Credentials,
        credentials_hint: str,
        endpoint: str | None = None,
        secrets: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
        max_pages: int = MAX_PAGES,
    ) -> None:
        from google.cloud import compute_v1

        self._instance = instance
        self._machine = machine
        self._proxy = proxy
        self._project = project
        self._zone = machine.zone
        self._tag = instance_tag(instance)
        self._labels = {TAG: "true", GCP_INSTANCE_KEY: instance}
        self._hint = credentials_hint  # which settings hold the key, for auth errors
        self._max_pages = max_pages
        self._env = Envelope(
            f"{PROVIDER}/{instance}",
            tuple(s for s in (*secrets, proxy.password) if s),
            sleep,
        )
        self._key = self._env.key
        # Names of VMs this object has seen carrying both labels: deleting those needs no GET.
        self._owned: set[str] = set()
        endpoint = endpoint.rstrip("/") if endpoint else None
        options = {"api_endpoint": endpoint} if endpoint else None
        # One set of clients per provider instance, all with this instance's credentials and
        # endpoint (the SDK's own operation poller would ignore the endpoint, see _wait).
        self._instances = compute_v1.InstancesClient(
            credentials=credentials, client_options=options, transport="rest"
        )
        self._zone_operations = compute_v1.ZoneOperationsClient(
            credentials=credentials, client_options=options, transport="rest"
        )
        self._firewalls = compute_v1.FirewallsClient(
            credentials=credentials, client_options=options, transport="rest"
        )
        self._global_operations = compute_v1.GlobalOperationsClient(
            credentials=credentials, client_options=options, transport="rest"
        )

    # --- the Provider protocol -----------------------------------------------------------

    def list_proxies(self) -> list[Proxy]:
        def fetch(token: str | None) -> tuple[Iterable[compute_v1.Instance], str | None]:
            page = self._call("list", functools.partial(self._list_page, token or ""))
            if page.kind != LIST_KIND:
                # The SDK reads any JSON object as a list, `{}` as an empty one: only the
                # API's own kind tells an empty list from an answer that is not one.
                raise self._env.error("list failed: the API's answer is not an instance list")
            return page.items, page.next_page_token or None

        # The filter is the server's; ownership is checked here too, so a filter the server
        # misread could never hand us someone else's VM.
        with self._env.reading("list"):
            proxies = [
                self._to_proxy(vm)
                for vm in paginate(
                    fetch, fail=self._env.error, what="list", max_pages=self._max_pages
                )
                if self._named(vm) and self._is_ours(vm.labels)
            ]
        self._owned = {p.id for p in proxies}
        return proxies

    def create_proxy(self) -> Proxy:
        from google.cloud import compute_v1

        from cloudproxy_cli.adapters.user_data import render_user_data

        try:
            script = render_user_data(self._proxy)
        except ValueError:
            # Its message may quote the credentials: say which step failed, not the values.
            raise ProviderError(f"{self._key}: invalid proxy settings for the user data") from None
        # cloudproxy-<instance>-<random>: a valid name (the tag was validated) of <= 63 chars.
        name = vm_name(self._instance, max_len=GCE_NAME_MAX)
        s = self._machine
        resource = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{self._zone}/machineTypes/{s.size}",
            labels=self._labels,
            tags=compute_v1.Tags(items=[self._tag]),
            metadata=compute_v1.Metadata(
                items=[compute_v1.Items(key="startup-script", value=script)]
            ),
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    type_="PERSISTENT",
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=f"projects/{s.image_project}/global/images/family/"
                        f"{s.image_family}"
                    ),
                )
            ],
            network_interfaces=[
                compute_v1.NetworkInterface(
                    network=NETWORK,
                    access_configs=[
                        compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")
                    ],
                )
            ],
        )
        if s.spot is True:
            resource.scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT", instance_termination_action="DELETE"
            )
        # The same requestId on every retry: Compute Engine runs a repeated insert only once,
        # so a lost response cannot become a second VM.
        request = compute_v1.InsertInstanceRequest(
            project=self._project,
            zone=self._zone,
            instance_resource=resource,
            request_id=str(uuid.uuid4()),
        )
        operation = self._call(
            "create",
            lambda: self._instances.insert_unary(
                request=request, retry=None, timeout=CALL_TIMEOUT_S
            ),
        )
        self._owned.add(name)
        done = self._wait(operation, "create", zonal=True)
        with self._env.reading("create"):
            created = _parse_time(done.insert_time) if done.insert_time else datetime.now(UTC)
        return Proxy(id=name, created_at=created)

    def delete_proxy(self, proxy_id: str) -> None:
        if not GCE_NAME.fullmatch(proxy_id):
            raise self._env.error(f"{proxy_id!r} is not a Compute Engine instance name")
        guarded_delete(
            proxy_id,
            owned=self._owned,
            read=lambda: self._call_or_none(
                "delete",
                lambda: self._instances.get(
                    project=self._project,
                    zone=self._zone,
                    instance=proxy_id,
                    retry=None,
                    timeout=CALL_TIMEOUT_S,
                ),
            ),
            owns=lambda vm: self._is_ours(vm.labels),
            delete=lambda _: self._delete(proxy_id),
            key=self._key,
            noun="instance",
        )

    def _delete(self, proxy_id: str) -> None:
        from google.cloud import compute_v1

        request = compute_v1.DeleteInstanceRequest(
            project=self._project, zone=self._zone, instance=proxy_id, request_id=str(uuid.uuid4())
        )
        operation = self._call_or_none(
            "delete",
            lambda: self._instances.delete_unary(
                request=request, retry=None, timeout=CALL_TIMEOUT_S
            ),
        )
        self._owned.discard(proxy_id)
        if operation is not None:
            self._wait(operation, "delete", zonal=True, gone_ok=True)

    def ensure_firewall(self, known_id: str | None) -> str | None:
        """One GET of the rule ``cloudproxy-<instance>`` (its name is its id); inserted if
        gone, replaced (an update) if it differs from ours in any way that matters."""
        from google.api_core import exceptions as api_exceptions

        name = firewall_name(self._instance)
        found = self._call_or_none(
            "firewall lookup",
            lambda: self._firewalls.get(
                project=self._project, firewall=name, retry=None, timeout=CALL_TIMEOUT_S
            ),
        )
        if found is not None:
            if not self._firewall_ok(found):
                self._repair_firewall(name)
            return name
        request = self._firewall_request(name, "InsertFirewallRequest")
        try:
            operation = self._call(
                "firewall create",
                lambda: self._firewalls.insert_unary(
                    request=request, retry=None, timeout=CALL_TIMEOUT_S
                ),
                passthrough=(api_exceptions.Conflict,),
            )
        except api_exceptions.Conflict:
            return name  # another run created it meanwhile
        self._wait(operation, "firewall create", zonal=False)
        return name

    # --- firewall ------------------------------------------------------------------------

    def _firewall_resource(self, name: str) -> compute_v1.Firewall:
        from google.cloud import compute_v1

        rules = FirewallRules.for_proxy(self._proxy)
        return compute_v1.Firewall(
            name=name,
            description=f"cloudproxy {self._instance}: the proxy port of its VMs",
            network=NETWORK,
            direction="INGRESS",
            allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=[str(rules.port)])],
            source_ranges=list(rules.sources),
            target_tags=[self._tag],
        )

    def _firewall_request(self, name: str, kind: str) -> Any:
        """An insert or update request carrying the whole rule as we want it."""
        from google.cloud import compute_v1

        fields: dict[str, Any] = {
            "project": self._project,
            "firewall_resource": self._firewall_resource(name),
            "request_id": str(uuid.uuid4()),  # a retried request runs once
        }
        if kind == "UpdateFirewallRequest":
            fields["firewall"] = name
        return getattr(compute_v1, kind)(**fields)

    def _firewall_ok(self, found: compute_v1.Firewall) -> bool:
        """Ingress, enabled, our tag its only target, no other source kind, and exactly our
        grants (an allowed entry without ports is every port)."""
        grants = set()
        for allowed in found.allowed:
            spans = [port_range(p) or (-1, -1) for p in allowed.ports] or [(1, 65535)]
            for span in spans:
                for source in found.source_ranges:
                    cidr = canonical_cidr(source) or str(source)
                    grants.add(Grant(allowed.I_p_protocol, *span, cidr))
        return (
            found.direction == "INGRESS"
            and not found.disabled
            and not found.denied
            and not found.source_tags
            and not found.source_service_accounts
            and list(found.target_tags) == [self._tag]
            and FirewallRules.for_proxy(self._proxy).holds(grants)
        )

    def _repair_firewall(self, name: str) -> None:
        log.warning(
            "%s: firewall rule %s differs from PROXY_PORT/ONLY_HOST_IP/HOST_IP or its target; "
            "repairing it", self._key, name,
        )  # fmt: skip
        request = self._firewall_request(name, "UpdateFirewallRequest")
        operation = self._call(
            "firewall repair",
            lambda: self._firewalls.update_unary(
                request=request, retry=None, timeout=CALL_TIMEOUT_S
            ),
        )
        self._wait(operation, "firewall repair", zonal=False)

    # --- calls, retries, errors ----------------------------------------------------------

    def _list_page(self, token: str) -> compute_v1.InstanceList:
        from google.cloud import compute_v1

        request = compute_v1.ListInstancesRequest(
            project=self._project,
            zone=self._zone,
            # Only the plain key: the hyphenated instance key of older VMs may not parse in a
            # filter, and both keys are read below, so every cloudproxy VM of the zone is
            # listed and each instance keeps its own (one request, as before).
            filter=f'labels.{TAG} = "true"',
            max_results=PAGE_SIZE,
        )
        if token:
            request.page_token = token
        pager = self._instances.list(request=request, retry=None, timeout=CALL_TIMEOUT_S)
        # Only the first page: the pager would fetch the next ones outside our retries.
        return next(iter(pager.pages))

    def _call(
        self, what: str, fn: Callable[[], T], *, passthrough: tuple[type[Exception], ...] = ()
    ) -> T:
        """``fn`` with bounded retries of 429/5xx; every API failure a one-line, scrubbed
        ProviderError, except those of a ``passthrough`` type, raised as they are for the
        caller. The SDK's own retry is off (``retry=None`` on each call) so the two never
        multiply."""

        def translate(what: str, exc: Exception) -> Exception | None:
            return exc if isinstance(exc, passthrough) else self._error(what, exc)

        return self._env.call(what, fn, classify=_classify, translate=translate)

    def _call_or_none(self, what: str, fn: Callable[[], T]) -> T | None:
        """Like ``_call``, but a 404 (the resource is gone) is ``None``."""
        from google.api_core import exceptions as api_exceptions

        try:
            return self._call(what, fn, passthrough=(api_exceptions.NotFound,))
        except api_exceptions.NotFound:
            return None

    def _error(self, what: str, exc: Exception) -> Exception | None:
        from google.api_core import exceptions as api_exceptions
        from google.auth import exceptions as auth_exceptions
        from google.protobuf.json_format import ParseError  # type: ignore[import-untyped]
        from requests import RequestException

        hint = f"check {self._hint}"
        env = self._env
        if isinstance(exc, ParseError | AttributeError | LookupError | TypeError | ValueError):
            # The SDK's parse of a malformed answer (or a request built from one); its text
            # may quote the answer.
            return env.error(f"{what} failed: the API's answer could not be parsed")
        if isinstance(exc, api_exceptions.Unauthorized):
            return env.error(f"authentication failed (401); {hint}")
        if isinstance(exc, api_exceptions.Forbidden):
            return env.error(
                f"{what} refused (403): {self._server_message(exc)}; {hint} and the"
                " service account's roles (Compute Instance Admin, Compute Security Admin)"
            )
        if isinstance(exc, api_exceptions.GoogleAPICallError):
            return env.error(f"{what} failed ({exc.code}): {self._server_message(exc)}")
        if isinstance(exc, auth_exceptions.GoogleAuthError):
            return env.error(f"authentication failed ({type(exc).__name__}); {hint}")
        if isinstance(exc, RequestException):
            return env.error(
                f"{what} failed: cannot reach the Compute Engine API ({type(exc).__name__})"
            )
        return None  # a bug of ours or the SDK's: keep its traceback as it is

    def _server_message(self, exc: Any) -> str:
        """The API's own message, scrubbed, without the method and URL the SDK puts first."""
        try:
            message = exc.response.json()["error"]["message"]
        except (AttributeError, ValueError, KeyError, TypeError):
            message = exc.message
        return self._env.scrub(message, limit=300)

    def _wait(
        self, operation: compute_v1.Operation, what: str, *, zonal: bool, gone_ok: bool = False
    ) -> compute_v1.Operation:
        """Wait (bounded) for an operation with this instance's own clients. The SDK's
        ``ExtendedOperation.result()`` polls through a client it builds without our endpoint,
        so insert/delete are called as ``*_unary`` and waited for here."""
        from google.cloud import compute_v1

        deadline = time.monotonic() + OPERATION_TIMEOUT_S
        waits = 0
        # ``status`` is an enum (Operation.Status), not the string the JSON carries.
        while operation.status != compute_v1.Operation.Status.DONE:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or waits == MAX_WAITS:
                log.warning(
                    "%s: %s still %s after %d waits; the next run will see how it ended",
                    self._key,
                    what,
                    getattr(operation.status, "name", "PENDING"),
                    waits,
                )
                return operation
            waits += 1
            operation = self._call(
                f"{what} (waiting)",
                functools.partial(self._wait_once, operation.name, remaining, zonal=zonal),
            )
        errors = list(operation.error.errors)
        if errors and not (gone_ok and errors[0].code == "RESOURCE_NOT_FOUND"):
            first = errors[0]
            raise ProviderError(
                f"{self._key}: {what} failed: {first.code}: {self._env.scrub(first.message)}"
            )
        return operation

    def _wait_once(self, name: str, timeout: float, *, zonal: bool) -> compute_v1.Operation:
        if zonal:
            return self._zone_operations.wait(
                project=self._project,
                zone=self._zone,
                operation=name,
                retry=None,
                timeout=timeout,
            )
        return self._global_operations.wait(
            project=self._project, operation=name, retry=None, timeout=timeout
        )

    # --- small helpers -------------------------------------------------------------------

    def _is_ours(self, labels: Any) -> bool:
        found = dict(labels)
        if GCP_INSTANCE_KEY in found:  # the current key decides, whatever an old one says
            found[LEGACY_INSTANCE_KEY] = found.pop(GCP_INSTANCE_KEY)
        return owns_labels(found, self._instance, tag_value="true")

    def _named(self, vm: compute_v1.Instance) -> bool:
        """True; even a VM not ours without a valid name makes the list a garbled one."""
        if not GCE_NAME.fullmatch(vm.name):
            raise self._env.error("list failed: the API listed an instance without a valid name")
        return True

    def _to_proxy(self, vm: compute_v1.Instance) -> Proxy:
        if not vm.creation_timestamp:
            raise ProviderError(f"{self._key}: list failed: {vm.name} has no creationTimestamp")
        ip = None
        if vm.network_interfaces and vm.network_interfaces[0].access_configs:
            ip = vm.network_interfaces[0].access_configs[0].nat_i_p or None
        return Proxy(id=vm.name, created_at=_parse_time(vm.creation_timestamp), ip=ip)


def load_credentials(
    *, key: str | None, path: str | None, key_var: str, file_var: str, instance: str
) -> service_account.Credentials:
    """Service-account credentials from the key's JSON text (``key``, set as ``key_var``) or
    its file (``path``, set as ``file_var``), never discovered: without one of them, nothing
    may go looking on a metadata server."""
    from google.oauth2 import service_account

    # google-auth leaves these two constructors unannotated.
    from_info = service_account.Credentials.from_service_account_info
    from_file = service_account.Credentials.from_service_account_file
    credentials: service_account.Credentials
    if key is not None and path is not None:
        raise ConfigError(f"{key_var} and {file_var}: set one of them for gcp/{instance}, not both")
    if key is not None:
        try:
            info = json.loads(key)
        except ValueError:
            raise ConfigError(f"{key_var}: not valid JSON (paste the key file's content)") from None
        if not isinstance(info, dict):
            raise ConfigError(f"{key_var}: not a service account key (a JSON object)")
        try:
            credentials = from_info(info)  # type: ignore[no-untyped-call]
        except (ValueError, KeyError) as exc:
            # The library's messages may quote the key; name only the kind of problem.
            raise ConfigError(
                f"{key_var}: not a usable service account key ({type(exc).__name__})"
            ) from None
        return credentials
    if path is not None:
        try:
            credentials = from_file(path)  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise ConfigError(f"{file_var}: cannot read {path}: {exc.strerror or exc}") from None
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{file_var}: {path} is not a usable service account key ({type(exc).__name__})"
            ) from None
        return credentials
    raise ConfigError(
        f"{key_var} or {file_var}: gcp/{instance} needs a service account key"
        " (its JSON text, or the path of its file)"
    )


def _classify(exc: Exception) -> Retry | None:
    from google.api_core import exceptions as api_exceptions
    from requests import ConnectionError as RequestsConnectionError
    from requests import Timeout

    if isinstance(exc, RequestsConnectionError | Timeout):
        return Retry()
    if not isinstance(exc, api_exceptions.GoogleAPICallError):
        return None
    code = exc.code or 0
    rate_limited = code == 403 and bool(RETRIED_REASONS & _reasons(exc))
    if code == 429 or code >= 500 or rate_limited:
        response = exc.response
        header = response.headers.get("Retry-After") if response is not None else None
        return Retry(parse_retry_after(header), rate_limited=rate_limited or code == 429)
    return None


def _reasons(exc: Any) -> set[str]:
    return {str(e.get("reason")) for e in exc.errors if isinstance(e, dict)}


def _parse_time(text: str) -> datetime:
    # RFC 3339 with an offset (Compute Engine answers in Pacific time), reported in UTC.
    return utc_datetime(text)
