"""A reconcile run as Prometheus metrics, written atomically for the node_exporter textfile."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cloudproxy_cli.app.service import InstanceReport, RunReport
from cloudproxy_cli.app.status import counts_after
from cloudproxy_cli.core.errors import CloudProxyError
from cloudproxy_cli.core.plan import CreateAction
from cloudproxy_cli.core.policy import InstancePolicy

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# The proxy states `cloudproxy_proxies` reports, in the order `rolling status` shows them.
PROXY_STATES = ("healthy", "pending", "pending_recycle", "recycling", "unhealthy", "aged")

# The spec's log lines (they are also the JSON run report's "log"): one per recycle event.
MARKED = "Rolling deployment: Marked "
COMPLETED = "Rolling deployment: Completed recycling "

LAST_SUCCESS = "cloudproxy_last_success_timestamp_seconds"
INSTANCE_LABELS = ("provider", "instance")


class MetricsError(CloudProxyError):
    """The metrics file cannot be written. The message names the path."""


def proxy_counts(
    report: InstanceReport, policy: InstancePolicy, now: datetime
) -> dict[str, int] | None:
    """The fleet after the run per state, or ``None`` when the instance was never observed.

    The four counts of the JSON run report come from ``counts_after`` itself, so that the two
    always agree; unhealthy and aged come from the same snapshot.
    """
    counts = counts_after(report, policy, now)
    snap = report.snapshot
    if not counts or snap is None:
        return None
    return {
        **{k: counts[k] for k in ("healthy", "pending", "pending_recycle", "recycling")},
        "unhealthy": len(snap.unhealthy_ips),
        "aged": len(snap.aged_ips),
        "in_flight": counts["in_flight"],
    }


def error_kinds(report: InstanceReport) -> dict[str, int]:
    """The errors of ``report.errors()`` by the call that failed: list, create or delete."""
    kinds = {"list": 0, "create": 0, "delete": 0}
    if report.error:
        kinds["list"] += 1  # the only instance-level error: its inventory could not be read
    for o in report.outcomes:
        if not o.ok and o.error:
            kinds["create" if isinstance(o.action, CreateAction) else "delete"] += 1
    return kinds


def previous_last_success(path: Path) -> dict[tuple[str, str], float]:
    """The last-success timestamps in the file this run replaces, so that they survive a failure.

    A missing or unparsable file gives none: the metric then starts again from this run.
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
        found: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == LAST_SUCCESS:
                    found[(s.labels["provider"], s.labels["instance"])] = s.value
    except (OSError, UnicodeError, ValueError, KeyError):
        return {}
    return found


def build_registry(
    report: RunReport,
    policies: Mapping[str, InstancePolicy],
    *,
    now: datetime,
    stalled: Collection[str] = (),
    previous_success: Mapping[tuple[str, str], float] | None = None,
) -> CollectorRegistry:
    """A fresh registry holding the metrics of one real (not dry) run.

    ``policies`` is keyed by instance key (``provider/instance``), as for ``run_document``;
    ``stalled`` holds the keys of the instances whose rollout is stalled; ``previous_success``
    carries the last-success timestamps of instances that failed this run.
    """
    from prometheus_client import CollectorRegistry, Gauge

    if report.dry_run:
        raise ValueError("a dry run changes nothing: its metrics would describe a plan")
    registry = CollectorRegistry(auto_describe=True)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = INSTANCE_LABELS) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    proxies = gauge(
        "cloudproxy_proxies",
        "Proxies after the run, by state (as rolling status shows them).",
        (*INSTANCE_LABELS, "state"),
    )
    in_flight = gauge("cloudproxy_recycles_in_flight", "Recycle operations open after the run.")
    started = gauge(
        "cloudproxy_run_recycles_started", "Proxies marked for recycling in the last run."
    )
    completed = gauge("cloudproxy_run_recycles_completed", "Recycles completed in the last run.")
    deferrals = gauge(
        "cloudproxy_run_deferrals", "Aged proxies whose recycling the last run deferred."
    )
    errors = gauge(
        "cloudproxy_run_provider_errors",
        "Provider calls that failed in the last run, by call (list, create, delete).",
        (*INSTANCE_LABELS, "kind"),
    )
    ok = gauge("cloudproxy_instance_ok", "1 if the last run reconciled the instance without error.")
    success = gauge(LAST_SUCCESS, "When a run last reconciled the instance without error.")
    rollout = gauge(
        "cloudproxy_rollout_in_progress",
        "1 while aged proxies remain or recycle operations are open, else 0.",
    )
    stalled_g = gauge("cloudproxy_rollout_stalled", "1 if the instance's rollout is stalled.")
    min_available = gauge("cloudproxy_min_available", "The effective minimum of available proxies.")

    kept = previous_success or {}
    for inst in report.instances:
        key = str(inst.key)
        labels = (inst.key.provider, inst.key.instance)
        counts = proxy_counts(inst, policies[key], report.started_at)
        if counts is not None:
            for state in PROXY_STATES:
                proxies.labels(*labels, state).set(counts[state])
            in_flight.labels(*labels).set(counts["in_flight"])
            rollout.labels(*labels).set(int(counts["in_flight"] > 0 or counts["aged"] > 0))
        if inst.snapshot is not None:
            min_available.labels(*labels).set(inst.snapshot.effective_min_available)
        started.labels(*labels).set(sum(line.startswith(MARKED) for line in inst.log))
        completed.labels(*labels).set(sum(line.startswith(COMPLETED) for line in inst.log))
        deferrals.labels(*labels).set(0 if inst.plan is None else len(inst.plan.deferrals))
        for kind, n in error_kinds(inst).items():
            errors.labels(*labels, kind).set(n)
        ok.labels(*labels).set(int(not inst.failed))
        if not inst.failed:
            success.labels(*labels).set(report.started_at.timestamp())
        elif labels in kept:
            success.labels(*labels).set(kept[labels])
        stalled_g.labels(*labels).set(int(key in stalled))

    gauge("cloudproxy_run_duration_seconds", "Wall time of the last run.", ()).set(
        max(0.0, (now - report.started_at).total_seconds())
    )
    gauge("cloudproxy_run_timestamp_seconds", "When the last run started.", ()).set(
        report.started_at.timestamp()
    )
    return registry


def write_metrics(
    path: Path,
    report: RunReport,
    policies: Mapping[str, InstancePolicy],
    *,
    now: datetime,
    stalled: Collection[str] = (),
) -> None:
    """Write the run's metrics to ``path`` in the textfile format: all of it or nothing.

    The text goes to a hidden temp file in the same directory (node_exporter reads only
    ``*.prom``), is flushed to disk, made 0644 and renamed over ``path``. Any failure raises
    ``MetricsError`` and leaves the old file (if any) untouched and no temp file behind.
    """
    from prometheus_client import generate_latest

    registry = build_registry(
        report,
        policies,
        now=now,
        stalled=stalled,
        previous_success=previous_last_success(path),
    )
    _write_atomically(path, generate_latest(registry))


def _write_atomically(path: Path, data: bytes) -> None:
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # node_exporter may run as another user
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        reason = exc.strerror or type(exc).__name__
        raise MetricsError(f"cannot write the metrics file {path}: {reason}") from None
