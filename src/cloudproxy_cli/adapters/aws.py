"""AWS EC2 instances (boto3), optionally spot, each provider instance with its own session."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from cloudproxy_cli.adapters.common import (
    TAG,
    ProxySettings,
    Retry,
    call_with_retries,
    firewall_name,
    one_line,
    parse_retry_after,
)
from cloudproxy_cli.core.errors import ConfigError, FirewallMissingError, ProviderError
from cloudproxy_cli.core.model import Proxy

if TYPE_CHECKING:
    from cloudproxy_cli.config import AwsSettings

log = logging.getLogger("cloudproxy")

T = TypeVar("T")

PROVIDER = "aws"
INSTANCE_TAG_KEY = "cloudproxy-instance"  # value: the provider instance's name
# The newest Canonical Ubuntu 24.04 LTS image, when no AMI is configured.
UBUNTU_OWNER = "099720109477"  # Canonical
UBUNTU_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
PAGE_SIZE = 1000  # DescribeInstances allows 5..1000 per page
# A stopped instance is still ours and still bills for its disk: listed (without an address)
# so the engine replaces and deletes it. Shutting-down/terminated ones are going or gone.
LISTED_STATES = ("pending", "running", "stopping", "stopped")
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
_MAX_PAGES = 1000  # a NextToken that never ends is a broken API, not a huge account

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
        if _status(exc) == 429 or _status(exc) >= 500 or _code(exc) in _THROTTLE_CODES:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            return Retry(parse_retry_after(headers.get("retry-after")))
        return None
    if isinstance(exc, HTTPClientError | BotoConnectionError):
        return Retry()
    return None


def _tags(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in item.get("Tags", [])}


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
        self._sleep = sleep
        self._secrets = tuple(s for s in secrets if s)
        self._group_id: str | None = None  # from ensure_firewall, for create_proxy

    @property
    def _name(self) -> str:
        return f"{PROVIDER}/{self._instance}"

    # --- Provider ---------------------------------------------------------------------------

    def list_proxies(self) -> list[Proxy]:
        filters = [
            {"Name": f"tag:{INSTANCE_TAG_KEY}", "Values": [self._instance]},
            {"Name": "tag-key", "Values": [TAG]},
            {"Name": "instance-state-name", "Values": list(LISTED_STATES)},
        ]
        proxies: list[Proxy] = []
        token: str | None = None
        # One request per page, each retried on its own: a throttled third page does not
        # fetch the first two again (which a retried paginator would).
        for _ in range(_MAX_PAGES):
            kwargs: dict[str, Any] = {"Filters": filters, "MaxResults": self._page_size}
            if token:
                kwargs["NextToken"] = token
            page = self._call("list instances", partial(self._client.describe_instances, **kwargs))
            for reservation in page.get("Reservations", []):
                proxies.extend(
                    self._to_proxy(item)
                    for item in reservation.get("Instances", [])
                    if self._is_ours(item) and item["State"]["Name"] in LISTED_STATES
                )
            token = page.get("NextToken")
            if not token:
                return proxies
        raise ProviderError(f"{self._name}: list instances never reached its last page")

    def create_proxy(self) -> Proxy:
        from cloudproxy_cli.adapters.user_data import render_user_data

        group_id = self._group_id or self.ensure_firewall(None)
        tags = [{"Key": TAG, "Value": "true"}, {"Key": INSTANCE_TAG_KEY, "Value": self._instance}]
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
        return self._to_proxy(reservation["Instances"][0])

    def delete_proxy(self, proxy_id: str) -> None:
        # One read first: it proves the instance is ours (AWS cannot scope a terminate by tag)
        # and names its spot request.
        try:
            found = self._call(
                f"look up instance {proxy_id}",
                lambda: self._client.describe_instances(InstanceIds=[proxy_id]),
                passthrough=_INSTANCE_GONE,
            )
        except _Expected:
            return  # unknown (or impossible) id: already gone
        items = [i for r in found.get("Reservations", []) for i in r.get("Instances", [])]
        if not items or items[0]["State"]["Name"] == "terminated":
            return
        item = items[0]
        if not self._is_ours(item):
            log.warning(
                "%s: instance %s is not one of its proxies; left alone", self._name, proxy_id
            )
            return
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
        if known_id is not None:
            self._group_id = known_id
            return known_id
        name = firewall_name(self._instance)
        try:
            # GroupNames (not a name filter) looks in the default VPC only, where RunInstances
            # without a subnet launches: a same-named group of another VPC would not fit.
            found = self._call(
                f"find security group {name}",
                lambda: self._client.describe_security_groups(GroupNames=[name]),
                passthrough=_GROUP_GONE,
            )
        except _Expected:
            group_id = self._create_group(name)
        else:
            group = found["SecurityGroups"][0]
            group_id = str(group["GroupId"])
            if not self._has_proxy_rule(group):  # e.g. a run that died between create and rule
                self._authorize(group_id)
        self._group_id = group_id
        return group_id

    # --- helpers ----------------------------------------------------------------------------

    def _create_group(self, name: str) -> str:
        tags = [{"Key": TAG, "Value": "true"}, {"Key": INSTANCE_TAG_KEY, "Value": self._instance}]
        created = self._call(
            f"create security group {name}",
            lambda: self._client.create_security_group(
                GroupName=name,
                Description=f"cloudproxy {self._name}: the proxy port only",
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
            ),
        )
        group_id = str(created["GroupId"])
        self._authorize(group_id)
        return group_id

    def _proxy_rule(self) -> dict[str, Any]:
        rule: dict[str, Any] = {
            "IpProtocol": "tcp",
            "FromPort": self._proxy.port,
            "ToPort": self._proxy.port,
        }
        allowed = self._proxy.allowed_ip
        if allowed is not None and ipaddress.ip_address(allowed).version == 6:
            rule["Ipv6Ranges"] = [{"CidrIpv6": f"{allowed}/128"}]
        else:
            cidr = f"{allowed}/32" if allowed is not None else "0.0.0.0/0"
            rule["IpRanges"] = [{"CidrIp": cidr}]
        return rule

    def _has_proxy_rule(self, group: dict[str, Any]) -> bool:
        wanted = self._proxy_rule()
        ranges_key = "Ipv6Ranges" if "Ipv6Ranges" in wanted else "IpRanges"
        cidr_key = "CidrIpv6" if ranges_key == "Ipv6Ranges" else "CidrIp"
        cidr = wanted[ranges_key][0][cidr_key]
        return any(
            perm.get("IpProtocol") == "tcp"
            and perm.get("FromPort") == self._proxy.port
            and perm.get("ToPort") == self._proxy.port
            and any(r.get(cidr_key) == cidr for r in perm.get(ranges_key, []))
            for perm in group.get("IpPermissions", [])
        )

    def _authorize(self, group_id: str) -> None:
        rule = self._proxy_rule()
        self._call(
            f"open port {self._proxy.port} in security group {group_id}",
            lambda: self._client.authorize_security_group_ingress(
                GroupId=group_id, IpPermissions=[rule]
            ),
        )

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
                from cloudproxy_cli.config import env_name

                raise ProviderError(
                    f"{self._name}: no Ubuntu 24.04 image found in this region; "
                    f"set {env_name(PROVIDER, self._instance, 'ami')}"
                )
            # CreationDate is ISO 8601, so the newest sorts last.
            self._ami = str(max(images, key=lambda i: str(i.get("CreationDate", "")))["ImageId"])
        return self._ami

    def _is_ours(self, item: dict[str, Any]) -> bool:
        tags = _tags(item)
        return TAG in tags and tags.get(INSTANCE_TAG_KEY) == self._instance

    def _to_proxy(self, item: dict[str, Any]) -> Proxy:
        launched = item.get("LaunchTime")
        if not isinstance(launched, datetime) or launched.tzinfo is None:
            raise ProviderError(
                f"{self._name}: instance {item.get('InstanceId')} has no LaunchTime"
            )
        # Only a running instance's address is worth probing: AWS may show one while pending.
        running = item.get("State", {}).get("Name") == "running"
        ip = item.get("PublicIpAddress") if running else None
        return Proxy(id=str(item["InstanceId"]), created_at=launched.astimezone(UTC), ip=ip or None)

    def _call(
        self, what: str, fn: Callable[[], T], *, passthrough: frozenset[str] = frozenset()
    ) -> T:
        """``fn`` with bounded retries; every failure becomes a one-line ``ProviderError``,
        except an API error whose code is in ``passthrough``: ``_Expected``, for the caller."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return call_with_retries(
                fn, what=f"{self._name}: {what}", classify=_classify, sleep=self._sleep
            )
        except ClientError as exc:
            if _code(exc) in passthrough:
                raise _Expected(_code(exc)) from None
            raise self._client_error(what, exc) from None
        except NoCredentialsError:
            raise ProviderError(
                f"{self._name}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY"
            ) from None
        except BotoCoreError as exc:
            # Connection failures and the like: their text names the endpoint, never a key.
            raise ProviderError(
                f"{self._name}: {what} failed ({type(exc).__name__}: {self._oneline(str(exc))})"
            ) from None

    def _client_error(self, what: str, exc: Exception) -> ProviderError:
        from cloudproxy_cli.config import env_name

        code, status = _code(exc), _status(exc)
        if code in _AUTH_CODES or status in (401, 403):
            key = env_name(PROVIDER, self._instance, "access_key_id")
            secret = env_name(PROVIDER, self._instance, "secret_access_key")
            return ProviderError(
                f"{self._name}: authentication failed ({code or status}); check {key}/{secret}"
            )
        message = self._oneline(
            str(getattr(exc, "response", {}).get("Error", {}).get("Message", ""))
        )
        gave_up = "; gave up retrying" if _classify(exc) is not None else ""
        detail = f": {message}" if message else ""
        return ProviderError(
            f"{self._name}: {what} failed ({code}, HTTP {status}){gave_up}{detail}"
        )

    def _oneline(self, text: str) -> str:
        return one_line(text, self._secrets)


