"""What each command returns: its outcome, the exit code it means, its text and JSON forms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudproxy_cli.app.status import run_document
from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    from rich.console import Console

    from cloudproxy_cli.app.service import DestroyReport, RunReport
    from cloudproxy_cli.core.policy import EffectiveRolling, InstancePolicy


@dataclass(frozen=True, kw_only=True)
class CommandResult(ABC):
    """A command's outcome. ``render.emit`` prints it (``as_json``: ``document()``, else
    ``render()``) and ``run`` exits with ``exit_code``; commands decide no exit code."""

    as_json: bool = False

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK

    @abstractmethod
    def render(self, out: Console) -> None: ...

    def document(self) -> Any:
        # Only commands with a --json option set as_json; the others never get here.
        raise TypeError(f"{type(self).__name__} has no JSON form")


@dataclass(frozen=True)
class ReconcileResult(CommandResult):
    report: RunReport
    policies: dict[str, InstancePolicy]

    @property
    def exit_code(self) -> ExitCode:
        instances = self.report.instances
        if instances and all(i.error is not None for i in instances):
            return ExitCode.FAILURE  # no instance could even be listed
        if any(i.failed for i in instances):
            return ExitCode.PARTIAL
        capped = any(i.plan is not None and i.plan.caps_reached for i in instances)
        return ExitCode.DEGRADED if capped else ExitCode.OK

    def render(self, out: Console) -> None:
        render.print_run(out, self.report, self.policies)

    def document(self) -> Any:
        return run_document(self.report, self.policies, int(self.exit_code))


@dataclass(frozen=True)
class StatusResult(CommandResult):
    doc: dict[str, Any]

    def render(self, out: Console) -> None:
        render.print_status(out, self.doc)

    def document(self) -> Any:
        return self.doc


@dataclass(frozen=True)
class RollingConfigResult(CommandResult):
    """The rolling knobs in force after `rolling set` or `rolling reset`."""

    rolling: EffectiveRolling

    def render(self, out: Console) -> None:
        render.print_rolling_config(out, self.rolling)


@dataclass(frozen=True)
class DestroyResult(CommandResult):
    report: DestroyReport

    def render(self, out: Console) -> None:
        proxy = self.report.proxy
        out.print(
            f"Destroyed {proxy.address or proxy.id} ({proxy.id}) in {self.report.key}; "
            "the next reconcile creates its replacement."
        )


@dataclass(frozen=True)
class ProxiesResult(CommandResult):
    """The proxies of ``instances`` instances; ``errors`` for those that could not be listed."""

    rows: list[dict[str, Any]]
    instances: int
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if not self.errors:
            return ExitCode.OK
        return ExitCode.PARTIAL if len(self.errors) < self.instances else ExitCode.FAILURE

    def render(self, out: Console) -> None:
        render.print_proxies(out, self.rows)

    def document(self) -> Any:
        return {"proxies": self.rows, "errors": self.errors}


@dataclass(frozen=True)
class ConfigResult(CommandResult):
    rows: list[tuple[str, str, str]]  # name, value (secrets masked), source

    def render(self, out: Console) -> None:
        render.print_config(out, self.rows)

    def document(self) -> Any:
        return {"settings": [{"name": n, "value": v, "source": s} for n, v, s in self.rows]}
