"""`rolling status --wait`: re-read the state file until the rollout is done, or time is up."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.context import warn
from cloudproxy_cli.core.errors import CloudProxyError

if TYPE_CHECKING:
    from cloudproxy_cli.adapters.state_file import StateFile
    from cloudproxy_cli.core.state import State

Document = dict[str, Any]


def rollout_done(doc: Document) -> bool:
    """No aged proxy waits and no recycle is open in any shown instance."""
    return all(s["phase"] == "idle" for s in doc["status"].values())


def stuck_summary(doc: Document) -> str:
    """What is not done, and why: each such instance's phase and its deferral reasons."""
    parts = []
    for key, s in doc["status"].items():
        if s["phase"] == "idle":
            continue
        why = "; ".join(s["phase_reasons"])
        part = f"{key} {s['phase_text']}" + (f" ({why})" if why else "")
        if s["stale"]:
            part += f" [last reconcile {s['last_run_age_s']} s ago: is cron running?]"
        parts.append(part)
    return " | ".join(parts)


class _FileWatch:
    """Tells whether a file changed since the last look, by its mtime, size and inode."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def changed(self) -> bool:
        current = self._signature()
        changed, self._seen = current != self._seen, current
        return changed


class _Lines:
    """Off a terminal: one line per instance each time its phase or counts change."""

    def __init__(self, out: Console) -> None:
        self._out = out
        self._last: dict[str, tuple[Any, ...]] = {}

    def show(self, doc: Document) -> None:
        batch = doc["config"]["batch_size"]
        for key, s in doc["status"].items():
            # Only what a reconcile run changes: the ticking ages would print a line per poll.
            seen = (s["phase_text"], s["healthy"], s["unhealthy"], s["pending"],
                    s["aged_waiting"], s["in_flight"], s["last_update"])  # fmt: skip
            if self._last.get(key) != seen:
                self._last[key] = seen
                self._out.print(render.status_line(key, s, batch))


def wait_for_rollout(
    doc: Document,
    store: StateFile,
    document: Callable[[State], Document],
    *,
    timeout: float | None,
    interval: float,
    as_json: bool,
) -> Document:
    """Re-read the state every ``interval`` seconds (when the file changed) until the rollout
    is done; returns the last document. Raises ``CloudProxyError`` (exit 1) on timeout.

    Only reads: the cron runs of `cloudproxy reconcile` do the work.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = _FileWatch(store.path)
    tick = threading.Event()  # never set: its wait() is an interruptible poll interval
    out = render.console()
    if as_json:  # stdout is for the document
        out = Console(file=sys.stderr, highlight=False, markup=False, emoji=False, soft_wrap=True)
    # On a terminal the status is redrawn in place (and cleared at the end).
    live = Live(console=out, transient=True, auto_refresh=False) if out.is_terminal else None
    lines = _Lines(out)

    def show(doc: Document) -> None:
        if live is None:
            lines.show(doc)
        else:
            live.update(render.status_renderable(out, doc), refresh=True)

    with live or nullcontext():
        show(doc)
        state: State | None = None
        while not rollout_done(doc):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise CloudProxyError(
                    f"timed out after {timeout:g} s waiting for the rollout: {stuck_summary(doc)}"
                )
            tick.wait(interval if left is None else min(interval, left))
            if watch.changed() or state is None:
                loaded = store.load()
                warn(loaded.warning)
                state = loaded.state
            doc = document(state)
            show(doc)
    return doc
