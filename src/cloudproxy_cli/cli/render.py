"""One renderer: results to stdout (tables or JSON), logs to stderr; plain when not a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from cloudproxy_cli.app.status import counts_after, iso
from cloudproxy_cli.cli.exit_codes import ExitCode
from cloudproxy_cli.core.model import InstanceKey, Proxy
from cloudproxy_cli.core.state import InstanceSnapshot

if TYPE_CHECKING:
    from cloudproxy_cli.app.service import RunReport
    from cloudproxy_cli.cli.results import CommandResult
    from cloudproxy_cli.core.plan import CreateAction, DeleteAction
    from cloudproxy_cli.core.policy import EffectiveRolling, InstancePolicy


# Every JSON document the CLI prints starts with this; bumped when a key changes meaning or goes.
SCHEMA_VERSION = 1


def console() -> Console:
    """A console on the current ``sys.stdout`` (made per result: tests swap the stream)."""
    # Rich honours NO_COLOR itself. Off a terminal (cron, pipes) lines must not be wrapped,
    # unless COLUMNS asks for a width: then it is the width everywhere (Rich reads it only on
    # a terminal). Text meant to be copied whole (URLs) is printed with soft_wrap itself.
    tty = sys.stdout.isatty()
    width = _columns()
    # emoji=False: ":name:" in a value stays as it is (and Rich's emoji table is not loaded).
    return Console(
        file=sys.stdout, highlight=False, markup=False, emoji=False,
        soft_wrap=not tty and width is None, width=width or (None if tty else 200),
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
    from cloudproxy_cli.core.plan import DeleteAction  # only runs: not for `rolling status`

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
            f"{key}: healthy {counts['healthy']}, unhealthy {counts['unhealthy']}, "
            f"pending {counts['pending']}, "
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
        if inst.firewall_error is not None:
            out.print(f"  {'check':<7} {'firewall':<22} FAILED: {inst.firewall_error}")
        if plan.is_empty and not plan.deferrals and inst.firewall_error is None:
            out.print("  nothing to do")


def print_rolling_config(out: Console, rolling: EffectiveRolling) -> None:
    p, src = rolling.policy, rolling.sources
    out.print(
        f"Rolling deployment: enabled={str(p.enabled).lower()} ({src['enabled']}), "
        f"min_available={p.min_available} ({src['min_available']}), "
        f"batch_size={p.batch_size} ({src['batch_size']}), "
        f"strategy={p.strategy} ({src['strategy']})"
    )


def status_header(cfg: dict[str, Any], width: int = 10_000) -> list[str]:
    """The knobs in force and their sources, in lines of at most ``width`` where possible:
    a line breaks only between knobs, so that no value is split."""
    src = cfg["sources"]
    parts = [
        f"Rolling deployment: {'enabled' if cfg['enabled'] else 'disabled'} ({src['enabled']})",
        f"min available {cfg['min_available']} ({src['min_available']})",
        f"batch size {cfg['batch_size']} ({src['batch_size']})",
        f"strategy {cfg['strategy']} ({src['strategy']})",
    ]
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += f"; {part}"
        else:
            lines[-1] += ";"
            lines.append(f"  {part}")
    return lines


def min_available_cell(s: dict[str, Any]) -> str:
    """The minimum in force, and the effective one when MIN_SCALING lowers it."""
    if s["effective_min_available"] == s["min_available"]:
        return str(s["min_available"])
    return f"{s['min_available']} (eff. {s['effective_min_available']})"


def last_run_cell(s: dict[str, Any]) -> str:
    if s["last_run_age_s"] is None:
        return "never"
    return f"{s['last_run_age_s']} s ago" + (" STALE" if s["stale"] else "")


def next_recycle_cell(s: dict[str, Any]) -> str:
    due = s["next_recycle_in_s"]
    return "-" if due is None else f"in {due} s"


# Every status value shown per instance, in order: (column, vertical label, cell).
_STATUS_FIELDS: tuple[tuple[str, str, Callable[[dict[str, Any], int], str]], ...] = (
    ("phase", "phase", lambda s, _: s["phase_text"]),
    ("healthy", "healthy", lambda s, _: str(s["healthy"])),
    ("unhealthy", "unhealthy", lambda s, _: str(s["unhealthy"])),
    ("pending", "pending", lambda s, _: str(s["pending"])),
    ("aged waiting", "aged waiting", lambda s, _: str(s["aged_waiting"])),
    ("pending recycle", "pending recycle", lambda s, _: str(s["pending_recycle"])),
    ("recycling", "recycling", lambda s, _: str(s["recycling"])),
    ("in flight", "in flight", lambda s, batch: f"{s['in_flight']}/{batch}"),
    ("min avail.", "min available", lambda s, _: min_available_cell(s)),
    ("last run", "last run", lambda s, _: last_run_cell(s)),
    ("next recycle", "next recycle", lambda s, _: next_recycle_cell(s)),
    ("last error", "last error", lambda s, _: s["last_error"] or ""),
)


def status_table(doc: dict[str, Any]) -> Table:
    table = Table(show_edge=False)
    table.add_column("instance", no_wrap=True)
    for column, _, _ in _STATUS_FIELDS:
        table.add_column(column, no_wrap=True)
    batch = doc["config"]["batch_size"]
    for key, s in doc["status"].items():
        table.add_row(key, *(cell(s, batch) for _, _, cell in _STATUS_FIELDS))
    return table


def status_blocks(doc: dict[str, Any]) -> list[str]:
    """The same values as the table, one block per instance: for narrow terminals."""
    batch = doc["config"]["batch_size"]
    lines: list[str] = []
    for key, s in doc["status"].items():
        lines.append(key)
        for _, label, cell in _STATUS_FIELDS:
            value = cell(s, batch)
            if value:
                lines.append(f"  {label:<16}{value}")
    return lines


def status_notes(doc: dict[str, Any]) -> list[str]:
    """What explains the numbers: stale runs, deferrals, recycles, failed probes, warnings."""
    stale_after = doc["config"].get("stale_after_s")
    lines: list[str] = []
    for key, s in doc["status"].items():
        if s["stale"]:
            lines.append(
                f"{key}: warning: the last reconcile ran {s['last_run_age_s']} s ago "
                f"(more than STALE_AFTER {stale_after} s): is cron running?"
            )
        for d in s["deferred"]:
            lines.append(f"{key}: deferred {d['address']}: {d['reason']}")
        for op in s["operations"]:
            old, new = op["old"] or "(adopted)", op["replacement"] or "(none yet)"
            lines.append(f"{key}: recycling {old} -> {new} for {op['age_s']} s ({op['strategy']})")
        for u in s["unhealthy_reasons"]:
            lines.append(f"{key}: unhealthy {u['address']}: {u['reason']} ({u['kind']})")
        for w in s["warnings"]:
            lines.append(f"{key}: warning: {w}")
    return lines


def status_renderable(out: Console, doc: dict[str, Any]) -> Group:
    """Header, the table (or one block per instance when it is wider than ``out``), notes."""
    table = status_table(doc)
    unbounded = out.options.update_width(10_000)
    narrow = Measurement.get(out, unbounded, table).maximum > out.width
    body: list[RenderableType] = [Text(line) for line in status_blocks(doc)] if narrow else [table]
    notes = [Text(line) for line in status_notes(doc)]
    header = [Text(line) for line in status_header(doc["config"], out.width)]
    return Group(*header, *body, *notes)


def print_status(out: Console, doc: dict[str, Any]) -> None:
    out.print(status_renderable(out, doc))


def status_line(key: str, s: dict[str, Any], batch: int) -> str:
    """One instance on one line, for `rolling status --wait` off a terminal."""
    return (
        f"{key}: {s['phase_text']}; healthy {s['healthy']}, unhealthy {s['unhealthy']}, "
        f"pending {s['pending']}, aged waiting {s['aged_waiting']}, "
        f"in flight {s['in_flight']}/{batch}; last run {last_run_cell(s)}"
    )


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

    failures = {f.address: f for f in snap.probe_failures} if snap else {}
    rows = []
    for p in sorted(proxies, key=lambda p: (p.created_at, p.id)):
        failure = failures.get(p.address) if p.address else None
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
                # Why its last probe failed (None: it passed, or was not probed).
                "reason": failure.detail if failure else None,
                "reason_kind": failure.kind if failure else None,
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
        (r["instance"], r["url"] or "(no address yet)", r["state"], _age(r["age_s"]), r["id"],
         r["reason"] or "")
        for r in rows
    ]  # fmt: skip
    table = _table(("instance", "url", "state", "age", "id", "reason"), cells)
    if _fits(out, table):
        out.print(table)
        return
    for instance, url, state, age, proxy_id, reason in cells:
        out.print(f"{instance}  {proxy_id}  {state}  {age}", soft_wrap=True)
        out.print(f"  {url}", soft_wrap=True)
        if reason:
            out.print(f"  {reason}", soft_wrap=True)


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
