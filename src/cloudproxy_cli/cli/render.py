"""One renderer: results to stdout (tables or JSON), logs to stderr; plain when not a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from cloudproxy_cli.app.status import counts_after, iso
from cloudproxy_cli.cli.exit_codes import ExitCode
from cloudproxy_cli.core.model import InstanceKey, Proxy
from cloudproxy_cli.core.plan import CreateAction, DeleteAction
from cloudproxy_cli.core.state import InstanceSnapshot

if TYPE_CHECKING:
    from cloudproxy_cli.app.service import RunReport
    from cloudproxy_cli.app.wiring import EffectiveRolling
    from cloudproxy_cli.cli.results import CommandResult
    from cloudproxy_cli.core.policy import InstancePolicy


# Every JSON document the CLI prints starts with this; bumped when a key changes meaning or goes.
SCHEMA_VERSION = 1


def console() -> Console:
    """A console on the current ``sys.stdout`` (made per result: tests swap the stream)."""
    # Rich honours NO_COLOR itself. Off a terminal (cron, pipes) lines must not be wrapped.
    # COLUMNS, when set, is the width everywhere (Rich reads it only on a terminal).
    tty = sys.stdout.isatty()
    return Console(
        file=sys.stdout, highlight=False, markup=False, soft_wrap=not tty,
        width=_columns() or (None if tty else 200),
    )  # fmt: skip


def _columns() -> int | None:
    text = os.environ.get("COLUMNS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _fits(out: Console, table: Table) -> bool:
    """Whether ``table`` fits the console's width with no cell wrapped or cut."""
    # Measured unconstrained: Rich clamps a table's measurement to the width it is given.
    unbounded = out.options.update_width(1_000_000)
    return Measurement.get(out, unbounded, table).maximum <= out.width


def emit(result: CommandResult) -> ExitCode:
    """Print a command's result (its JSON document, or its text) and return its exit code."""
    if result.as_json:
        print_json({"schema_version": SCHEMA_VERSION, **result.document()})
    else:
        result.render(console())
    if not result.quiet:
        for line in result.notes():
            sys.stderr.write(line + "\n")
    return result.exit_code


def setup_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    else:  # cron mails or log files: timestamps help
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
    logger = logging.getLogger("cloudproxy")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def print_run(out: Console, report: RunReport, policies: dict[str, InstancePolicy]) -> None:
    head = "Plan (dry run, nothing changed)" if report.dry_run else "Reconciled"
    out.print(f"{head} at {iso(report.started_at)}")
    for inst in report.instances:
        key = str(inst.key)
        if inst.error is not None:
            out.print(f"{key}: FAILED: {inst.error} (no action taken)")
            continue
        counts = counts_after(inst, policies[key], report.started_at)
        batch = policies[key].rolling.batch_size
        out.print(
            f"{key}: healthy {counts['healthy']}, pending {counts['pending']}, "
            f"recycling {counts['recycling']}, pending recycle {counts['pending_recycle']}, "
            f"in flight {counts['in_flight']}/{batch}"
        )
        plan = inst.plan
        if plan is None:
            continue
        outcomes = list(inst.outcomes)
        actions: list[CreateAction | DeleteAction] = [*plan.deletes, *plan.creates]
        for n, action in enumerate(actions):
            outcome = outcomes[n] if n < len(outcomes) else None
            verb = "delete" if isinstance(action, DeleteAction) else "create"
            what = action.address or action.proxy_id if isinstance(action, DeleteAction) else ""
            if outcome is not None and outcome.created is not None:
                what = outcome.created.address or outcome.created.id
            status = (
                "planned"
                if outcome is None
                else "done"
                if outcome.ok
                else f"FAILED: {outcome.error}"
            )
            out.print(f"  {verb:<7} {what:<22} {action.reason} [{status}]")
        for d in plan.deferrals:
            out.print(f"  {'defer':<7} {d.address or d.proxy_id:<22} {d.reason}")
        if plan.is_empty and not plan.deferrals:
            out.print("  nothing to do")


def print_rolling_config(out: Console, rolling: EffectiveRolling) -> None:
    p, src = rolling.policy, rolling.sources
    out.print(
        f"Rolling deployment: enabled={str(p.enabled).lower()} ({src['enabled']}), "
        f"min_available={p.min_available} ({src['min_available']}), "
        f"batch_size={p.batch_size} ({src['batch_size']}), "
        f"strategy={p.strategy} ({src['strategy']})"
    )