def _quiet_sdk_logs() -> None:
    # botocore's DEBUG records carry whole signed requests: the Authorization header names the
    # access key, and a RunInstances body holds the user data with the proxy password. Nothing
    # below INFO ever leaves these loggers, whatever level the application logs at.
    for name in ("boto3", "botocore"):
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:  # NOTSET too: it would inherit the root's level
            logger.setLevel(logging.INFO)


def from_settings(
    *, instance: str, settings: AwsSettings, proxy: ProxySettings, **kwargs: Any
) -> AwsProvider:
    """An adapter for one instance, with a boto3 session and EC2 client of its own.

    Explicit keys are used when given (the ``default`` instance's, when they are the
    environment's own AWS_ACCESS_KEY_ID, with its AWS_SESSION_TOKEN); only the ``default``
    instance may do without, through boto3's credential chain (environment, shared files,
    instance role). The endpoint is ``api_endpoint`` if set, else whatever boto3 itself is
    configured with (``AWS_ENDPOINT_URL_EC2``, ``AWS_ENDPOINT_URL``, ``endpoint_url`` in
    ~/.aws/config), else AWS.
    ``kwargs`` (tests): ``page_size``, ``sleep``, and ``botocore_session``: a fresh botocore
    session for this instance alone (tests give one that shares the parsed EC2 service model,
    which costs ~0.4 s to load per session); the keys are still set on it here.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    from cloudproxy_cli.config import DEFAULT_INSTANCE, env_name

    key_id = settings.access_key_id.get_secret_value() if settings.access_key_id else None
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    key_var = env_name(PROVIDER, instance, "access_key_id")
    secret_var = env_name(PROVIDER, instance, "secret_access_key")
    if (key_id is None) != (secret is None):
        raise ConfigError(f"{key_var}/{secret_var}: set both or neither")
    if key_id is None and instance != DEFAULT_INSTANCE:
        # Another account's (or the environment's) keys would create proxies in the wrong account.
        raise ConfigError(f"{key_var}/{secret_var}: required for {PROVIDER}/{instance}")
    token = None
    if instance == DEFAULT_INSTANCE and key_id is not None and os.environ.get(key_var) == key_id:
        # AWS_ACCESS_KEY_ID is both our setting and boto3's: temporary keys from the
        # environment (aws-vault, SSO exports) work only with the environment's session token.
        token = os.environ.get("AWS_SESSION_TOKEN") or None
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
            region_name=settings.region,
            botocore_session=kwargs.pop("botocore_session", None),
        )
        client = session.client("ec2", endpoint_url=settings.api_endpoint, config=config)
    except BotoCoreError as exc:  # a malformed region, an AWS_PROFILE that does not exist...
        raise ConfigError(f"{PROVIDER}/{instance}: {exc}") from None
    return AwsProvider(
        instance=instance,
        client=client,
        proxy=proxy,
        size=settings.size,
        ami=settings.ami,
        spot=settings.spot,
        secrets=[s for s in (key_id, secret, token, proxy.password) if s],
        **kwargs,
    )
