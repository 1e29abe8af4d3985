"""`config show`'s result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.results import CommandResult

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class SettingRow:
    """One line of `config show`: the value as text (secrets masked), its source, and the
    value for JSON (int, float, bool, null for unset, text otherwise; secrets masked)."""

    name: str
    value: str
    source: str
    typed: object


@dataclass(eq=False)
class ConfigResult(CommandResult):
    rows: list[SettingRow]

    def render(self, out: Console) -> None:
        render.print_config(out, [(r.name, r.value, r.source) for r in self.rows])

    def document(self) -> Any:
        return {
            "settings": [{"name": r.name, "value": r.typed, "source": r.source} for r in self.rows]
        }
