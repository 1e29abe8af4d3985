"""Settings to adapters: each factory hands its adapter plain values read from the settings.

Imported only when an instance is built; each factory imports its own adapter (and SDK) lazily,
so a DigitalOcean-only run never loads boto3 or google-cloud.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudproxy_cli.adapters.common import ProxySettings, instance_tag
from cloudproxy_cli.config import (
    DEFAULT_INSTANCE,
    AwsSettings,
    DigitalOceanSettings,
    GcpSettings,
    HetznerSettings,
    LocalSettings,
    Settings,
    VultrSettings,
    env_name,
)
from cloudproxy_cli.core.errors import ConfigError

if TYPE_CHECKING:
    import requests

    from cloudproxy_cli.adapters.aws import AwsProvider
    from cloudproxy_cli.adapters.digitalocean import DigitalOceanProvider
    from cloudproxy_cli.adapters.gcp import GcpProvider
    from cloudproxy_cli.adapters.hetzner import HetznerProvider
    from cloudproxy_cli.adapters.local import LocalProvider
    from cloudproxy_cli.adapters.vultr import VultrProvider


def proxy_settings(settings: Settings) -> ProxySettings:
    """What the user data of every cloud VM deploys, validated; ``ConfigError`` naming the
    setting otherwise."""
    from cloudproxy_cli.adapters.user_data import checked_proxy_settings

    username, password = settings.proxy_credentials()
    return checked_proxy_settings(
        port=settings.proxy_port,
        username=username,
        password=password,
        allow_open_proxy=settings.allow_open_proxy,
        only_host_ip=settings.only_host_ip,
        host_ip=settings.host_ip,
    )


def local_proxy_settings(settings: Settings) -> ProxySettings:
    """What a local proxy runs with: the credentials only (it never leaves this machine)."""
    username, password = settings.proxy_credentials()
    return ProxySettings(port=settings.proxy_port, username=username, password=password)


def _endpoint(configured: str | None, environ: Mapping[str, str] | None, var: str) -> str | None:
    """``api_endpoint`` if set, else the SDK's own variable ``var``, else ``None``."""
    env = os.environ if environ is None else environ
    return configured or env.get(var, "").strip() or None


def local(
    *, instance: str, settings: LocalSettings, proxy: ProxySettings, state_dir: Path
) -> LocalProvider:
    """The local inventory lives beside the state file, one directory per instance."""
    from cloudproxy_cli.adapters.local import LocalProvider

    return LocalProvider(
        instance=instance,
        directory=state_dir / "local" / instance,
        username=proxy.username,
        password=proxy.password,
        boot_delay_s=settings.boot_delay,
    )


def digitalocean(
    *,
    instance: str,
    settings: DigitalOceanSettings,
    proxy: ProxySettings,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    page_size: int | None = None,
) -> DigitalOceanProvider:
    """Endpoint: ``api_endpoint``, else ``$DIGITALOCEAN_END_POINT`` (python-digitalocean's own
    variable), else the real API. ``environ``, ``sleep`` and ``page_size`` are test seams."""
    from cloudproxy_cli.adapters import digitalocean as do

    # A token pasted with its newline would make an invalid header, reported as unreachable.
    token = settings.access_token.get_secret_value().strip() if settings.access_token else None
    endpoint = _endpoint(settings.api_endpoint, environ, do.ENDPOINT_ENV) or do.DEFAULT_ENDPOINT
    return do.DigitalOceanProvider(
        instance=instance,
        token=token,
        token_env=env_name(do.PROVIDER, instance, "access_token"),
        endpoint=endpoint,
        region=settings.region,
        size=settings.size,
        image=settings.image,
        proxy=proxy,
        sleep=sleep,
        page_size=page_size or do.PAGE_SIZE,
    )


def vultr(
    *,
    instance: str,
    settings: VultrSettings,
    proxy: ProxySettings,
    environ: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    page_size: int | None = None,
) -> VultrProvider:
    """Endpoint: ``api_endpoint``, else ``$VULTR_API_ENDPOINT``, else the real API.
    ``environ``, ``session``, ``sleep`` and ``page_size`` are test seams."""
    from cloudproxy_cli.adapters import vultr as v

    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    return v.VultrProvider(
        instance=instance,
        token=token,
        token_env=env_name(v.PROVIDER, instance, "api_token"),
        endpoint=_endpoint(settings.api_endpoint, environ, v.ENDPOINT_ENV) or v.DEFAULT_ENDPOINT,
        region=settings.region,
        plan=settings.plan,
        os_id=settings.os_id,
        proxy=proxy,
        session=session,
        sleep=sleep,
        page_size=page_size or v.PAGE_SIZE,
    )


