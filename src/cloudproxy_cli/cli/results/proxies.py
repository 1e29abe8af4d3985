"""`proxies`, `proxies random` and `destroy` results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.exit_codes import ExitCode
from cloudproxy_cli.cli.results import CommandResult

if TYPE_CHECKING:
    from rich.console import Console

    from cloudproxy_cli.app.service import DestroyReport


@dataclass(eq=False)
class DestroyResult(CommandResult):
    report: DestroyReport

    def render(self, out: Console) -> None:
        proxy = self.report.proxy
        out.print(
            f"Destroyed {proxy.address or proxy.id} ({proxy.id}) in {self.report.key}; "
            "the next reconcile creates its replacement."
        )

    def document(self) -> Any:
        proxy = self.report.proxy
        return {
            "destroyed": {
                "instance": str(self.report.key),
                "id": proxy.id,
                "address": proxy.address,
            }
        }


@dataclass(eq=False)
class ProxiesResult(CommandResult):
    """The proxies of ``instances`` instances; ``errors`` for those that could not be listed."""

    rows: list[dict[str, Any]]
    instances: int
    errors: list[str] = field(default_factory=list)
    plain: bool = False  # --plain: the URLs alone, one per line

    @property
    def exit_code(self) -> ExitCode:
        if not self.errors:
            return ExitCode.OK
        return ExitCode.PARTIAL if len(self.errors) < self.instances else ExitCode.FAILURE

    def render(self, out: Console) -> None:
        if self.plain:
            out.file.write("".join(f"{r['url']}\n" for r in self.rows if r["url"]))
        else:
            render.print_proxies(out, self.rows)

    def document(self) -> Any:
        return {"proxies": self.rows, "errors": self.errors}


@dataclass(eq=False)
class RandomProxyResult(CommandResult):
    """`proxies random`: one healthy proxy."""

    row: dict[str, Any]

    def render(self, out: Console) -> None:
        out.file.write(f"{self.row['url']}\n")

    def document(self) -> Any:
        return {"proxy": self.row}
