"""The composition root: Typer commands that wire config, state, adapters and the renderer."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.exceptions import TyperException

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.exit_codes import EXIT_CODES_HELP, ExitCode
from cloudproxy_cli.core.errors import (
    CloudProxyError,
    ConfigError,
    LockHeldError,
    ProviderError,
    ProxyNotFoundError,
    UsageError,
)
from cloudproxy_cli.core.policy import Strategy
from cloudproxy_cli.core.state import RollingOverrides, State

if TYPE_CHECKING:
    from cloudproxy_cli.adapters.state_file import StateFile
    from cloudproxy_cli.config import LoadedConfig

log = logging.getLogger("cloudproxy")

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
rolling_app = typer.Typer(
    help="Rolling deployments: see and change how aged proxies are recycled.",
    epilog="Example: cloudproxy rolling status --json",
    no_args_is_help=True,
)
config_app = typer.Typer(
    help="Inspect the configuration.",
    epilog="Example: cloudproxy config show",
    no_args_is_help=True,
)
app.add_typer(rolling_app, name="rolling")
app.add_typer(config_app, name="config")


@dataclass
class Options:
    config: Path | None
    state_file: Path | None

    def load_config(self) -> LoadedConfig:
        from cloudproxy_cli.config import load_config

        loaded = load_config(self.config, os.environ)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        return loaded

    def store(self) -> StateFile:
        from cloudproxy_cli.adapters.state_file import StateFile, resolve_state_path

        return StateFile(resolve_state_path(self.state_file, os.environ))


def _options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


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
    ctx.obj = Options(config, state_file)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def _now() -> datetime:
    return datetime.now(UTC)


# --- reconcile -------------------------------------------------------------------------------


@app.command()
def reconcile(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of text.")
    ] = False,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Only this provider (e.g. local).")
    ] = None,
    instance: Annotated[
        str | None, typer.Option("--instance", help="Only this provider instance (e.g. default).")
    ] = None,
) -> int:
    """Run once: keep each provider instance at MIN_SCALING and recycle aged proxies.

    Lists each enabled instance's proxies (one API call each), probes them all concurrently,
    then deletes and creates proxies under the rolling-deployment rules. Meant for cron:

    [bold]* * * * * cloudproxy --quiet reconcile[/bold]

    Examples: [bold]cloudproxy reconcile --dry-run[/bold] ·
    [bold]cloudproxy reconcile --provider local --json[/bold]
    """
    from cloudproxy_cli.app.service import run_reconcile
    from cloudproxy_cli.app.status import run_document
    from cloudproxy_cli.app.wiring import (
        SystemClock,
        build_runtimes,
        make_prober,
        select_instances,
    )

    opts = _options(ctx)
    loaded = opts.load_config()
    chosen = select_instances(loaded.settings, provider, instance)  # fail fast on a bad filter
    store = opts.store()
    prober = make_prober(loaded.settings, {p for p, _, _ in chosen})
    runtimes: list[Any] = []

    def instances_for(state: State) -> list[Any]:
        runtimes[:] = build_runtimes(
            loaded, state.overrides, store.path, provider=provider, instance=instance
        )
        return runtimes

    try:
        report = run_reconcile(instances_for, store, prober, SystemClock(), dry_run=dry_run)
    finally:
        close = getattr(prober, "close", None)
        if close is not None:
            close()
    code = render.run_exit_code(report)
    policies = {str(r.key): r.policy for r in runtimes}
    if as_json:
        render.print_json(run_document(report, policies, int(code)))
    else:
        render.print_run(report, policies)
    return int(code)


# --- rolling ---------------------------------------------------------------------------------


@rolling_app.command("status")
def rolling_status(
    ctx: typer.Context,
    provider: Annotated[str | None, typer.Argument(help="Only this provider.")] = None,
    instance: Annotated[str | None, typer.Argument(help="Only this instance of it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
) -> int:
    """Show the rolling-deployment status recorded by the last reconcile run.

    Counts describe each instance's fleet after that run's actions. Reads the state file only:
    no cloud API is called.

    Examples: [bold]cloudproxy rolling status[/bold] ·
    [bold]cloudproxy rolling status digitalocean default --json[/bold]
    """
    from cloudproxy_cli.app.status import status_document
    from cloudproxy_cli.app.wiring import effective_rolling

    opts = _options(ctx)
    loaded = opts.load_config()
    result = opts.store().load()
    if result.warning:
        log.warning("%s", result.warning)
    rolling = effective_rolling(loaded, result.state.overrides)
    keys = [f"{p}/{i}" for p, i, _ in loaded.settings.enabled_instances()]
    doc = status_document(
        result.state, rolling, keys, now=_now(), provider=provider, instance=instance
    )
    if as_json:
        render.print_json(doc)
    else:
        render.print_status(doc)
    return ExitCode.OK


@rolling_app.command("set")
def rolling_set(
    ctx: typer.Context,
    enable: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="Turn rolling deployment on or off."),
    ] = None,
    min_available: Annotated[
        int | None,
        typer.Option(
            "--min-available", min=0, help="Healthy proxies to keep while recycling (>= 0)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Proxies recycled at once (>= 1)."),
    ] = None,
    strategy: Annotated[
        Strategy | None,
        typer.Option(
            "--strategy",
            help="replace: delete, then create. surge: create first, delete once healthy.",
        ),
    ] = None,
) -> int:
    """Change rolling-deployment settings; they win over env and TOML until `rolling reset`.

    Only the options you give change. Stored in the state file, so they survive restarts.

    Example: [bold]cloudproxy rolling set --enable --batch-size 3[/bold]
    """
    from cloudproxy_cli.app.wiring import effective_rolling

    changes: dict[str, Any] = {
        "enabled": enable,
        "min_available": min_available,
        "batch_size": batch_size,
        "strategy": None if strategy is None else str(strategy),
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise UsageError(
            "nothing to set: give --enable/--disable, --min-available, --batch-size or --strategy"
        )
    opts = _options(ctx)
    loaded = opts.load_config()
    state = opts.store().update(
        lambda s: replace(s, overrides=replace(s.overrides, **changes)),
        on_warning=lambda w: log.warning("%s", w),
    )
    render.print_rolling_config(effective_rolling(loaded, state.overrides))
    return ExitCode.OK


@rolling_app.command("reset")
def rolling_reset(ctx: typer.Context) -> int:
    """Forget every `rolling set` value: env and TOML apply again.

    Example: [bold]cloudproxy rolling reset[/bold]
    """
    from cloudproxy_cli.app.wiring import effective_rolling

    opts = _options(ctx)
    loaded = opts.load_config()
    state = opts.store().update(
        lambda s: replace(s, overrides=RollingOverrides()),
        on_warning=lambda w: log.warning("%s", w),
    )
    render.print_rolling_config(effective_rolling(loaded, state.overrides))
    return ExitCode.OK


# --- proxies, destroy, config -------------------------------------------------------------------


@app.command()
def destroy(
    ctx: typer.Context,
    address: Annotated[
        str, typer.Argument(help="The proxy's address as status shows it (IP, or ip:port).")
    ],
) -> int:
    """Delete one proxy now, bypassing the rolling rules; the next reconcile replaces it.

    Example: [bold]cloudproxy destroy 203.0.113.7[/bold]
    """
    from cloudproxy_cli.app.service import destroy_proxy
    from cloudproxy_cli.app.wiring import SystemClock, build_runtimes

    opts = _options(ctx)
    loaded = opts.load_config()
    store = opts.store()
    runtimes = build_runtimes(loaded, store.load().state.overrides, store.path)
    result = destroy_proxy(address, runtimes, store, SystemClock())
    render.console().print(
        f"Destroyed {result.proxy.address or result.proxy.id} ({result.proxy.id}) in "
        f"{result.key}; the next reconcile creates its replacement."
    )
    return ExitCode.OK


@app.command()
def proxies(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> int:
    """List the proxies with their URLs (credentials included), state and age.

    Example: [bold]cloudproxy proxies --json[/bold]
    """
    from cloudproxy_cli.app.wiring import build_runtimes

    opts = _options(ctx)
    loaded = opts.load_config()
    store = opts.store()
    state = store.load().state
    username, password = loaded.settings.proxy_credentials()
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    runtimes = build_runtimes(loaded, state.overrides, store.path)
    for runtime in runtimes:
        try:
            listed = runtime.provider.list_proxies()
        except ProviderError as exc:
            log.error("Could not list the proxies of %s: %s", runtime.key, exc)
            errors.append(str(exc))
            continue
        snap = state.instance(str(runtime.key)).snapshot
        rows += render.proxy_rows(
            runtime.key, listed, snap, username, password, runtime.proxy_port, _now()
        )
    if as_json:
        render.print_json({"proxies": rows, "errors": errors})
    else:
        render.print_proxies(rows)
    if errors:
        return ExitCode.PARTIAL if len(errors) < len(runtimes) else ExitCode.FAILURE
    return ExitCode.OK


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> int:
    """Print every effective setting and where it came from; secrets are masked.

    Example: [bold]cloudproxy --config cloudproxy.toml.example config show[/bold]
    """
    from cloudproxy_cli.adapters.state_file import STATE_FILE_ENV
    from cloudproxy_cli.config import describe

    opts = _options(ctx)
    loaded = opts.load_config()
    rows = [(r.name, r.value, r.source) for r in describe(loaded)]
    state_source = (
        "--state-file"
        if opts.state_file
        else f"env {STATE_FILE_ENV}"
        if os.environ.get(STATE_FILE_ENV, "").strip()
        else "default"
    )
    rows.append(("state_file", str(opts.store().path), state_source))
    rows.append(("config_file", str(loaded.file) if loaded.file else "(none)", "resolved"))
    if as_json:
        render.print_json({"settings": [{"name": n, "value": v, "source": s} for n, v, s in rows]})
    else:
        render.print_config(rows)
    return ExitCode.OK


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


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (``main`` exits with it)."""
    try:
        result = app(args=argv, prog_name="cloudproxy", standalone_mode=False)
    except typer.Abort:
        _error("aborted")
        return ExitCode.FAILURE
    except TyperException as exc:  # Typer's (vendored click's) usage errors: bad option, value
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _error(message + hint)
        return int(getattr(exc, "exit_code", ExitCode.USAGE))
    except CloudProxyError as exc:
        _error(str(exc))
        return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:  # a bug: say so in one line; CLOUDPROXY_DEBUG=1 shows the traceback
        if os.environ.get("CLOUDPROXY_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set CLOUDPROXY_DEBUG=1 for details)")
        return ExitCode.FAILURE
    if isinstance(result, int):
        return result
    return ExitCode.OK


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