def print_status(out: Console, doc: dict[str, Any]) -> None:
    cfg = doc["config"]
    src = cfg["sources"]
    out.print(
        f"Rolling deployment: {'enabled' if cfg['enabled'] else 'disabled'} ({src['enabled']}); "
        f"min available {cfg['min_available']} ({src['min_available']}); "
        f"batch size {cfg['batch_size']} ({src['batch_size']}); "
        f"strategy {cfg['strategy']} ({src['strategy']})"
    )
    table = Table(show_edge=False)
    for column in ("instance", "healthy", "pending", "pending recycle", "recycling", "in flight",
                   "min avail.", "last update", "last error"):  # fmt: skip
        table.add_column(column)
    for key, s in doc["status"].items():
        table.add_row(
            key,
            str(s["healthy"]),
            str(s["pending"]),
            str(s["pending_recycle"]),
            str(s["recycling"]),
            f"{s['in_flight']}/{cfg['batch_size']}",
            str(s["effective_min_available"]),
            s["last_update"] or "never",
            s["last_error"] or "",
        )
    out.print(table)
    for key, s in doc["status"].items():
        for d in s["deferred"]:
            out.print(f"{key}: deferred {d['address']}: {d['reason']}")
        for op in s["operations"]:
            old, new = op["old"] or "(adopted)", op["replacement"] or "(none yet)"
            out.print(f"{key}: recycling {old} -> {new} for {op['age_s']} s ({op['strategy']})")
        for w in s["warnings"]:
            out.print(f"{key}: warning: {w}")


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def proxy_rows(
    key: InstanceKey,
    proxies: Sequence[Proxy],
    snap: InstanceSnapshot | None,
    username: str | None,
    password: str | None,
    default_port: int,
    now: datetime,
) -> list[dict[str, Any]]:
    def state_of(p: Proxy) -> str:
        if snap is None or p.address is None:
            return "booting" if p.address is None else "unknown"
        for label, members in (
            ("pending_recycle", snap.pending_recycle_ips),
            ("healthy", snap.healthy_ips),
            ("pending", snap.pending_ips),
            ("unhealthy", snap.unhealthy_ips),
        ):
            if p.address in members:
                return label
        return "unknown"  # created since the last reconcile, or not yet probed

    rows = []
    for p in sorted(proxies, key=lambda p: (p.created_at, p.id)):
        url = None
        if p.ip is not None:
            creds = ""
            if username is not None and password is not None:
                creds = f"{quote(username, safe='')}:{quote(password, safe='')}@"
            url = f"http://{creds}{p.ip}:{p.port or default_port}"
        rows.append(
            {
                "instance": str(key),
                "id": p.id,
                "address": p.address,
                "url": url,
                "state": state_of(p),
                "created_at": iso(p.created_at),
                "age_s": int((now - p.created_at).total_seconds()),
            }
        )
    return rows


def print_proxies(out: Console, rows: list[dict[str, Any]]) -> None:
    """A table; on a terminal too narrow for it, two lines a proxy, the URL alone on the second
    (never cut or wrapped: it is meant to be copied)."""
    if not rows:
        out.print("no proxies")
        return
    cells = [
        (r["instance"], r["url"] or "(no address yet)", r["state"], _age(r["age_s"]), r["id"])
        for r in rows
    ]
    table = _table(("instance", "url", "state", "age", "id"), cells)
    if _fits(out, table):
        out.print(table)
        return
    for instance, url, state, age, proxy_id in cells:
        out.print(f"{instance}  {proxy_id}  {state}  {age}", soft_wrap=True)
        out.print(f"  {url}", soft_wrap=True)


def print_config(out: Console, rows: list[tuple[str, str, str]]) -> None:
    """A table; on a terminal too narrow for it, ``name = value  (source)``, split over lines
    where that is still too wide (a value is never cut or wrapped)."""
    table = _table(("setting", "value", "source"), rows)
    if _fits(out, table):
        out.print(table)
        return
    for name, value, source in rows:
        for line in _setting_lines(name, value, source, out.width):
            out.print(line, soft_wrap=True)


def _setting_lines(name: str, value: str, source: str, width: int) -> list[str]:
    one = f"{name} = {value}  ({source})"
    if len(one) <= width:
        return [one]
    head = f"{name} = {value}"
    if len(head) <= width:
        return [head, f"    ({source})"]
    return [f"{name} =", f"    {value}", f"    ({source})"]


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(show_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table
