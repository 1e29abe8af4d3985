"""What each command returns: its outcome, the exit code it means, its text and JSON forms.

The base class here; each command group's results in a module of its own, so that a command
imports (and creates the classes of) its own results only: start-up time, issue 8.9."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudproxy_cli.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(eq=False, kw_only=True)
class CommandResult(ABC):
    """A command's outcome. ``render.emit`` prints it (``as_json``: ``document()``, else
    ``render()``) and ``run`` exits with ``exit_code``; commands decide no exit code.

    Results are built once and printed, never compared: ``eq=False`` and not frozen, since
    each generated method is compiled when the class is created, at every start-up."""

    as_json: bool = False
    quiet: bool = False  # --quiet: no notes, and no text at all when there is nothing to say

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK

    @abstractmethod
    def render(self, out: Console) -> None: ...

    def notes(self) -> list[str]:
        """Lines for stderr after the result (a summary, a hint); ``--quiet`` drops them."""
        return []

    def document(self) -> Any:
        # Only commands with a --json option set as_json; the others never get here.
        raise TypeError(f"{type(self).__name__} has no JSON form")


@dataclass(eq=False)
class TextResult(CommandResult):
    """Text printed exactly as it is: never wrapped, styled or cut (scripts, URL lists)."""

    text: str

    def render(self, out: Console) -> None:
        out.file.write(self.text)
