"""The Protocols the shell talks through: providers, the prober, the clock, the state store."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from cloudproxy_cli.core.model import ProbeResult, ProbeTarget, Proxy
from cloudproxy_cli.core.state import State


class Provider(Protocol):
    """One provider instance (one account/region). Lists, creates and deletes only its own proxies.

    Contract: ``list_proxies`` raises ``ProviderError`` when it cannot read the inventory (it
    never returns ``[]`` for a failure); ``delete_proxy`` of an id that is already gone succeeds;
    nothing outside this instance's own tagged proxies is ever listed or deleted.
    """

    def list_proxies(self) -> list[Proxy]: ...

    def create_proxy(self) -> Proxy: ...

    def delete_proxy(self, proxy_id: str) -> None: ...

    def ensure_firewall(self, known_id: str | None) -> str | None:
        """Make sure this instance's firewall exists (opening only the proxy port) and return
        its id for the state file. With ``known_id`` (what a previous run returned) the adapter
        trusts it and makes no API call; otherwise it finds the firewall by name, creating it
        only if missing. Called only in runs that create proxies. ``None``: no firewall."""
        ...


class Prober(Protocol):
    """Probes proxies concurrently; returns one result per target, keyed by proxy id."""

    def probe(self, targets: Sequence[ProbeTarget]) -> dict[str, ProbeResult]: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class LoadedState(Protocol):
    @property
    def state(self) -> State: ...

    @property
    def warning(self) -> str | None: ...


class StateStore(Protocol):
    """Where the state lives between runs (the JSON state file in production)."""

    def lock(self) -> AbstractContextManager[object]: ...

    def load(self) -> LoadedState: ...

    def save(self, state: State) -> None: ...
