"""The proxy every cloud VM runs: validated settings and the user-data script that installs it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.core.errors import ConfigError

if TYPE_CHECKING:
    from cloudproxy_cli.config import Settings

# tinyproxy's BasicAuth accepts only these characters; anything else is a syntax error that
# kills the proxy at boot, so it is refused here, before any VM is created.
_BASIC_AUTH_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def proxy_settings(settings: Settings) -> ProxySettings:
    """Validate what the user data will deploy; a one-line ``ConfigError`` naming the setting."""
    username = settings.proxy_username
    password = settings.proxy_password.get_secret_value() if settings.proxy_password else None
    if username is None and password is None:
        if not settings.allow_open_proxy:
            raise ConfigError(
                "PROXY_USERNAME/PROXY_PASSWORD: unset, so the proxies would be open to anyone; "
                "set both, or ALLOW_OPEN_PROXY=True if you really mean it"
            )
    elif username is None or password is None:
        missing = "PROXY_USERNAME" if username is None else "PROXY_PASSWORD"
        raise ConfigError(f"{missing}: PROXY_USERNAME and PROXY_PASSWORD must be set together")
    for name, value in (("PROXY_USERNAME", username), ("PROXY_PASSWORD", password)):
        if value is not None and not _BASIC_AUTH_CHARS.fullmatch(value):
            raise ConfigError(
                f"{name}: may contain only letters, digits, '-', '.' and '_' "
                "(tinyproxy's BasicAuth accepts nothing else)"
            )
    allowed_ip = None
    if settings.only_host_ip:
        if settings.host_ip is None:
            raise ConfigError("HOST_IP: required with ONLY_HOST_IP=True (this host's public IP)")
        allowed_ip = settings.host_ip
    return ProxySettings(
        port=settings.proxy_port, username=username, password=password, allowed_ip=allowed_ip
    )
