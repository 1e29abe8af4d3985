"""AWS EC2 instances (boto3), optionally spot, each provider instance with its own session."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

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
    instance_labels,
    owns_labels,
    paginate,
    parse_retry_after,
)
from cloudproxy_cli.core.errors import ConfigError, FirewallMissingError, ProviderError
from cloudproxy_cli.core.model import Proxy

log = logging.getLogger("cloudproxy")

T = TypeVar("T")

PROVIDER = "aws"
# The newest Canonical Ubuntu 24.04 LTS image, when no AMI is configured.
UBUNTU_OWNER = "099720109477"  # Canonical
UBUNTU_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
PAGE_SIZE = 1000  # DescribeInstances allows 5..1000 per page
# A stopped instance is still ours and still bills for its disk: listed (without an address)
# so the engine replaces and deletes it. Shutting-down/terminated ones are going or gone.
LISTED_STATES = ("pending", "running", "stopping", "stopped")
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60

_AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "RequestExpired",
        "OptInRequired",
    }
)
_THROTTLE_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled"}
)
_INSTANCE_GONE = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
_GROUP_GONE = frozenset({"InvalidGroup.NotFound", "InvalidGroupId.Malformed"})
_SPOT_REQUEST_GONE = frozenset({"InvalidSpotInstanceRequestID.NotFound"})


class _Expected(Exception):
    """An API error the caller expects and handles (e.g. "no such instance")."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    meta = getattr(exc, "response", {}).get("ResponseMetadata", {})
    return int(meta.get("HTTPStatusCode") or 0)


