"""What cloudproxy remembers between runs, and its (pure) JSON encoding with a schema version.

The state file holds, per provider instance: what we know of each proxy's health history, the
open recycle operations (which is what keeps the batch limit honest across runs), and a snapshot
of the last run for ``rolling status``. It also holds the ``rolling set`` overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1


class StateFormatError(ValueError):
    """The document is not a state document this version understands."""


@dataclass(frozen=True, slots=True)
class ProxyRecord:
    """Health history of one proxy.

    ``established`` is true once the proxy has been healthy (or, when we first see it without
    history, once it is older than the pending timeout: then we cannot know, and a proxy whose
    past we do not know must fail several runs in a row before we remove it for health).
    """

    proxy_id: str
    first_seen_at: datetime
    established: bool = False
    consecutive_failures: int = 0
    last_healthy_at: datetime | None = None


class OperationStrategy(StrEnum):
    """How an open recycle operation proceeds; the state file stores the value."""

    REPLACE = "replace"  # the old proxy was deleted first; waiting for its replacement
    SURGE = "surge"  # the old proxy serves until its replacement is healthy
    ADOPTED = "adopted"  # a booting proxy found without history, counted as in flight


@dataclass(frozen=True, slots=True)
class RecycleOperation:
    """One aged proxy being replaced. Open from selection until its replacement is healthy.

    ``old_id`` is ``None`` for an *adopted* operation: a booting proxy found without history
    (after a lost or corrupt state file, or a crash between create and save) is counted as in
    flight until it is healthy, so forgetting can never put more than the batch in flight.
    """

    op_id: str
    opened_at: datetime
    strategy: OperationStrategy
    old_id: str | None = None
    old_address: str | None = None
    old_created_at: datetime | None = None
    old_deleted: bool = False
    replacement_id: str | None = None


@dataclass(frozen=True, slots=True)
class Deferral:
    proxy_id: str
    address: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    """The fleet of one instance *after* a run's actions, for ``rolling status``."""

    last_update: datetime
    healthy_ips: tuple[str, ...] = ()
    pending_ips: tuple[str, ...] = ()
    pending: int = 0
    pending_recycle_ips: tuple[str, ...] = ()
    recycling_ips: tuple[str, ...] = ()
    unhealthy_ips: tuple[str, ...] = ()
    aged_ips: tuple[str, ...] = ()
    deferred: tuple[Deferral, ...] = ()
    in_flight: int = 0
    effective_min_available: int = 0
    min_scaling: int = 0
    strategy: str = "replace"
    last_error: str | None = None
    last_error_at: datetime | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InstanceState:
    records: Mapping[str, ProxyRecord] = field(default_factory=dict)
    operations: tuple[RecycleOperation, ...] = ()
    snapshot: InstanceSnapshot | None = None
    firewall_id: str | None = None  # what the adapter's ensure_firewall returned last
    # When ensure_firewall last succeeded (see core.firewall); absent in older files.
    firewall_checked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RollingOverrides:
    """Values set with ``cloudproxy rolling set``; they win over env and TOML until reset."""

    enabled: bool | None = None
    min_available: int | None = None
    batch_size: int | None = None
    strategy: str | None = None

    def is_empty(self) -> bool:
        return self == RollingOverrides()


@dataclass(frozen=True, slots=True)
class State:
    instances: Mapping[str, InstanceState] = field(default_factory=dict)
    overrides: RollingOverrides = RollingOverrides()
    schema_version: int = SCHEMA_VERSION

    def instance(self, key: str) -> InstanceState:
        return self.instances.get(key, InstanceState())

    def with_instance(self, key: str, value: InstanceState) -> State:
        return replace(self, instances={**self.instances, key: value})


