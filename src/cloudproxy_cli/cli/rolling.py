"""`cloudproxy rolling status|set|reset`: read and change the rolling-deployment knobs.

Reads and writes only the state file: nothing here imports a cloud SDK or adapter.
"""

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudproxy_cli.cli.context import Options, now, options, warn
from cloudproxy_cli.cli.results.rolling import RollingConfigResult, StatusResult
from cloudproxy_cli.core.errors import UsageError
from cloudproxy_cli.core.policy import InstancePolicy, RollingPolicy, Strategy
from cloudproxy_cli.core.state import RollingOverrides, State

if TYPE_CHECKING:
    from cloudproxy_cli.config import LoadedConfig

rolling_app = typer.Typer(
    help="Rolling deployments: see and change how aged proxies are recycled.",
    epilog="Example: cloudproxy rolling status --json",
    no_args_is_help=True,
)


@rolling_app.command("status")
def rolling_status(
    ctx: typer.Context,
    provider: Annotated[str | None, typer.Argument(help="Only this provider.")] = None,
    instance: Annotated[str | None, typer.Argument(help="Only this instance of it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON document.")] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until no aged proxy and no recycle is left (the cron runs do the work).",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="With --wait: give up after this many seconds."),
    ] = None,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.01, help="With --wait: seconds between state reads."),
    ] = 2.0,
) -> StatusResult:
    """Show the rolling-deployment status recorded by the last reconcile run.

    Counts describe each instance's fleet after that run's actions. Reads the state file only:
    no cloud API is called. With --wait, re-reads it until the rollout is done (exit 0) or
    --timeout passes (exit 1, saying what is stuck and why).

    Examples: [bold]cloudproxy rolling status[/bold] ·
    [bold]cloudproxy rolling status digitalocean default --json[/bold] ·
    [bold]cloudproxy rolling status --wait --timeout 900[/bold]
    """
    from cloudproxy_cli.app.status import StatusView, status_document

    if not wait and timeout is not None:
        raise UsageError("--timeout needs --wait")
    opts = options(ctx)
    loaded = opts.load_config()
    store = opts.store()
    settings = loaded.settings
    keys = [f"{p}/{i}" for p, i, _ in settings.enabled_instances()]

    def document(state: State) -> dict[str, Any]:
        from cloudproxy_cli.app.wiring import effective_rolling

        rolling = effective_rolling(loaded, state.overrides)
        view = StatusView(
            now=now(),
            rolling=rolling.policy,
            stale_after=timedelta(seconds=settings.stale_after),
            progress_deadline=timedelta(seconds=settings.rolling_progress_deadline),
            min_scaling={
                f"{p}/{i}": inst.min_scaling for p, i, inst in settings.enabled_instances()
            },
        )
        return status_document(
            state, rolling, keys, view=view, provider=provider, instance=instance
        )

    result = store.load()
    warn(result.warning)
    missing = None if store.path.exists() else store.path
    doc = document(result.state)
    if wait:
        from cloudproxy_cli.cli.wait import wait_for_rollout

        doc = wait_for_rollout(
            doc, store, document, timeout=timeout, interval=interval, as_json=as_json
        )
    return StatusResult(doc, missing, as_json=as_json, quiet=opts.quiet)


@rolling_app.command("set")
def rolling_set(
    ctx: typer.Context,
    enable: Annotated[bool, typer.Option("--enable", help="Turn rolling deployment on.")] = False,
    disable: Annotated[
        bool, typer.Option("--disable", help="Turn rolling deployment off.")
    ] = False,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> RollingConfigResult:
    """Change rolling-deployment settings; they win over env and TOML until `rolling reset`.

    Only the options you give change. Stored in the state file, so they survive restarts.

    Example: [bold]cloudproxy rolling set --enable --batch-size 3[/bold]
    """
    if enable and disable:
        raise UsageError("--enable and --disable contradict each other: give one")
    changes: dict[str, Any] = {
        "enabled": True if enable else False if disable else None,
        "min_available": min_available,
        "batch_size": batch_size,
        "strategy": None if strategy is None else str(strategy),
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise UsageError(
            "nothing to set: give --enable/--disable, --min-available, --batch-size or --strategy"
        )
    return _update(
        options(ctx),
        lambda s: s._replace(overrides=s.overrides._replace(**changes)),
        as_json=as_json,
        check_clamp=min_available is not None,
    )


@rolling_app.command("reset")
def rolling_reset(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> RollingConfigResult:
    """Forget every `rolling set` value: env and TOML apply again.

    Example: [bold]cloudproxy rolling reset[/bold]
    """
    return _update(
        options(ctx), lambda s: s._replace(overrides=RollingOverrides()), as_json=as_json
    )


def _update(
    opts: Options, change: Callable[[State], State], *, as_json: bool, check_clamp: bool = False
) -> RollingConfigResult:
    """Apply ``change`` to the state under the lock (config validated first)."""
    from cloudproxy_cli.app.wiring import effective_rolling

    loaded = opts.load_config()
    state = opts.store().update(change, on_warning=warn)
    rolling = effective_rolling(loaded, state.overrides)
    warnings = _clamped(loaded, rolling.policy) if check_clamp else []
    for warning in warnings:
        warn(warning)
    return RollingConfigResult(rolling, warnings, as_json=as_json)


def _clamped(loaded: "LoadedConfig", policy: RollingPolicy) -> list[str]:
    """Where the minimum in force is lowered: not below MIN_SCALING, or nothing could recycle."""
    found = []
    for provider, name, inst in loaded.settings.enabled_instances():
        effective = InstancePolicy(policy, inst.min_scaling).effective_min_available()
        if effective != policy.min_available:
            found.append(
                f"min-available {policy.min_available} is not below MIN_SCALING "
                f"{inst.min_scaling} of {provider}/{name}: it recycles keeping {effective} "
                "available (MIN_SCALING - 1)"
            )
    return found