def _classify(exc: Exception) -> Retry | None:
    """Throttling and 5xx answers are worth another try, as are connection failures (every
    call is idempotent: RunInstances carries a ClientToken)."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        throttled = _status(exc) == 429 or _code(exc) in _THROTTLE_CODES
        if throttled or _status(exc) >= 500:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            return Retry(parse_retry_after(headers.get("retry-after")), rate_limited=throttled)
        return None
    if isinstance(exc, HTTPClientError | BotoConnectionError):
        return Retry()
    return None


def _tags(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in item.get("Tags", [])}


def _tag_list(instance: str) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in instance_labels(instance).items()]


class AwsProvider:
    """EC2 instances tagged ``cloudproxy`` and ``cloudproxy-instance=<instance>``; implements
    ``Provider``. ``client`` is a boto3 EC2 client of this instance's own session."""

    def __init__(
        self,
        *,
        instance: str,
        client: Any,
        proxy: ProxySettings,
        size: str,
        ami: str | None = None,
        spot: bool = False,
        page_size: int = PAGE_SIZE,
        sleep: Callable[[float], None] = time.sleep,
        secrets: Iterable[str] = (),
        key_settings: str = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        ami_setting: str = "AWS_AMI",
        max_pages: int = MAX_PAGES,
    ) -> None:
        if not isinstance(spot, bool):  # the reference compared a string with a bool
            raise TypeError("spot must be a bool")
        self._instance = instance
        self._client = client
        self._proxy = proxy
        self._size = size
        self._ami = ami  # looked up once per process when not configured
        self._spot = spot
        self._page_size = page_size
        self._max_pages = max_pages
        self._key_settings = key_settings  # what to check on an auth failure
        self._ami_setting = ami_setting  # what to set when no Ubuntu image is found
        self._env = Envelope(
            f"{PROVIDER}/{instance}", tuple(s for s in (*secrets, proxy.password) if s), sleep
        )
        self._group_id: str | None = None  # from ensure_firewall, for create_proxy

    @property
    def _name(self) -> str:
        return self._env.key

    # --- Provider ---------------------------------------------------------------------------

    def list_proxies(self) -> list[Proxy]:
        filters = [
            {"Name": f"tag:{INSTANCE_KEY}", "Values": [self._instance]},
            {"Name": "tag-key", "Values": [TAG]},
            {"Name": "instance-state-name", "Values": list(LISTED_STATES)},
        ]

        # One request per page, each retried on its own: a throttled third page does not
        # fetch the first two again (which a retried paginator would).
        def fetch(token: str | None) -> tuple[list[dict[str, Any]], str | None]:
            kwargs: dict[str, Any] = {"Filters": filters, "MaxResults": self._page_size}
            if token:
                kwargs["NextToken"] = token
            page = self._call("list instances", partial(self._client.describe_instances, **kwargs))
            if not isinstance(page.get("Reservations"), list):
                # botocore reads any XML as an answer, one without a reservationSet as one
                # without reservations: EC2 always sends the set, empty or not.
                raise self._env.error("list instances: the answer has no reservation set")
            reservations = page["Reservations"]
            # EC2 lists a reservation only for the instances it matched: one without any is
            # a garbled answer, not an empty one.
            if not all(isinstance(r, dict) and r.get("Instances") for r in reservations):
                raise self._env.error(
                    "list instances: the answer has a reservation without instances"
                )
            items = [i for r in reservations for i in r["Instances"]]
            return items, page.get("NextToken") or None

        with self._env.reading("list instances"):
            return [
                self._to_proxy(item)
                for item in paginate(
                    fetch, fail=self._env.error, what="list instances", max_pages=self._max_pages
                )
                if self._instance_id(item)
                and self._is_ours(item)
                and item["State"]["Name"] in LISTED_STATES
            ]

    def create_proxy(self) -> Proxy:
        from cloudproxy_cli.adapters.user_data import render_user_data

        group_id = self._group_id or self.ensure_firewall(None)
        tags = _tag_list(self._instance)
        # Tagged in the create call itself: an instance can never exist untagged (and so
        # invisible to us, billing forever) between a create and a later CreateTags.
        tag_specs = [{"ResourceType": "instance", "Tags": tags}]
        params: dict[str, Any] = {
            "ImageId": self._image_id(),
            "InstanceType": self._size,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": render_user_data(self._proxy),  # boto3 base64-encodes it
            "SecurityGroupIds": [group_id],
            "TagSpecifications": tag_specs,
            # Makes retrying this create safe: AWS launches at most one instance per token.
            "ClientToken": str(uuid.uuid4()),
            # A shutdown from inside ends the instance rather than leaving it stopped, billing
            # for its disk.
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if self._spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
            tag_specs.append({"ResourceType": "spot-instances-request", "Tags": tags})
        try:
            reservation = self._call(
                "create an instance",
                lambda: self._client.run_instances(**params),
                passthrough=_GROUP_GONE,
            )
        except _Expected as exc:
            self._group_id = None
            raise FirewallMissingError(
                f"{self._name}: security group {group_id} no longer exists ({exc.code})"
            ) from None
        with self._env.reading("create an instance"):
            return self._to_proxy(reservation["Instances"][0])

    def delete_proxy(self, proxy_id: str) -> None:
        # Always one read first: it proves the instance is ours (AWS cannot scope a terminate
        # by tag) and names its spot request.
        guarded_delete(
            proxy_id,
            owned=set(),
            read=lambda: self._read_instance(proxy_id),
            owns=self._is_ours,
            delete=lambda item: self._terminate(proxy_id, item or {}),
            key=self._name,
            noun="instance",
        )

    def _read_instance(self, proxy_id: str) -> dict[str, Any] | None:
        """The instance, or ``None`` if unknown (or an impossible id), or already terminated."""
        try:
            found = self._call(
                f"look up instance {proxy_id}",
                lambda: self._client.describe_instances(InstanceIds=[proxy_id]),
                passthrough=_INSTANCE_GONE,
            )
        except _Expected:
            return None
        items = [i for r in found.get("Reservations", []) for i in r.get("Instances", [])]
        if not items or items[0]["State"]["Name"] == "terminated":
            return None
        item: dict[str, Any] = items[0]
        return item

    def _terminate(self, proxy_id: str, item: dict[str, Any]) -> None:
        request_id = item.get("SpotInstanceRequestId")
        if request_id:
            # Cancelled before the terminate: a request still open when its instance ends
            # could launch a replacement that nobody lists. One already gone launches nothing.
            with contextlib.suppress(_Expected):
                self._call(
                    f"cancel spot request {request_id}",
                    lambda: self._client.cancel_spot_instance_requests(
                        SpotInstanceRequestIds=[request_id]
                    ),
                    passthrough=_SPOT_REQUEST_GONE,
                )
        with contextlib.suppress(_Expected):  # gone in the meantime: what we wanted anyway
            self._call(
                f"terminate instance {proxy_id}",
                lambda: self._client.terminate_instances(InstanceIds=[proxy_id]),
                passthrough=_INSTANCE_GONE,
            )

    def ensure_firewall(self, known_id: str | None) -> str | None:
        """One DescribeSecurityGroups of the remembered group; found by name or created if
        gone; stale ingress rules revoked and missing ones authorized."""
        name = firewall_name(self._instance)
        group = None
        if known_id is not None:
            group = self._find_group(f"read security group {known_id}", GroupIds=[known_id])
        if group is None or group.get("GroupName") != name:
            # GroupNames (not a name filter) looks in the default VPC only, where RunInstances
            # without a subnet launches: a same-named group of another VPC would not fit.
            group = self._find_group(f"find security group {name}", GroupNames=[name])
        if group is None:
            group_id = self._create_group(name)
        else:
            group_id = str(group["GroupId"])
            self._repair_group(group_id, group)
        self._group_id = group_id
        return group_id

    # --- the security group -----------------------------------------------------------------

    def _find_group(self, what: str, **query: list[str]) -> dict[str, Any] | None:
        """The group ``query`` names; ``None`` if it does not exist."""
        try:
            found = self._call(
                what,
                lambda: self._client.describe_security_groups(**query),
                passthrough=_GROUP_GONE,
            )
        except _Expected:
            return None
        groups = found.get("SecurityGroups") or [None]
        group: dict[str, Any] | None = groups[0]
        return group

    def _create_group(self, name: str) -> str:
        tags = _tag_list(self._instance)
        created = self._call(
            f"create security group {name}",
            lambda: self._client.create_security_group(
                GroupName=name,
                Description=f"cloudproxy {self._name}: the proxy port only",
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
            ),
        )
        group_id = str(created["GroupId"])
        wanted = FirewallRules.for_proxy(self._proxy).grants
        self._authorize(group_id, [_permission(g) for g in sorted(wanted)])
        return group_id

    def _repair_group(self, group_id: str, group: dict[str, Any]) -> None:
        """Authorize what is missing first (never a moment with the port shut), then revoke
        every other ingress rule, each exactly as the group holds it."""
        wanted = FirewallRules.for_proxy(self._proxy).grants
        present = _ingress(group)
        missing = sorted(wanted - {grant for grant, _ in present})
        stale = [permission for grant, permission in present if grant not in wanted]
        if missing:
            self._authorize(group_id, [_permission(g) for g in missing])
        if stale:
            self._call(
                f"revoke stale rules of security group {group_id}",
                lambda: self._client.revoke_security_group_ingress(
                    GroupId=group_id, IpPermissions=stale
                ),
            )
        if missing or stale:
            log.warning(
                "%s: security group %s differed from PROXY_PORT/ONLY_HOST_IP/HOST_IP; repaired "
                "(%d rule(s) added, %d revoked)", self._name, group_id, len(missing), len(stale),
            )  # fmt: skip

    def _authorize(self, group_id: str, permissions: list[dict[str, Any]]) -> None:
        self._call(
            f"open port {self._proxy.port} in security group {group_id}",
            lambda: self._client.authorize_security_group_ingress(
                GroupId=group_id, IpPermissions=permissions
            ),
        )

    # --- helpers ----------------------------------------------------------------------------

    def _image_id(self) -> str:
        if self._ami is None:
            found = self._call(
                "find the Ubuntu 24.04 image",
                lambda: self._client.describe_images(
                    Owners=[UBUNTU_OWNER],
                    Filters=[
                        {"Name": "name", "Values": [UBUNTU_NAME]},
                        {"Name": "state", "Values": ["available"]},
                        {"Name": "architecture", "Values": ["x86_64"]},
                    ],
                ),
            )
            images = found.get("Images", [])
            if not images:
                raise self._env.error(
                    f"no Ubuntu 24.04 image found in this region; set {self._ami_setting}"
                )
            # CreationDate is ISO 8601, so the newest sorts last.
            self._ami = str(max(images, key=lambda i: str(i.get("CreationDate", "")))["ImageId"])
        return self._ami

    def _is_ours(self, item: dict[str, Any]) -> bool:
        return owns_labels(_tags(item), self._instance)

    def _instance_id(self, item: dict[str, Any]) -> str:
        """Its id; even an instance not ours without one makes the list a garbled one."""
        vm_id = item.get("InstanceId")
        if not isinstance(vm_id, str) or not vm_id:
            raise ProviderError(f"{self._name}: the API listed an instance without an id")
        return vm_id

    def _to_proxy(self, item: dict[str, Any]) -> Proxy:
        launched = item.get("LaunchTime")
        if not isinstance(launched, datetime) or launched.tzinfo is None:
            raise ProviderError(
                f"{self._name}: instance {item.get('InstanceId')} has no LaunchTime"
            )
        # Only a running instance's address is worth probing: AWS may show one while pending.
        running = item.get("State", {}).get("Name") == "running"
        ip = item.get("PublicIpAddress") if running else None
        return Proxy(
            id=self._instance_id(item),
            created_at=launched.astimezone(UTC),
            ip=ip if isinstance(ip, str) and ip else None,
        )

    def _call(
        self, what: str, fn: Callable[[], T], *, passthrough: frozenset[str] = frozenset()
    ) -> T:
        """``fn`` with bounded retries; every failure becomes a one-line ``ProviderError``,
        except an API error whose code is in ``passthrough``: ``_Expected``, for the caller."""

        def translate(what: str, exc: Exception) -> Exception | None:
            return self._translate(what, exc, passthrough)

        return self._env.call(what, fn, classify=_classify, translate=translate)

    def _translate(
        self, what: str, exc: Exception, passthrough: frozenset[str]
    ) -> Exception | None:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        from botocore.parsers import ResponseParserError

        if isinstance(
            exc, ResponseParserError | AttributeError | LookupError | TypeError | ValueError
        ):
            # botocore's parse of a malformed answer (not a BotoCoreError); its text quotes it.
            return self._env.error(f"{what} failed: the API's answer is not EC2's XML")
        if isinstance(exc, ClientError):
            if _code(exc) in passthrough:
                return _Expected(_code(exc))
            return self._client_error(what, exc)
        if isinstance(exc, NoCredentialsError):
            return self._env.error(
                "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, BotoCoreError):
            # Connection failures and the like: their text names the endpoint, never a key.
            return self._env.error(f"{what} failed ({type(exc).__name__}: {self._env.scrub(exc)})")
        return None

    def _client_error(self, what: str, exc: Exception) -> ProviderError:
        code, status = _code(exc), _status(exc)
        if code in _AUTH_CODES or status in (401, 403):
            return self._env.error(
                f"authentication failed ({code or status}); check {self._key_settings}"
            )
        message = self._env.scrub(
            str(getattr(exc, "response", {}).get("Error", {}).get("Message", ""))
        )
        gave_up = "; gave up retrying" if _classify(exc) is not None else ""
        detail = f": {message}" if message else ""
        return self._env.error(f"{what} failed ({code}, HTTP {status}){gave_up}{detail}")


def _permission(grant: Grant) -> dict[str, Any]:
    """``grant`` as one EC2 IpPermission."""
    if ipaddress.ip_network(grant.cidr).version == 6:
        ranges: dict[str, Any] = {"Ipv6Ranges": [{"CidrIpv6": grant.cidr}]}
    else:
        ranges = {"IpRanges": [{"CidrIp": grant.cidr}]}
    return {"IpProtocol": grant.protocol, "FromPort": grant.low, "ToPort": grant.high, **ranges}


# Where an IpPermission names who may connect, and the key of each entry's value.
_SOURCES = (
    ("IpRanges", "CidrIp"),
    ("Ipv6Ranges", "CidrIpv6"),
    ("UserIdGroupPairs", "GroupId"),
    ("PrefixListIds", "PrefixListId"),
)


def _ingress(group: dict[str, Any]) -> list[tuple[Grant, dict[str, Any]]]:
    """Every ingress entry of ``group``: what it grants, and the IpPermission that revokes
    exactly it (its ports as the group holds them; "-1" is every protocol and port)."""
    found = []
    for perm in group.get("IpPermissions", []):
        ports = {k: perm[k] for k in ("FromPort", "ToPort") if k in perm}
        base = {"IpProtocol": perm.get("IpProtocol"), **ports}
        low, high = int(perm.get("FromPort", -1)), int(perm.get("ToPort", -1))
        for key, field in _SOURCES:
            for entry in perm.get(key, []):
                value = str(entry.get(field))
                cidr = (canonical_cidr(value) if field.startswith("Cidr") else None) or value
                grant = Grant(str(perm.get("IpProtocol")), low, high, cidr)
                found.append((grant, {**base, key: [{field: entry.get(field)}]}))
    return found


def _quiet_sdk_logs() -> None:
    # botocore's DEBUG records carry whole signed requests: the Authorization header names the
    # access key, and a RunInstances body holds the user data with the proxy password. Nothing
    # below INFO ever leaves these loggers, whatever level the application logs at.
    for name in ("boto3", "botocore"):
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # NOTSET too: it would inherit the root's level
            logger.setLevel(logging.INFO)


def make_client(
    *,
    instance: str,
    key_id: str | None,
    secret: str | None,
    token: str | None,
    region: str,
    endpoint: str | None,
    botocore_session: Any = None,
) -> Any:
    """A boto3 EC2 client of a session of its own, with our timeouts and botocore's retries off.

    Without keys boto3's credential chain applies (environment, shared files, instance role).
    ``botocore_session`` (tests): a fresh botocore session that shares the parsed EC2 model.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    _quiet_sdk_logs()
    config = Config(
        # botocore's own retries are off: call_with_retries is the one bounded policy (and,
        # unlike botocore, it honours Retry-After). Four attempts in all.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )
    try:
        session = boto3.session.Session(
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
            region_name=region,
            botocore_session=botocore_session,
        )
        return session.client("ec2", endpoint_url=endpoint, config=config)
    except BotoCoreError as exc:  # a malformed region, an AWS_PROFILE that does not exist...
        raise ConfigError(f"{PROVIDER}/{instance}: {exc}") from None
