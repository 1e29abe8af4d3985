"""A run's plan as a value: the actions to take, each with a reason, and what was deferred."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from cloudproxy_cli.core.model import InstanceKey, Proxy
from cloudproxy_cli.core.state import Deferral, InstanceState, ProbeFailure


class DeleteKind(StrEnum):
    RECYCLE = "recycle"  # an aged proxy selected by rolling deployment (strategy replace)
    SURGE_COMPLETE = "surge-complete"  # old proxy whose replacement is now healthy
    AGED = "aged"  # rolling disabled: every aged proxy goes at once
    STUCK = "stuck"  # never healthy within PENDING_TIMEOUT
    BROKEN = "broken"  # failed its health check several runs in a row
    SURPLUS = "surplus"  # more proxies than MIN_SCALING
    MANUAL = "manual"  # cloudproxy destroy


class CreateAction(NamedTuple):
    reason: str
    for_operation: str | None = None  # the recycle operation this proxy replaces, if any


class DeleteAction(NamedTuple):
    proxy_id: str
    address: str | None
    kind: DeleteKind
    reason: str
    closes_operation: str | None = None  # the operation that closes once this delete succeeds


class Plan(NamedTuple):
    """What one run decided for one instance. ``next_state`` assumes every action succeeds
    only where that is safe; ``apply_outcomes`` folds the real outcomes in."""

    key: InstanceKey
    observed: tuple[Proxy, ...]
    healthy_ids: frozenset[str]
    creates: tuple[CreateAction, ...]
    deletes: tuple[DeleteAction, ...]
    deferrals: tuple[Deferral, ...]
    next_state: InstanceState
    warnings: tuple[str, ...] = ()
    log: tuple[str, ...] = ()  # the spec's "Rolling deployment: ..." lines, in order
    # What a dry run logs instead: the same events as intentions ("would mark ..."), then one
    # line per delete and create it would make. Real runs log ``log`` and their actions.
    intents: tuple[str, ...] = ()
    effective_min_available: int = 0
    aged_ids: frozenset[str] = frozenset()
    pending_ids: frozenset[str] = frozenset()
    probe_failures: tuple[ProbeFailure, ...] = ()  # observed proxies whose probe failed
    # The caps (``MAX_SCALING``, ``MAX_CREATES_PER_RUN``) that held back a create this run.
    caps_reached: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.creates and not self.deletes


class ActionOutcome(NamedTuple):
    """What happened when the shell executed one action."""

    action: CreateAction | DeleteAction
    ok: bool
    created: Proxy | None = None
    error: str | None = None


class Outcomes(NamedTuple):
    items: tuple[ActionOutcome, ...] = ()
