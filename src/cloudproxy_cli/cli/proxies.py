"""`cloudproxy proxies` and `cloudproxy destroy`: list the proxies, delete one by hand."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.context import now, options, warn
from cloudproxy_cli.cli.results.proxies import DestroyResult, ProxiesResult, RandomProxyResult
from cloudproxy_cli.core.errors import CloudProxyError, ProviderError, UsageError

if TYPE_CHECKING:
    from cloudproxy_cli.app.service import InstanceRuntime
    from cloudproxy_cli.config import LoadedConfig
    from cloudproxy_cli.core.state import State

log = logging.getLogger("cloudproxy")


def destroy(
    ctx: typer.Context,
    address: Annotated[
        str, typer.Argument(help="The proxy's address as status shows it (IP, or ip:port).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> DestroyResult:
    """Delete one proxy now, bypassing the rolling rules; the next reconcile replaces it.

    Example: [bold]cloudproxy destroy 203.0.113.7[/bold]
    """
    from cloudproxy_cli.app.service import destroy_proxy
    from cloudproxy_cli.app.wiring import SystemClock, build_runtimes

    opts = options(ctx)
    loaded = opts.load_config()
    store = opts.store()
    # A write: a corrupt state file is moved aside first, not overwritten by the save.
    with store.lock():
        warn(store.recover())
        runtimes = build_runtimes(loaded, store.load().state.overrides, store.path)
        report = destroy_proxy(address, runtimes, store, SystemClock())
    return DestroyResult(report, as_json=as_json)


proxies_app = typer.Typer(
    help="List the proxies; `proxies random` prints one healthy proxy's URL.",
    epilog='Examples: cloudproxy proxies --plain · curl -x "$(cloudproxy proxies random)" URL',
)


@proxies_app.callback(invoke_without_command=True)
def proxies(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="Only the URLs, one per line (for scripts).")
    ] = False,
) -> ProxiesResult | None:
    """List the proxies with their URLs (credentials included), state and age.

    Examples: [bold]cloudproxy proxies --json[/bold] · [bold]cloudproxy proxies --plain[/bold]
    """
    if ctx.invoked_subcommand is not None:
        return None  # `proxies random` does its own listing
    if as_json and plain:
        raise UsageError("--json and --plain: give one")
    rows, instances, errors = _list(ctx)
    return ProxiesResult(rows, instances, errors, plain=plain, as_json=as_json)


@proxies_app.command("random")
def random_proxy(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> RandomProxyResult:
    """Print the URL of one healthy proxy, picked at random; exit 1 if there is none.

    Healthy as of the last reconcile. Example: [bold]curl -x "$(cloudproxy proxies random)"
    https://example.com/[/bold]
    """
    rows, _, _ = _list(ctx)
    healthy = [r for r in rows if r["state"] == "healthy" and r["url"]]
    if not healthy:
        raise CloudProxyError(
            f"no healthy proxy (of {len(rows)} listed): run `cloudproxy reconcile`, then try again"
        )
    import secrets  # here, not at every command's start-up

    return RandomProxyResult(secrets.choice(healthy), as_json=as_json)


def _list(ctx: typer.Context) -> tuple[list[dict[str, Any]], int, list[str]]:
    """Every instance's proxies as rows, how many instances, and the listing errors."""
    from cloudproxy_cli.app.wiring import build_runtimes

    opts = options(ctx)
    loaded = opts.load_config()
    store = opts.store()
    loaded_state = store.load()
    warn(loaded_state.warning)
    runtimes = build_runtimes(loaded, loaded_state.state.overrides, store.path)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for runtime in runtimes:
        try:
            rows += _rows(runtime, loaded, loaded_state.state)
        except ProviderError as exc:
            log.error("Could not list the proxies of %s: %s", runtime.key, exc)
            errors.append(str(exc))
    return rows, len(runtimes), errors


def _rows(runtime: InstanceRuntime, loaded: LoadedConfig, state: State) -> list[dict[str, Any]]:
    username, password = loaded.settings.proxy_credentials()
    listed = runtime.provider.list_proxies()
    snap = state.instance(str(runtime.key)).snapshot
    return render.proxy_rows(
        runtime.key, listed, snap, username, password, runtime.proxy_port, now()
    )
