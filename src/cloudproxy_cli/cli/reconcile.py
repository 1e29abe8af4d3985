"""`cloudproxy reconcile`: one run of the rolling-deployment loop, meant for cron."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudproxy_cli.cli.context import error, now, options, path_option, warn
from cloudproxy_cli.cli.results.reconcile import ReconcileResult
from cloudproxy_cli.core.errors import UsageError

if TYPE_CHECKING:
    from cloudproxy_cli.adapters.state_file import StateFile
    from cloudproxy_cli.app.service import InstanceRuntime, RunReport
    from cloudproxy_cli.core.ports import Prober
    from cloudproxy_cli.core.state import State


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
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="With --dry-run: exit 0 when there is nothing to do, 2 when changes are "
            "pending (like terraform plan).",
        ),
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Write the run's Prometheus metrics here (node_exporter textfile format). "
            "Default: $METRICS_FILE, else metrics_file in the config; none if unset. "
            "Not written by --dry-run, nor when another run holds the lock.",
            parser=path_option,
            metavar="PATH",
        ),
    ] = None,
) -> ReconcileResult:
    """Run once: keep each provider instance at MIN_SCALING and recycle aged proxies.

    Lists each enabled instance's proxies (one API call each), probes them all concurrently,
    then deletes and creates proxies under the rolling-deployment rules. Meant for cron:

    [bold]* * * * * cloudproxy --quiet reconcile[/bold]

    Examples: [bold]cloudproxy reconcile --dry-run --detailed-exitcode[/bold] ·
    [bold]cloudproxy reconcile --provider local --json[/bold]
    """
    from cloudproxy_cli.app.wiring import build_runtimes, make_prober, select_instances

    if detailed_exitcode and not dry_run:
        raise UsageError("--detailed-exitcode needs --dry-run")
    opts = options(ctx)
    loaded = opts.load_config()
    chosen = select_instances(loaded.settings, provider, instance)  # fail fast on a bad filter
    store = opts.store()
    prober = make_prober(loaded.settings, {p for p, _, _ in chosen})
    runtimes: list[InstanceRuntime] = []

    def instances_for(state: State) -> Sequence[InstanceRuntime]:
        runtimes[:] = build_runtimes(
            loaded, state.overrides, store.path, provider=provider, instance=instance
        )
        return runtimes

    try:
        report = _run(instances_for, store, prober, dry_run=dry_run)
    finally:
        close = getattr(prober, "close", None)
        if close is not None:
            close()
    policies = {str(r.key): r.policy for r in runtimes}
    configured = loaded.settings.metrics_file
    result = ReconcileResult(
        report,
        policies,
        detailed_exitcode,
        as_json=as_json,
        quiet=opts.quiet,
        metrics_file=metrics_file or (Path(configured) if configured else None),
    )
    return result if dry_run else _write_metrics(result)


def _write_metrics(result: ReconcileResult) -> ReconcileResult:
    """After a real run, failed instances included: that is when metrics matter most. A file
    that cannot be written is a one-line error and exit 1; the run's actions stand (saved)."""
    from cloudproxy_cli.app.metrics import MetricsError, write_metrics

    if result.metrics_file is None:
        return result
    try:
        write_metrics(
            result.metrics_file,
            result.report,
            result.policies,
            now=now(),
            stalled=result.stalled(),
        )
    except MetricsError as exc:
        message = f"{exc} (the run itself completed: its actions were taken and saved)"
        error(message)
        return replace(result, metrics_error=message)
    return result


def _run(
    instances_for: Callable[[State], Sequence[InstanceRuntime]],
    store: StateFile,
    prober: Prober,
    *,
    dry_run: bool,
) -> RunReport:
    """A dry run reads only; a real run first moves a corrupt state file aside, under the lock
    it then keeps for the whole run."""
    from cloudproxy_cli.app.service import run_reconcile
    from cloudproxy_cli.app.wiring import SystemClock

    if dry_run:
        return run_reconcile(instances_for, store, prober, SystemClock(), dry_run=True)
    with store.lock():
        recovered = store.recover()
        warn(recovered)
        report = run_reconcile(instances_for, store, prober, SystemClock())
    return report if recovered is None else replace(report, state_warning=recovered)
