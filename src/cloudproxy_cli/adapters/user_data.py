"""The proxy every cloud VM runs: validated settings and the user-data script that installs it."""

from __future__ import annotations

import ipaddress
import re

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.core.errors import ConfigError

# tinyproxy's BasicAuth accepts only these characters; anything else is a syntax error that
# kills the proxy at boot, so it is refused here, before any VM is created. The length bound
# keeps the config line far below tinyproxy's line buffer.
_BASIC_AUTH_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_MAX_CREDENTIAL_LEN = 128

# Where Debian's and Ubuntu's tinyproxy package (and its systemd unit) expect things.
CONF_PATH = "/etc/tinyproxy/tinyproxy.conf"
# The heredoc delimiter; no rendered config line can equal it (see _render_checked).
CONF_DELIMITER = "CLOUDPROXY_TINYPROXY_CONF"


def checked_proxy_settings(
    *,
    port: int,  # checked all the same: a model_copy(update=...) skips config's validation
    username: str | None,
    password: str | None,
    allow_open_proxy: bool,
    only_host_ip: bool,
    host_ip: str | None,
) -> ProxySettings:
    """Validate what the user data will deploy (the values of PROXY_PORT, PROXY_USERNAME,
    PROXY_PASSWORD, ALLOW_OPEN_PROXY, ONLY_HOST_IP and HOST_IP); a one-line ``ConfigError``
    naming the setting."""
    if username is None and not allow_open_proxy:
        raise ConfigError(
            "PROXY_USERNAME/PROXY_PASSWORD: unset, so the proxies would be open to anyone; "
            "set both, or ALLOW_OPEN_PROXY=True if you really mean it"
        )
    for name, value in (("PROXY_USERNAME", username), ("PROXY_PASSWORD", password)):
        if value is not None and (problem := _credential_problem(value)):
            raise ConfigError(f"{name}: {problem}")
    if _port_problem(port):
        raise ConfigError("PROXY_PORT: must be a port number from 1 to 65535")
    allowed_ip = None
    if only_host_ip:
        if host_ip is None:
            raise ConfigError("HOST_IP: required with ONLY_HOST_IP=True (this host's public IP)")
        try:
            allowed_ip = _canonical_ip(host_ip)
        except ValueError as exc:
            raise ConfigError(f"HOST_IP: {exc}") from None
    return ProxySettings(port=port, username=username, password=password, allowed_ip=allowed_ip)


def render_tinyproxy_conf(proxy: ProxySettings) -> str:
    """tinyproxy.conf for ``proxy``: auth, no Via header, CONNECT to any port, optional ACL.

    Every value is validated again here (``ValueError``, never a rendered file), so a
    ``ProxySettings`` built by hand cannot smuggle anything into the config or the script.
    """
    port, credentials, allowed_ip = _checked(proxy)
    lines = [
        "# Written by cloudproxy; replaced whenever the VM is recreated.",
        # Debian's package creates this user and owns /run/tinyproxy for it.
        "User tinyproxy",
        "Group tinyproxy",
        f"Port {port}",
        # No Listen line: tinyproxy then listens on every address, IPv4 and IPv6 alike.
        "Timeout 600",
        "MaxClients 100",
        'DefaultErrorFile "/usr/share/tinyproxy/default.html"',
        # journald keeps and rotates it; Notice leaves out per-request URLs.
        "Syslog On",
        "LogLevel Notice",
        'PidFile "/run/tinyproxy/tinyproxy.pid"',
        "DisableViaHeader Yes",
        # No ConnectPort line: CONNECT is allowed to every port (tinyproxy.conf(5)).
    ]
    if credentials is not None:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    if allowed_ip is not None:
        # Any Allow line makes tinyproxy deny every other client (403).
        lines.append(f"Allow {allowed_ip}")
    return "\n".join(lines) + "\n"


