"""Every log line, reason and warning the reconcile rules produce, in the specification's words."""

from __future__ import annotations

from datetime import timedelta

from cloudproxy_cli.core.model import InstanceKey

# -- the specification's "Rolling deployment: ..." log lines ------------------------------------


def marked(name: str, key: InstanceKey, in_flight: int, batch_size: int) -> str:
    return (
        f"Rolling deployment: Marked {name} for recycling in {key}. "
        f"Currently recycling {in_flight}/{batch_size} proxies"
    )


def cannot_recycle_batch(name: str, key: InstanceKey, in_flight: int, batch_size: int) -> str:
    return (
        f"Rolling deployment: Cannot recycle {name} for {key}. Batch size reached "
        f"({in_flight}/{batch_size} proxies recycling)"
    )


def cannot_recycle_minimum(name: str, key: InstanceKey, after: int, minimum: int) -> str:
    return (
        f"Rolling deployment: Cannot recycle {name} for {key}. Would reduce "
        f"available proxies below minimum ({after} < {minimum})"
    )


def deferred(key: InstanceKey, noun: str, name: str, reason: str) -> str:
    return f"Rolling deployment: Deferred recycling {key} {noun} -> {name} ({reason})"


def completed(name: str, key: InstanceKey) -> str:
    return f"Rolling deployment: Completed recycling {name} in {key}"


# -- why a proxy is deleted ---------------------------------------------------------------------


def _secs(delta: timedelta) -> int:
    return int(delta.total_seconds())


def stuck(pending_timeout: timedelta, age: timedelta) -> str:
    return (
        f"never became healthy within PENDING_TIMEOUT ({_secs(pending_timeout)} s; "
        f"age {_secs(age)} s)"
    )


def broken(failures: int, detail: str) -> str:
    return f"failed its health check {failures} runs in a row ({detail})"


def aged_rolling_off(age: timedelta, age_limit: timedelta) -> str:
    return (
        f"aged {_secs(age)} s > AGE_LIMIT {_secs(age_limit)} s; "
        "rolling deployment is off, so every aged proxy is recycled at once"
    )


RETRY = "retrying the deletion of a proxy selected for recycling"


RETRY_UNHEALTHY = f"{RETRY} (unhealthy)"


def retry_delete(after: int, minimum: int) -> str:
    return f"{RETRY}; available after: {after} (minimum {minimum})"


AGED_UNHEALTHY = "aged and failing its health check, so removing it costs no availability"


def aged_delete(after: int, minimum: int) -> str:
    return f"aged; available after: {after} (minimum {minimum})"


def replacement_healthy(name: str) -> str:
    return f"its replacement {name} is healthy"


def surplus(count: int, min_scaling: int) -> str:
    return f"above MIN_SCALING ({count}/{min_scaling})"


def no_replacement_needed(min_scaling: int) -> str:
    return f"no replacement needed: MIN_SCALING ({min_scaling}) is met without it"


DESTROYED = "destroyed by request"

# -- why a proxy's recycling is deferred --------------------------------------------------------


def retry_deferred(after: int, minimum: int) -> str:
    return f"{RETRY} would reduce available proxies below minimum ({after} < {minimum})"


def batch_full(in_flight: int, batch_size: int) -> str:
    return f"batch full: already recycling {in_flight}/{batch_size}"


def no_room_to_surge(max_scaling: int) -> str:
    return f"MAX_SCALING ({max_scaling}) leaves no room to surge"


HEALTH_IN_DOUBT = (
    "health checks are failing across the instance; not recycling a proxy whose health is in doubt"
)


def below_minimum(after: int, minimum: int) -> str:
    return f"would reduce available proxies below minimum ({after} < {minimum})"


# -- why a proxy is created ---------------------------------------------------------------------


def replacement_for(name: str) -> str:
    return f"replacement for {name}"


def below_min_scaling(count: int, min_scaling: int) -> str:
    return f"below MIN_SCALING ({count}/{min_scaling})"


# -- warnings -----------------------------------------------------------------------------------


def mass_failure(failing: int, expected: int, key: InstanceKey) -> str:
    return (
        f"{failing} of {expected} proxies in {key} failed their health check at "
        "once: the prober or the network is the likely fault, so no proxy is removed for "
        "health and no unhealthy proxy is recycled this run"
    )


def min_available_adjusted(
    min_available: int, min_scaling: int, key: InstanceKey, used: int
) -> str:
    return (
        f"ROLLING_MIN_AVAILABLE ({min_available}) is not below MIN_SCALING "
        f"({min_scaling}) for {key}: using {used} so that recycling can progress"
    )


def max_scaling_limits(
    max_scaling: int, key: InstanceKey, n: int, deficit: int, min_scaling: int
) -> str:
    return (
        f"MAX_SCALING={max_scaling} reached: {deficit - n} creates deferred "
        f"(MAX_SCALING ({max_scaling}) for {key}: creating {n} of the "
        f"{deficit} proxies needed to reach MIN_SCALING ({min_scaling}))"
    )


def max_creates_reached(cap: int, key: InstanceKey, deferred: int) -> str:
    return f"MAX_CREATES_PER_RUN={cap} reached: {deferred} creates deferred in {key}"


def surge_capped(max_scaling: int, key: InstanceKey) -> str:
    return f"MAX_SCALING={max_scaling} reached: a surge recycle in {key} is deferred"


def create_skipped_over_max(max_scaling: int, existing: int) -> str:
    return (
        f"not created: MAX_SCALING ({max_scaling}) would be exceeded, since {existing} proxies "
        "still exist after a failed deletion"
    )


def credentials_rejected(count: int, key: InstanceKey) -> str:
    return (
        f"credentials rejected by every proxy: did PROXY_PASSWORD change? "
        f"({count} proxies of {key} answered 401/407)"
    )


# -- a dry run's log: the same events, worded as intentions (nothing was done) --------------------


def would_mark(name: str, key: InstanceKey, in_flight: int, batch_size: int) -> str:
    return (
        f"Rolling deployment: would mark {name} for recycling in {key}; "
        f"would be recycling {in_flight}/{batch_size} proxies"
    )


def would_defer(key: InstanceKey, noun: str, name: str, reason: str) -> str:
    return f"Rolling deployment: would defer recycling {key} {noun} -> {name} ({reason})"


def would_complete(name: str, key: InstanceKey) -> str:
    return f"Rolling deployment: would complete recycling {name} in {key}"


def would_delete(name: str, key: InstanceKey, reason: str) -> str:
    return f"would delete {name} in {key}: {reason}"


def would_create(noun: str, key: InstanceKey, reason: str) -> str:
    return f"would create a {noun} in {key}: {reason}"


def would_not_recycle_batch(name: str, key: InstanceKey, in_flight: int, batch_size: int) -> str:
    return (
        f"Rolling deployment: would not recycle {name} for {key}: batch size reached "
        f"({in_flight}/{batch_size} proxies recycling)"
    )


def would_not_recycle_minimum(name: str, key: InstanceKey, after: int, minimum: int) -> str:
    return (
        f"Rolling deployment: would not recycle {name} for {key}: it would reduce "
        f"available proxies below minimum ({after} < {minimum})"
    )
