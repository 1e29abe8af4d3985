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
        """Verify this instance's firewall and return its id for the state file.

        It always reads the firewall (``known_id``, what a previous call returned, else found
        by its name ``cloudproxy-<instance>``), creates it if it is gone, and repairs what
        differs from the desired rules (``adapters.common.FirewallRules``: TCP ``PROXY_PORT``
        from the allowed CIDRs, nothing else): stale rules removed, missing ones added, its
        tag or label target put back. Only a firewall of that name is ever changed. Raises
        ``ProviderError`` when it cannot. Called before the first create of a run, and when
        the hourly check is due (``core.firewall``). ``None``: this provider has no firewall.
        """
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
