"""`rolling status`, `rolling set` and `rolling reset` results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.results import CommandResult

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from cloudproxy_cli.core.policy import EffectiveRolling


@dataclass(eq=False)
class StatusResult(CommandResult):
    doc: dict[str, Any]
    missing_state: Path | None = None  # the state file, when no run has written it yet

    def render(self, out: Console) -> None:
        render.print_status(out, self.doc)

    def notes(self) -> list[str]:
        if self.missing_state is None:
            return []
        return [f"no state file at {self.missing_state} yet: run `cloudproxy reconcile` first"]

    def document(self) -> Any:
        return self.doc


@dataclass(eq=False)
class RollingConfigResult(CommandResult):
    """The rolling knobs in force after `rolling set` or `rolling reset`."""

    rolling: EffectiveRolling
    warnings: list[str] = field(default_factory=list)

    def render(self, out: Console) -> None:
        render.print_rolling_config(out, self.rolling)

    def document(self) -> Any:
        p = self.rolling.policy
        return {
            "config": {
                "enabled": p.enabled,
                "min_available": p.min_available,
                "batch_size": p.batch_size,
                "strategy": str(p.strategy),
                "sources": self.rolling.sources,
            },
            "warnings": self.warnings,
        }
