"""`rolling status --wait`: done at once, timed out on a blocked rollout, or done while waiting.

The waiting command only reads the state file; the test thread drives the real reconcile runs
on the local provider (real proxy processes), as cron would.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import COMMAND, Cli, one_line_error
from tests.support.local_proxies import local_sandbox
from tests.test_status import write_state

pytestmark = pytest.mark.e2e

KEY = "local/default"
ENV = {
    "LOCAL_ENABLED": "True",
    "LOCAL_MIN_SCALING": "2",
    "LOCAL_BOOT_DELAY": "0.2",
    "ROLLING_DEPLOYMENT": "True",
    "ROLLING_BATCH_SIZE": "1",
    "ROLLING_MIN_AVAILABLE": "1",
    "AGE_LIMIT": "1800",
    "PROXY_USERNAME": "waiter",
    "PROXY_PASSWORD": "w4it-secret",
}


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    with local_sandbox(tmp_path, **ENV) as sandbox:
        yield sandbox


def status(cli: Cli, **env: str) -> dict[str, Any]:
    return cli.status_of(KEY, **env)


def reconcile_until(cli: Cli, done: Any, **env: str) -> dict[str, Any]:
    """Run reconcile (as cron would) until ``done(status)``; each run probes for real."""
    deadline = time.monotonic() + 60
    while True:
        run = cli.run("reconcile", **env)
        assert run.returncode in (0, 6), run.stderr
        s = status(cli, **env)
        if done(s):
            return s
        assert time.monotonic() < deadline, s


def backdate(cli: Cli, hours: float) -> None:
    """The local provider's own record of when each proxy was created, as a cloud's would be:
    set back, so that the fleet is older than AGE_LIMIT without the test waiting for it."""
    for path in sorted(cli.local_dir.glob("*/*.json")):
        entry = json.loads(path.read_text())
        entry["created_at"] = (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
        path.write_text(json.dumps(entry))


def healthy_fleet(cli: Cli) -> None:
    reconcile_until(cli, lambda s: s["healthy"] == 2)


def test_timeout_without_wait_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("rolling", "status", "--timeout", "5")
    assert result.returncode == 2
    assert "--timeout needs --wait" in one_line_error(result)


def test_a_finished_rollout_returns_at_once(cli: Cli) -> None:
    never = cli.run("rolling", "status", "--wait", "--timeout", "30")
    assert never.returncode == 0, never.stderr
    healthy_fleet(cli)
    done = cli.run("rolling", "status", "--wait", "--timeout", "30", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"][KEY]["phase"] == "idle"
    assert "idle" in done.stderr  # the progress lines: stderr, with --json on stdout


def test_a_rollout_blocked_by_min_available_times_out_with_the_reason(cli: Cli) -> None:
    healthy_fleet(cli)
    backdate(cli, hours=1)
    # A third proxy that takes long to boot: recycling either old one would leave one healthy,
    # below the effective minimum of 2.
    blocked = {"LOCAL_MIN_SCALING": "3", "LOCAL_BOOT_DELAY": "600", "ROLLING_MIN_AVAILABLE": "2"}
    run = cli.run("reconcile", **blocked)
    assert run.returncode == 0, run.stderr
    assert status(cli, **blocked)["phase"] == "blocked: min available"
    waited = cli.run(
        "rolling", "status", "--wait", "--timeout", "0.5", "--interval", "0.05", **blocked
    )
    assert waited.returncode == 1
    error = one_line_error(waited)
    assert "timed out after 0.5 s waiting for the rollout" in error
    assert f"{KEY} blocked: min available" in error
    assert error.count("would reduce available proxies below minimum (1 < 2)") == 2  # why
    assert "blocked: min available" in waited.stdout  # the plain progress line


def test_a_rollout_finishing_while_waiting_exits_0(cli: Cli) -> None:
    healthy_fleet(cli)
    backdate(cli, hours=1)
    started = cli.run("reconcile")
    assert started.returncode == 0, started.stderr
    assert status(cli)["phase_text"] == "rolling 0 of 2"

    waiter = cli.popen("rolling", "status", "--wait", "--timeout", "120", "--interval", "0.05")
    try:
        assert waiter.stdout is not None
        # The waiter has read the state and is waiting: only then do the runs go on.
        first = waiter.stdout.readline()
        assert first.startswith(f"{KEY}: rolling 0 of 2;"), first
        final = reconcile_until(cli, lambda s: s["phase"] == "idle")
        assert final["healthy"] == 2 and final["operations"] == []
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, err
    lines = [first, *out.splitlines()]
    assert any(f"{KEY}: idle;" in line for line in lines), lines
    assert "Rolling deployment:" in out  # and the final status


def test_on_a_terminal_the_wait_is_a_live_view(cli: Cli) -> None:
    write_state(cli)  # a recycle under way that no cron run will finish
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [*COMMAND, "rolling", "status", "--wait", "--timeout", "0.5", "--interval", "0.05"],
        cwd=cli.root / "work", env=cli.env, stdin=subprocess.DEVNULL, stdout=secondary,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "rolling 0 of 2" in err
    text = screen.decode(errors="replace")
    assert "rolling 0 of 2" in text and "local/default" in text
    assert "\x1b[" in text  # drawn and redrawn in place, not printed line by line
