"""What cloudproxy remembers between runs, and its (pure) JSON encoding with a schema version.

The state file holds, per provider instance: what we know of each proxy's health history, the
open recycle operations (which is what keeps the batch limit honest across runs), and a snapshot
of the last run for ``rolling status``. It also holds the ``rolling set`` overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from cloudproxy_cli.core.errors import StateError
from cloudproxy_cli.core.policy import Strategy

SCHEMA_VERSION = 1

# The default of the records' mapping fields: one shared empty mapping, which nothing can change.
EMPTY: Mapping[Any, Any] = MappingProxyType({})


class StateFormatError(ValueError):
    """The document is not a state document this version understands."""


class NewerStateError(StateError):
    """The document was written by a newer cloudproxy (a higher ``schema_version``).

    Not a ``StateFormatError``: a corrupt file may be moved aside and replaced, but a newer
    version's state must be left exactly where it is, so the run refuses instead.
    """


class ProxyRecord(NamedTuple):
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


class RecycleOperation(NamedTuple):
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


class Deferral(NamedTuple):
    proxy_id: str
    address: str | None
    reason: str


class ProbeFailure(NamedTuple):
    """Why one proxy failed its last probe: a ``ProbeKind`` value and the prober's words."""

    address: str
    kind: str
    detail: str


class Rollout(NamedTuple):
    """Progress of the rollout under way (aged proxies waiting or recycles open), for stall
    detection: when it started, when an operation last completed, and how many have."""

    started_at: datetime
    last_progress_at: datetime | None = None
    completed: int = 0

    @property
    def progressed_at(self) -> datetime:
        return self.last_progress_at or self.started_at


class InstanceSnapshot(NamedTuple):
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
    probe_failures: tuple[ProbeFailure, ...] = ()  # proxies that failed this run's probe
    next_age_at: datetime | None = None  # when the next not-yet-aged proxy reaches AGE_LIMIT
    rollout: Rollout | None = None  # a copy of the instance's, as of this snapshot
    # How each open operation's replacement is named (its address once it has one), by op_id.
    replacements: Mapping[str, str] = EMPTY


class InstanceState(NamedTuple):
    records: Mapping[str, ProxyRecord] = EMPTY
    operations: tuple[RecycleOperation, ...] = ()
    snapshot: InstanceSnapshot | None = None
    firewall_id: str | None = None  # what the adapter's ensure_firewall returned last
    rollout: Rollout | None = None  # None while nothing is aged and nothing is recycling
    # When ensure_firewall last succeeded (see core.firewall); absent in older files.
    firewall_checked_at: datetime | None = None


class RollingOverrides(NamedTuple):
    """Values set with ``cloudproxy rolling set``; they win over env and TOML until reset."""

    enabled: bool | None = None
    min_available: int | None = None
    batch_size: int | None = None
    strategy: str | None = None

    def is_empty(self) -> bool:
        return self == RollingOverrides()


class State(NamedTuple):
    instances: Mapping[str, InstanceState] = EMPTY
    overrides: RollingOverrides = RollingOverrides()
    schema_version: int = SCHEMA_VERSION

    def instance(self, key: str) -> InstanceState:
        return self.instances.get(key, InstanceState())

    def with_instance(self, key: str, value: InstanceState) -> State:
        return self._replace(instances={**self.instances, key: value})


