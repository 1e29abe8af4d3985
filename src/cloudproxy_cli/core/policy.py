"""The knobs one reconcile run obeys for one instance, and the effective minimum."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class Strategy(StrEnum):
    """How an aged proxy is replaced when rolling deployment is on."""

    REPLACE = "replace"  # delete first, then create (the spec's behaviour)
    SURGE = "surge"  # create first; delete the old proxy once its replacement is healthy


@dataclass(frozen=True, slots=True)
class RollingPolicy:
    enabled: bool = False
    min_available: int = 3
    batch_size: int = 2
    strategy: Strategy = Strategy.REPLACE


@dataclass(frozen=True, slots=True)
class InstancePolicy:
    """Everything ``reconcile`` needs to know about one instance's settings."""

    rolling: RollingPolicy
    min_scaling: int
    age_limit: timedelta | None = None  # None or zero: proxies never age
    max_scaling: int | None = None  # hard cap on proxies that exist at once (surge included)
    pending_timeout: timedelta = timedelta(seconds=600)
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