def render_user_data(proxy: ProxySettings) -> str:
    """A bash script for Ubuntu cloud images that installs and starts tinyproxy for ``proxy``.

    Raises ``ValueError`` (and renders nothing) if any value of ``proxy`` is not one tinyproxy
    and bash can take literally: credentials of ``[A-Za-z0-9._-]``, a port, an IP address.
    """
    port, _, allowed_ip = _checked(proxy)
    conf = render_tinyproxy_conf(proxy)
    if CONF_DELIMITER in conf.splitlines():  # pragma: no cover - impossible after _checked
        raise ValueError("tinyproxy config contains the heredoc delimiter")
    ufw_rule = (
        f"ufw allow proto tcp from {allowed_ip} to any port {port}"
        if allowed_ip is not None
        else f"ufw allow {port}/tcp"
    )
    return f"""#!/bin/bash
# cloudproxy: installs tinyproxy, an HTTP proxy on port {port}.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Cloud-init may race apt's own timers for the dpkg lock, and mirrors may hiccup at boot.
retry() {{
    local attempt
    for attempt in 1 2 3 4 5; do
        "$@" && return 0
        sleep $((attempt * 5))
    done
    return 1
}}
apt_options=(-q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold)
retry apt-get "${{apt_options[@]}}" update
retry apt-get "${{apt_options[@]}}" install -y --no-install-recommends tinyproxy

# Quoted heredoc: bash expands nothing in it. Readable by tinyproxy only (it holds the
# password), and moved into place whole.
umask 077
cat > {CONF_PATH}.new <<'{CONF_DELIMITER}'
{conf}{CONF_DELIMITER}
chown root:tinyproxy {CONF_PATH}.new
chmod 0640 {CONF_PATH}.new
mv -f {CONF_PATH}.new {CONF_PATH}

systemctl enable tinyproxy
systemctl restart tinyproxy

if command -v ufw >/dev/null 2>&1 && ufw status | grep -q '^Status: active'; then
    {ufw_rule}
fi

# Fail the boot script visibly (cloud-init status) if the proxy never comes up.
for _ in $(seq 1 30); do
    if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then
        exit 0
    fi
    sleep 1
done
echo "cloudproxy: tinyproxy is not listening on port {port}" >&2
exit 1
"""


def _checked(proxy: ProxySettings) -> tuple[int, tuple[str, str] | None, str | None]:
    """``proxy``'s port, credentials and allowed IP, each safe to render; else ``ValueError``."""
    if _port_problem(proxy.port):
        raise ValueError("proxy port must be an integer from 1 to 65535")
    credentials = None
    if proxy.username is not None or proxy.password is not None:
        if proxy.username is None or proxy.password is None:
            raise ValueError("proxy username and password must be set together")
        # The messages never carry the value: it may be (part of) a password.
        for what, value in (("username", proxy.username), ("password", proxy.password)):
            if problem := _credential_problem(value):
                raise ValueError(f"proxy {what}: {problem}")
        credentials = (proxy.username, proxy.password)
    allowed_ip = None
    if proxy.allowed_ip is not None:
        allowed_ip = _canonical_ip(proxy.allowed_ip)
    return proxy.port, credentials, allowed_ip


def _credential_problem(value: object) -> str | None:
    if not isinstance(value, str) or not _BASIC_AUTH_CHARS.fullmatch(value):
        return (
            "may contain only letters, digits, '-', '.' and '_' "
            "(tinyproxy's BasicAuth accepts nothing else)"
        )
    if len(value) > _MAX_CREDENTIAL_LEN:
        return f"must be at most {_MAX_CREDENTIAL_LEN} characters"
    return None


def _port_problem(port: object) -> bool:
    # bool is an int subclass; True is not port 1.
    return type(port) is not int or not 1 <= port <= 65535


def _canonical_ip(value: object) -> str:
    """``value`` as a plain IPv4/IPv6 address in canonical form; else ``ValueError``."""
    message = "must be an IPv4 or IPv6 address"
    if not isinstance(value, str):
        raise ValueError(message)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(message) from None
    # Python accepts an IPv6 zone ("fe80::1%anything") with any characters in it.
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ValueError(message + " without a zone (%...)")
    return str(address)
