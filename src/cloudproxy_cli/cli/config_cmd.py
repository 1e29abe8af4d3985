"""`cloudproxy config show`: every effective setting and where it came from."""

from __future__ import annotations

from typing import Annotated

import typer

from cloudproxy_cli.cli.context import options
from cloudproxy_cli.cli.results import ConfigResult

config_app = typer.Typer(
    help="Inspect the configuration.",
    epilog="Example: cloudproxy config show",
    no_args_is_help=True,
)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> ConfigResult:
    """Print every effective setting and where it came from; secrets are masked.

    Example: [bold]cloudproxy --config cloudproxy.toml.example config show[/bold]
    """
    from cloudproxy_cli.config import describe

    opts = options(ctx)
    loaded = opts.load_config()
    rows = [(r.name, r.value, r.source) for r in describe(loaded)]
    store = opts.store()
    rows.append(("state_file", str(store.path), store.source))
    rows.append(("config_file", str(loaded.file) if loaded.file else "(none)", "resolved"))
    return ConfigResult(rows, as_json=as_json)