# --- encoding ---------------------------------------------------------------------------------


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_ts(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise StateFormatError(f"expected a timestamp, got {_short(value)}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise StateFormatError(f"timestamp without a timezone: {_short(value)}")
    try:
        # Normalised here: a time near year 1 or 9999 may not exist in UTC, and encoding it
        # later (astimezone) would then fail in the middle of a run.
        return parsed.astimezone(UTC)
    except OverflowError:
        raise StateFormatError(f"timestamp out of range: {_short(value)}") from None


def _req_ts(value: Any) -> datetime:
    parsed = _parse_ts(value)
    if parsed is None:
        raise StateFormatError("missing timestamp")
    return parsed


# The checks below are strict on purpose: Python's int(), bool() and tuple() would accept 1.5,
# "yes", Infinity or a string of characters and turn them into numbers or lists that no run
# wrote, or crash far from here (int(Infinity) is an OverflowError, not a ValueError).


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _count(value: Any, name: str, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        raise StateFormatError(f"{name}: expected an integer >= {minimum}, got {_short(value)}")
    return value


def _opt_count(value: Any, name: str, minimum: int = 0) -> int | None:
    return None if value is None else _count(value, name, minimum)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise StateFormatError(f"{name}: expected true or false, got {_short(value)}")
    return value


def _opt_flag(value: Any, name: str) -> bool | None:
    return None if value is None else _flag(value, name)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise StateFormatError(f"{name}: expected a string, got {_short(value)}")
    return value


def _opt_text(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _texts(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise StateFormatError(f"{name}: expected a list of strings, got {_short(value)}")
    return tuple(_text(v, name) for v in value)


def _table(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StateFormatError(f"{name}: expected an object, got {_short(value)}")
    return value


def _operation_strategy(value: Any) -> OperationStrategy:
    if value not in {s.value for s in OperationStrategy}:
        raise StateFormatError(f"operation strategy: unknown strategy {_short(value)}")
    return OperationStrategy(value)


def _opt_strategy(value: Any) -> str | None:
    if value is not None and value not in {s.value for s in Strategy}:
        raise StateFormatError(f"overrides.strategy: unknown strategy {_short(value)}")
    return _opt_text(value, "overrides.strategy")


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
        "probe_failures": [
            {"address": f.address, "kind": f.kind, "detail": f.detail} for f in snap.probe_failures
        ],
        "next_age_at": _ts(snap.next_age_at),
        "rollout": _encode_rollout(snap.rollout),
        "replacements": dict(sorted(snap.replacements.items())),
    }


def _encode_rollout(rollout: Rollout | None) -> dict[str, Any] | None:
    if rollout is None:
        return None
    return {
        "started_at": _ts(rollout.started_at),
        "last_progress_at": _ts(rollout.last_progress_at),
        "completed": rollout.completed,
    }


def _decode_rollout(doc: Any) -> Rollout | None:
    # Files written before rollouts were tracked have no such key: nothing under way then.
    if doc is None:
        return None
    doc = _table(doc, "rollout")
    return Rollout(
        started_at=_req_ts(doc["started_at"]),
        last_progress_at=_parse_ts(doc.get("last_progress_at")),
        completed=_count(doc.get("completed", 0), "rollout.completed"),
    )


def decode_snapshot(doc: Mapping[str, Any]) -> InstanceSnapshot:
    doc = _table(doc, "snapshot")
    return InstanceSnapshot(
        last_update=_req_ts(doc["last_update"]),
        healthy_ips=_texts(doc.get("healthy_ips", []), "healthy_ips"),
        pending_ips=_texts(doc.get("pending_ips", []), "pending_ips"),
        pending=_count(doc.get("pending", 0), "pending"),
        pending_recycle_ips=_texts(doc.get("pending_recycle_ips", []), "pending_recycle_ips"),
        recycling_ips=_texts(doc.get("recycling_ips", []), "recycling_ips"),
        unhealthy_ips=_texts(doc.get("unhealthy_ips", []), "unhealthy_ips"),
        aged_ips=_texts(doc.get("aged_ips", []), "aged_ips"),
        deferred=tuple(_decode_deferral(d) for d in _list(doc.get("deferred", []), "deferred")),
        in_flight=_count(doc.get("in_flight", 0), "in_flight"),
        effective_min_available=_count(
            doc.get("effective_min_available", 0), "effective_min_available"
        ),
        min_scaling=_count(doc.get("min_scaling", 0), "min_scaling"),
        strategy=_text(doc.get("strategy", "replace"), "strategy"),
        last_error=_opt_text(doc.get("last_error"), "last_error"),
        last_error_at=_parse_ts(doc.get("last_error_at")),
        warnings=_texts(doc.get("warnings", []), "warnings"),
        probe_failures=tuple(
            _decode_probe_failure(f) for f in _list(doc.get("probe_failures", []), "probe_failures")
        ),
        next_age_at=_parse_ts(doc.get("next_age_at")),
        rollout=_decode_rollout(doc.get("rollout")),
        replacements={
            str(k): _text(v, "replacements")
            for k, v in _table(doc.get("replacements") or {}, "replacements").items()
        },
    )


def _decode_probe_failure(doc: Any) -> ProbeFailure:
    doc = _table(doc, "probe_failures")
    return ProbeFailure(
        _text(doc["address"], "probe_failures.address"),
        _text(doc["kind"], "probe_failures.kind"),
        _text(doc["detail"], "probe_failures.detail"),
    )


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise StateFormatError(f"{name}: expected a list, got {_short(value)}")
    return value


def _decode_deferral(doc: Any) -> Deferral:
    doc = _table(doc, "deferred")
    return Deferral(
        _text(doc["proxy_id"], "deferred.proxy_id"),
        _opt_text(doc.get("address"), "deferred.address"),
        _text(doc["reason"], "deferred.reason"),
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
            "rollout": _encode_rollout(inst.rollout),
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
    """Parse a state document. Raises ``StateFormatError`` for anything malformed, and
    ``NewerStateError`` for a document a newer cloudproxy wrote (it must not be replaced)."""
    try:
        if not isinstance(doc, dict):
            raise StateFormatError("the state document is not a JSON object")
        version = doc.get("schema_version")
        if type(version) is int and version > SCHEMA_VERSION:
            raise NewerStateError(
                f"the state file was written by a newer cloudproxy (schema_version {version};"
                f" this version reads {SCHEMA_VERSION}): upgrade cloudproxy, or move the file"
                " away to start with an empty state"
            )
        if version != SCHEMA_VERSION or type(version) is not int:
            raise StateFormatError(f"unsupported schema_version {_short(version)}")
        o = _table(doc.get("overrides") or {}, "overrides")
        overrides = RollingOverrides(
            enabled=_opt_flag(o.get("enabled"), "overrides.enabled"),
            min_available=_opt_count(o.get("min_available"), "overrides.min_available"),
            batch_size=_opt_count(o.get("batch_size"), "overrides.batch_size", minimum=1),
            strategy=_opt_strategy(o.get("strategy")),
        )
        instances = {
            key: _decode_instance(inst)
            for key, inst in _table(doc.get("instances") or {}, "instances").items()
        }
        return State(instances=instances, overrides=overrides)
    except (StateFormatError, NewerStateError):
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateFormatError(f"malformed state document: {exc}") from exc


def _decode_instance(inst: Any) -> InstanceState:
    inst = _table(inst, "instance")
    records = {
        pid: _decode_record(pid, r)
        for pid, r in _table(inst.get("records") or {}, "records").items()
    }
    operations = tuple(
        _decode_operation(op) for op in _list(inst.get("operations") or [], "operations")
    )
    snap = inst.get("snapshot")
    return InstanceState(
        records=records,
        operations=operations,
        snapshot=None if snap is None else decode_snapshot(snap),
        firewall_id=_opt_text(inst.get("firewall_id"), "firewall_id"),
        rollout=_decode_rollout(inst.get("rollout")),
        firewall_checked_at=_parse_ts(inst.get("firewall_checked_at")),
    )


def _decode_record(pid: str, r: Any) -> ProxyRecord:
    r = _table(r, "record")
    return ProxyRecord(
        proxy_id=pid,
        first_seen_at=_req_ts(r["first_seen_at"]),
        established=_flag(r.get("established", False), "established"),
        consecutive_failures=_count(r.get("consecutive_failures", 0), "consecutive_failures"),
        last_healthy_at=_parse_ts(r.get("last_healthy_at")),
    )


def _decode_operation(op: Any) -> RecycleOperation:
    op = _table(op, "operation")
    return RecycleOperation(
        op_id=_text(op["op_id"], "op_id"),
        opened_at=_req_ts(op["opened_at"]),
        strategy=_operation_strategy(op["strategy"]),
        old_id=_opt_text(op.get("old_id"), "old_id"),
        old_address=_opt_text(op.get("old_address"), "old_address"),
        old_created_at=_parse_ts(op.get("old_created_at")),
        old_deleted=_flag(op.get("old_deleted", False), "old_deleted"),
        replacement_id=_opt_text(op.get("replacement_id"), "replacement_id"),
    )
