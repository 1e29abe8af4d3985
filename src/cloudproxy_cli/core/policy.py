"""The knobs one reconcile run obeys for one instance, and the effective minimum."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    # state.py imports Strategy from here; the overrides are only a parameter type.
    from cloudproxy_cli.core.state import RollingOverrides


class Strategy(StrEnum):
    """How an aged proxy is replaced when rolling deployment is on."""

    REPLACE = "replace"  # delete first, then create (the spec's behaviour)
    SURGE = "surge"  # create first; delete the old proxy once its replacement is healthy


class RollingPolicy(NamedTuple):
    enabled: bool = False
    min_available: int = 3
    batch_size: int = 2
    strategy: Strategy = Strategy.REPLACE


class InstancePolicy(NamedTuple):
    """Everything ``reconcile`` needs to know about one instance's settings."""

    rolling: RollingPolicy
    min_scaling: int
    age_limit: timedelta | None = None  # None or zero: proxies never age
    max_scaling: int | None = None  # hard cap on proxies that exist at once (surge included)
    # Hard cap on the creates of one run; None: ROLLING_BATCH_SIZE + the MIN_SCALING deficit.
    max_creates_per_run: int | None = None
    pending_timeout: timedelta = timedelta(seconds=600)
    # A rollout with no recycle completed for this long is stalled (exit code 6); None: never.
    progress_deadline: timedelta | None = timedelta(seconds=1800)
    # An established proxy is replaced for health only after this many failed runs in a row...
    failures_before_replace: int = 3
    # ...and never while at least this share of the proxies that should answer fail together
    # (with at least ``mass_failure_min_count`` failing): then the prober or network is suspect.
    mass_failure_share: float = 0.5
    mass_failure_min_count: int = 2
    resource_noun: str = "proxy"  # "droplet", "server", ... for the spec's log lines

    def effective_min_available(self) -> int:
        """``ROLLING_MIN_AVAILABLE``, or ``max(MIN_SCALING - 1, 0)`` when that is not below
        ``MIN_SCALING`` (otherwise no proxy could ever be recycled)."""
        if self.rolling.min_available >= self.min_scaling:
            return max(self.min_scaling - 1, 0)
        return self.rolling.min_available

    def min_available_adjusted(self) -> bool:
        return self.rolling.min_available >= self.min_scaling

    def creates_cap(self, deficit: int) -> int:
        """The most proxies one run may create: ``MAX_CREATES_PER_RUN``, or when unset
        ``ROLLING_BATCH_SIZE`` plus the run's ``deficit`` below MIN_SCALING."""
        if self.max_creates_per_run is not None:
            return self.max_creates_per_run
        return self.rolling.batch_size + max(deficit, 0)


OVERRIDE_SOURCE = "rolling set"

# The setting behind each rolling knob, as the configuration's sources name it.
_ROLLING_SETTINGS = {
    "enabled": "rolling_deployment",
    "min_available": "rolling_min_available",
    "batch_size": "rolling_batch_size",
    "strategy": "rolling_strategy",
}


class EffectiveRolling(NamedTuple):
    """The rolling knobs in force and where each came from (`rolling set`, env, file, default)."""

    policy: RollingPolicy
    sources: dict[str, str]


def rolling_in_force(
    base: RollingPolicy, sources: Mapping[str, str], overrides: RollingOverrides
) -> EffectiveRolling:
    """``base`` (from env, file and defaults) with the `rolling set` overrides on top.

    ``sources`` says where each setting of ``base`` came from; a knob without an entry there
    is reported as ``default``, an overridden one as ``rolling set``.
    """
    o = overrides
    policy = RollingPolicy(
        enabled=base.enabled if o.enabled is None else o.enabled,
        min_available=base.min_available if o.min_available is None else o.min_available,
        batch_size=base.batch_size if o.batch_size is None else o.batch_size,
        strategy=base.strategy if o.strategy is None else Strategy(o.strategy),
    )
    # A knob's name is also its field in RollingOverrides.
    return EffectiveRolling(
        policy,
        {
            knob: OVERRIDE_SOURCE
            if getattr(o, knob) is not None
            else sources.get(setting, "default")
            for knob, setting in _ROLLING_SETTINGS.items()
        },
    )
