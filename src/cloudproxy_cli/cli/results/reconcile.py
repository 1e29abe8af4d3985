"""`reconcile`'s result: the run report, its exit code, its text and JSON forms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.exit_codes import ExitCode
from cloudproxy_cli.cli.results import CommandResult
from cloudproxy_cli.core.phase import degraded_reasons, rollout_stalled

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from cloudproxy_cli.app.service import RunReport
    from cloudproxy_cli.core.policy import InstancePolicy


@dataclass(eq=False)
class ReconcileResult(CommandResult):
    report: RunReport
    policies: dict[str, InstancePolicy]
    detailed_exitcode: bool = False  # exit 2 when a dry run plans changes (terraform plan's -d)
    metrics_file: Path | None = None  # --metrics-file / METRICS_FILE
    metrics_error: str | None = None  # the metrics file could not be written (already reported)

    @property
    def exit_code(self) -> ExitCode:
        # Precedence: failure (1) > partial (3) > degraded (6) > ok (0).
        instances = self.report.instances
        if self.metrics_error is not None:
            return ExitCode.FAILURE  # a local I/O failure after the run did its work
        if instances and all(i.error is not None for i in instances):
            return ExitCode.FAILURE  # no instance could even be listed
        if any(i.failed for i in instances):
            return ExitCode.PARTIAL
        summary = self.summary()
        if self.detailed_exitcode and summary["create"] + summary["delete"]:
            return ExitCode.CHANGES_PENDING
        capped = any(i.plan is not None and i.plan.caps_reached for i in instances)
        return ExitCode.DEGRADED if capped or self.degraded() else ExitCode.OK

    def degraded(self) -> dict[str, tuple[str, ...]]:
        """Per degraded instance, why (a stalled rollout, too few healthy proxies)."""
        found = {
            str(i.key): degraded_reasons(i.snapshot, self.policies[str(i.key)])
            for i in self.report.instances
            if i.error is None
        }
        return {key: reasons for key, reasons in found.items() if reasons}

    def stalled(self) -> frozenset[str]:
        """The instances whose rollout the run left stalled (by the last snapshot, as exit 6)."""
        return frozenset(
            str(i.key)
            for i in self.report.instances
            if rollout_stalled(i.snapshot, self.policies[str(i.key)])
        )

    def summary(self) -> dict[str, int]:
        """Actions planned (dry run) or done, deferrals, and failures (actions and instances)."""
        counts = {"create": 0, "delete": 0, "deferred": 0, "failed": 0}
        for inst in self.report.instances:
            counts["failed"] += inst.error is not None
            if inst.plan is None:
                continue
            counts["deferred"] += len(inst.plan.deferrals)
            if self.report.dry_run:
                counts["create"] += len(inst.plan.creates)
                counts["delete"] += len(inst.plan.deletes)
                continue
            for outcome in inst.outcomes:
                verb = "create" if outcome.created is not None else "delete"
                counts[verb if outcome.ok else "failed"] += 1
        return counts

    def _quiet_run(self) -> bool:
        """Nothing was (or would be) done and nothing failed: cron's --quiet prints nothing."""
        s = self.summary()
        return self.quiet and not (s["create"] or s["delete"] or s["failed"])

    def render(self, out: Console) -> None:
        if not self._quiet_run():
            render.print_run(out, self.report, self.policies)
        # Degraded is never noise, not even under --quiet: the pool is below what it should be.
        for key, reasons in self.degraded().items():
            for reason in reasons:
                out.print(f"{key}: degraded: {reason}")

    def notes(self) -> list[str]:
        if not self.report.dry_run:
            return []
        s = self.summary()
        line = (
            f"dry run: {s['create']} to create, {s['delete']} to delete, {s['deferred']} deferred"
        )
        notes = [line + (f", {s['failed']} failed" if s["failed"] else "")]
        if self.metrics_file is not None:
            notes.append(f"dry run: metrics file {self.metrics_file} not written")
        return notes

    def document(self) -> Any:
        from cloudproxy_cli.app.status import run_document

        doc = run_document(self.report, self.policies, int(self.exit_code), self.degraded())
        stalled = self.stalled()
        for key, inst in doc["instances"].items():
            inst["stalled"] = key in stalled
        doc["summary"] = self.summary()
        doc["metrics_error"] = self.metrics_error
        return doc
