"""The core's vocabulary: proxies as observed, health as probed, and instance keys."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import NamedTuple


class InstanceKey(NamedTuple):
    """One provider instance, e.g. ``digitalocean/default``. Instances never see each other."""

    provider: str
    instance: str = "default"

    def __str__(self) -> str:
        return f"{self.provider}/{self.instance}"

    @classmethod
    def parse(cls, text: str) -> InstanceKey:
        provider, _, instance = text.partition("/")
        return cls(provider, instance or "default")


class Proxy(NamedTuple):
    """A proxy VM (or local process) that this instance created, as its provider lists it.

    ``ip`` is ``None`` until the VM has a real public address. ``port`` is ``None`` when the
    proxy listens on the configured ``PROXY_PORT`` (every cloud VM); the local provider runs
    many proxies on 127.0.0.1 and gives each its own port.
    """

    id: str
    created_at: datetime
    ip: str | None = None
    port: int | None = None

    @property
    def address(self) -> str | None:
        """How a person names this proxy: its IP, or ``ip:port`` when the port is its own."""
        if self.ip is None:
            return None
        return self.ip if self.port is None else f"{self.ip}:{self.port}"

    @property
    def label(self) -> str:
        """How log lines and status name it: its address, or its id while it has none."""
        return self.address or self.id


class ProbeTarget(NamedTuple):
    """Where to send one health probe."""

    proxy_id: str
    host: str
    port: int


class ProbeKind(StrEnum):
    """Why a probe failed, in few enough kinds to count and alert on; ``detail`` says more."""

    OK = "ok"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    AUTH = "auth"  # 401 or 407: the proxy rejected our credentials
    BAD_STATUS = "bad_status"  # any other non-2xx, or a 2xx that is not our origin's page
    ERROR = "error"  # reset, TLS, DNS, not HTTP, ...


class ProbeResult(NamedTuple):
    """The outcome of one health probe. ``detail`` says why it failed (or ``ok``).

    ``kind`` is ``None`` when the prober did not classify the failure: then it is ``error``.
    """

    ok: bool
    detail: str = "ok"
    elapsed_s: float = 0.0
    kind: ProbeKind | None = None

    @property
    def reason_kind(self) -> ProbeKind:
        if self.ok:
            return ProbeKind.OK
        return self.kind or ProbeKind.ERROR
