"""The `cloudproxy` command: the root Typer app, its global options, and errors → exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.config_cmd import config_app
from cloudproxy_cli.cli.context import Options
from cloudproxy_cli.cli.exit_codes import EXIT_CODES_HELP, ExitCode
from cloudproxy_cli.cli.proxies import destroy, proxies
from cloudproxy_cli.cli.reconcile import reconcile
from cloudproxy_cli.cli.results import CommandResult
from cloudproxy_cli.cli.rolling import rolling_app
from cloudproxy_cli.core.errors import (
    CloudProxyError,
    ConfigError,
    LockHeldError,
    ProxyNotFoundError,
    UsageError,
)

app = typer.Typer(
    name="cloudproxy",
    help=(
        "Keep a pool of HTTP proxies on cloud VMs (or on this machine with the local provider) "
        "and recycle them by age without the pool dropping below a safe minimum.\n\n"
        "Run [bold]cloudproxy reconcile[/bold] from cron every minute; read "
        "[bold]cloudproxy rolling status[/bold]; change knobs with "
        "[bold]cloudproxy rolling set[/bold].\n\n" + EXIT_CODES_HELP
    ),
    epilog="Example: cloudproxy --config cloudproxy.toml.example reconcile",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(reconcile)
app.add_typer(rolling_app, name="rolling")
app.command()(destroy)
app.command()(proxies)
app.add_typer(config_app, name="config")


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML config file. Default: $CLOUDPROXY_CONFIG, else ./cloudproxy.toml, "
            "else cloudproxy.toml in your user config directory.",
            dir_okay=False,
        ),
    ] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(
            "--state-file",
            help="State file. Default: $CLOUDPROXY_STATE_FILE, else state.json in your user "
            "state directory.",
            dir_okay=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log only warnings and errors.")
    ] = False,
) -> None:
    render.setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    # run() hands its environment in as ctx.obj; the commands find it in the Options.
    environ = ctx.obj if isinstance(ctx.obj, Mapping) else os.environ
    ctx.obj = Options(config, state_file, environ, quiet=quiet and not verbose)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


# --- entry point -----------------------------------------------------------------------------


def _error(message: str) -> None:
    # One line, on stderr, whatever the error: no traceback for anything the user can fix.
    sys.stderr.write(f"cloudproxy: error: {' '.join(message.split())}\n")


# Most specific first: ProxyNotFoundError is a ProviderError, which is a plain failure.
_EXIT_CODES: tuple[tuple[type[CloudProxyError], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (ProxyNotFoundError, ExitCode.USAGE),
    (ConfigError, ExitCode.CONFIG),
    (LockHeldError, ExitCode.LOCKED),
    (CloudProxyError, ExitCode.FAILURE),
)


def _usage_error(exc: TyperException) -> int:
    """Typer's (vendored click's) usage errors: bad option, bad value."""
    ctx = getattr(exc, "ctx", None)
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    _error(message + hint)
    return int(getattr(exc, "exit_code", ExitCode.USAGE))


def _invoke(argv: list[str] | None, environ: Mapping[str, str]) -> int:
    result = app(args=argv, prog_name="cloudproxy", standalone_mode=False, obj=environ)
    if isinstance(result, CommandResult):
        return int(render.emit(result))
    # --help and the like: click returns their exit code.
    return result if isinstance(result, int) else ExitCode.OK


def run(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the CLI and return its exit code (``main`` exits with it).

    Settings are read from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    try:
        return _invoke(argv, env)
    except typer.Abort:
        _error("aborted")
        return ExitCode.FAILURE
    except TyperException as exc:
        return _usage_error(exc)
    except CloudProxyError as exc:
        _error(str(exc))
        return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:  # a bug: say so in one line; CLOUDPROXY_DEBUG=1 shows the traceback
        if env.get("CLOUDPROXY_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set CLOUDPROXY_DEBUG=1 for details)")
        return ExitCode.FAILURE


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