def hetzner(
    *,
    instance: str,
    settings: HetznerSettings,
    proxy: ProxySettings,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> HetznerProvider:
    """Endpoint: ``api_endpoint``, else ``$HETZNER_API_ENDPOINT``, else the real API.
    ``environ`` and ``sleep`` are test seams."""
    from cloudproxy_cli.adapters import hetzner as h

    token = settings.access_token.get_secret_value() if settings.access_token else None
    return h.HetznerProvider(
        instance=instance,
        token=token or None,
        token_env=env_name(h.PROVIDER, instance, "access_token"),
        endpoint=_endpoint(settings.api_endpoint, environ, h.ENDPOINT_ENV),
        location=settings.location,
        server_type=settings.size,
        image=settings.image,
        proxy=proxy,
        sleep=sleep,
    )


def gcp(
    *,
    instance: str,
    settings: GcpSettings,
    proxy: ProxySettings,
    environ: Mapping[str, str] | None = None,  # unused: GCP reads no variable of its own
    **seams: Any,
) -> GcpProvider:
    """``seams`` (tests): ``sleep`` for retry delays, ``max_pages``."""
    from cloudproxy_cli.adapters import gcp as g

    if not g.GCE_NAME.fullmatch(instance_tag(instance)):
        raise ConfigError(
            f"gcp/{instance}: the instance name must make {instance_tag(instance)!r} a valid"
            " Compute Engine name (at most 52 characters, not ending in '-')"
        )
    key_var = env_name(g.PROVIDER, instance, "service_account_key")
    file_var = env_name(g.PROVIDER, instance, "sa_json")
    key = settings.service_account_key.get_secret_value() if settings.service_account_key else None
    credentials = g.load_credentials(
        key=key, path=settings.sa_json, key_var=key_var, file_var=file_var, instance=instance
    )
    project = settings.project or credentials.project_id
    if not project:
        raise ConfigError(
            f"{env_name(g.PROVIDER, instance, 'project')}: required for gcp/{instance}"
            " (the service account key names no project_id)"
        )
    machine = g.GcpMachine(
        zone=settings.zone,
        size=settings.size,
        image_project=settings.image_project,
        image_family=settings.image_family,
        spot=settings.spot is True,
    )
    return g.GcpProvider(
        instance=instance,
        machine=machine,
        proxy=proxy,
        project=project,
        credentials=credentials,
        credentials_hint=f"{key_var} or {file_var}",
        endpoint=settings.api_endpoint,
        secrets=_key_secrets(key, settings.sa_json),
        **seams,
    )


def _key_secrets(key: str | None, path: str | None) -> tuple[str, ...]:
    """What of a service-account key must never be shown: its text, its id, its private key
    and each line of it (an error may quote one)."""
    text = key
    if text is None and path is not None:
        try:  # read once already, by load_credentials
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            text = None
    try:
        info = json.loads(text) if text else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    pem = str(info.get("private_key", ""))
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    found = [text or "", pem, str(info.get("private_key_id", "")), *lines]
    return tuple(s for s in found if s)


def aws(
    *,
    instance: str,
    settings: AwsSettings,
    proxy: ProxySettings,
    environ: Mapping[str, str] | None = None,
    **seams: Any,
) -> AwsProvider:
    """An adapter with a boto3 session and EC2 client of its own.

    Explicit keys are used when given (the ``default`` instance's, when they are the
    environment's own AWS_ACCESS_KEY_ID, with its AWS_SESSION_TOKEN); only the ``default``
    instance may do without, through boto3's credential chain (environment, shared files,
    instance role). The endpoint is ``api_endpoint`` if set, else whatever boto3 itself is
    configured with (``AWS_ENDPOINT_URL_EC2``, ``AWS_ENDPOINT_URL``, ``endpoint_url`` in
    ~/.aws/config), else AWS.
    ``seams`` (tests): ``page_size``, ``sleep``, ``max_pages``, and ``botocore_session``: a
    fresh botocore session for this instance alone (tests give one that shares the parsed EC2
    service model, which costs ~0.4 s to load per session); the keys are still set on it here.
    """
    from cloudproxy_cli.adapters import aws as a

    env = os.environ if environ is None else environ
    key_id = settings.access_key_id.get_secret_value() if settings.access_key_id else None
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    key_var = env_name(a.PROVIDER, instance, "access_key_id")
    secret_var = env_name(a.PROVIDER, instance, "secret_access_key")
    if (key_id is None) != (secret is None):
        raise ConfigError(f"{key_var}/{secret_var}: set both or neither")
    if key_id is None and instance != DEFAULT_INSTANCE:
        # Another account's (or the environment's) keys would create proxies in the wrong account.
        raise ConfigError(f"{key_var}/{secret_var}: required for {a.PROVIDER}/{instance}")
    token = None
    if instance == DEFAULT_INSTANCE and key_id is not None and env.get(key_var) == key_id:
        # AWS_ACCESS_KEY_ID is both our setting and boto3's: temporary keys from the
        # environment (aws-vault, SSO exports) work only with the environment's session token.
        token = env.get("AWS_SESSION_TOKEN") or None
    client = a.make_client(
        instance=instance,
        key_id=key_id,
        secret=secret,
        token=token,
        region=settings.region,
        endpoint=settings.api_endpoint,
        botocore_session=seams.pop("botocore_session", None),
    )
    return a.AwsProvider(
        instance=instance,
        client=client,
        proxy=proxy,
        size=settings.size,
        ami=settings.ami,
        spot=settings.spot,
        secrets=[s for s in (key_id, secret, token, proxy.password) if s],
        key_settings=f"{key_var}/{secret_var}",
        ami_setting=env_name(a.PROVIDER, instance, "ami"),
        **seams,
    )