# --- encoding ---------------------------------------------------------------------------------


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_ts(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise StateFormatError(f"expected a timestamp, got {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise StateFormatError(f"timestamp without a timezone: {value!r}")
    return parsed


def _req_ts(value: Any) -> datetime:
    parsed = _parse_ts(value)
    if parsed is None:
        raise StateFormatError("missing timestamp")
    return parsed


def encode_snapshot(snap: InstanceSnapshot) -> dict[str, Any]:
    return {
        "last_update": _ts(snap.last_update),
        "healthy_ips": list(snap.healthy_ips),
        "pending_ips": list(snap.pending_ips),
        "pending": snap.pending,
        "pending_recycle_ips": list(snap.pending_recycle_ips),
        "recycling_ips": list(snap.recycling_ips),
        "unhealthy_ips": list(snap.unhealthy_ips),
        "aged_ips": list(snap.aged_ips),
        "deferred": [
            {"proxy_id": d.proxy_id, "address": d.address, "reason": d.reason}
            for d in snap.deferred
        ],
        "in_flight": snap.in_flight,
        "effective_min_available": snap.effective_min_available,
        "min_scaling": snap.min_scaling,
        "strategy": snap.strategy,
        "last_error": snap.last_error,
        "last_error_at": _ts(snap.last_error_at),
        "warnings": list(snap.warnings),
    }


def decode_snapshot(doc: Mapping[str, Any]) -> InstanceSnapshot:
    return InstanceSnapshot(
        last_update=_req_ts(doc["last_update"]),
        healthy_ips=tuple(doc.get("healthy_ips", ())),
        pending_ips=tuple(doc.get("pending_ips", ())),
        pending=int(doc.get("pending", 0)),
        pending_recycle_ips=tuple(doc.get("pending_recycle_ips", ())),
        recycling_ips=tuple(doc.get("recycling_ips", ())),
        unhealthy_ips=tuple(doc.get("unhealthy_ips", ())),
        aged_ips=tuple(doc.get("aged_ips", ())),
        deferred=tuple(
            Deferral(d["proxy_id"], d.get("address"), d["reason"]) for d in doc.get("deferred", ())
        ),
        in_flight=int(doc.get("in_flight", 0)),
        effective_min_available=int(doc.get("effective_min_available", 0)),
        min_scaling=int(doc.get("min_scaling", 0)),
        strategy=str(doc.get("strategy", "replace")),
        last_error=doc.get("last_error"),
        last_error_at=_parse_ts(doc.get("last_error_at")),
        warnings=tuple(doc.get("warnings", ())),
    )


def encode_state(state: State) -> dict[str, Any]:
    """The JSON-ready document for ``state``. Contains no secrets: none are ever in the state."""
    instances: dict[str, Any] = {}
    for key, inst in sorted(state.instances.items()):
        instances[key] = {
            "records": {
                pid: {
                    "first_seen_at": _ts(r.first_seen_at),
                    "established": r.established,
                    "consecutive_failures": r.consecutive_failures,
                    "last_healthy_at": _ts(r.last_healthy_at),
                }
                for pid, r in sorted(inst.records.items())
            },
            "operations": [
                {
                    "op_id": op.op_id,
                    "opened_at": _ts(op.opened_at),
                    "strategy": str(op.strategy),
                    "old_id": op.old_id,
                    "old_address": op.old_address,
                    "old_created_at": _ts(op.old_created_at),
                    "old_deleted": op.old_deleted,
                    "replacement_id": op.replacement_id,
                }
                for op in inst.operations
            ],
            "snapshot": None if inst.snapshot is None else encode_snapshot(inst.snapshot),
            "firewall_id": inst.firewall_id,
            "firewall_checked_at": _ts(inst.firewall_checked_at),
        }
    o = state.overrides
    return {
        "schema_version": state.schema_version,
        "overrides": {
            "enabled": o.enabled,
            "min_available": o.min_available,
            "batch_size": o.batch_size,
            "strategy": o.strategy,
        },
        "instances": instances,
    }


def decode_state(doc: Any) -> State:
    """Parse a state document. Raises ``StateFormatError`` for anything malformed."""
    try:
        if not isinstance(doc, dict):
            raise StateFormatError("the state document is not a JSON object")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StateFormatError(f"unsupported schema_version {version!r}")
        o = doc.get("overrides") or {}
        overrides = RollingOverrides(
            enabled=o.get("enabled"),
            min_available=o.get("min_available"),
            batch_size=o.get("batch_size"),
            strategy=o.get("strategy"),
        )
        instances: dict[str, InstanceState] = {}
        for key, inst in (doc.get("instances") or {}).items():
            records = {
                pid: ProxyRecord(
                    proxy_id=pid,
                    first_seen_at=_req_ts(r["first_seen_at"]),
                    established=bool(r.get("established", False)),
                    consecutive_failures=int(r.get("consecutive_failures", 0)),
                    last_healthy_at=_parse_ts(r.get("last_healthy_at")),
                )
                for pid, r in (inst.get("records") or {}).items()
            }
            operations = tuple(
                RecycleOperation(
                    op_id=str(op["op_id"]),
                    opened_at=_req_ts(op["opened_at"]),
                    strategy=OperationStrategy(op["strategy"]),
                    old_id=op.get("old_id"),
                    old_address=op.get("old_address"),
                    old_created_at=_parse_ts(op.get("old_created_at")),
                    old_deleted=bool(op.get("old_deleted", False)),
                    replacement_id=op.get("replacement_id"),
                )
                for op in (inst.get("operations") or ())
            )
            snap = inst.get("snapshot")
            instances[str(key)] = InstanceState(
                records=records,
                operations=operations,
                snapshot=None if snap is None else decode_snapshot(snap),
                firewall_id=inst.get("firewall_id"),
                firewall_checked_at=_parse_ts(inst.get("firewall_checked_at")),
            )
        return State(instances=instances, overrides=overrides)
    except StateFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateFormatError(f"malformed state document: {exc}") from exc
