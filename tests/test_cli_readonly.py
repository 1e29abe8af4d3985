"""Read-only commands write nothing; a dry run sums up its plan and can exit 2 on changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.cli import Cli, one_line_error

CREDS = {"PROXY_USERNAME": "tester", "PROXY_PASSWORD": "s3cret-Pa55"}
LOCAL = {"LOCAL_ENABLED": "True", "LOCAL_MIN_SCALING": "2", **CREDS}

READ_ONLY = [
    ["rolling", "status"],
    ["rolling", "status", "--json"],
    ["proxies"],
    ["proxies", "--json"],
    ["reconcile", "--dry-run"],
    ["reconcile", "--dry-run", "--json"],
    ["config", "show"],
]


def tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root``: whether a directory, its size and its modification time.

    What the running proxy processes write themselves (proxy.py's data directory and their
    logs, and so the inventory directory's mtime) is left out: only the CLI is under test.
    """
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "proxypy"]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if name.endswith(".log") and path.parent.parent.name == "local":
                continue
            st = path.lstat()
            inventory = path.parent.name == "local"
            mtime = 0 if inventory else st.st_mtime_ns
            found[str(path.relative_to(root))] = (path.is_dir(), st.st_size, mtime)
    return found


@pytest.mark.parametrize("argv", READ_ONLY, ids=" ".join)
def test_read_only_commands_create_nothing_on_a_fresh_machine(cli: Cli, argv: list[str]) -> None:
    before = tree(cli.root)
    result = cli.run(*argv, **LOCAL)
    assert result.returncode == 0, result.stderr
    assert tree(cli.root) == before
    assert not cli.state_file.parent.exists()  # no state directory, no lock, no inventory


def test_read_only_commands_change_nothing_in_an_existing_state(cli: Cli) -> None:
    assert cli.run("reconcile", **LOCAL).returncode == 0
    assert len(list(cli.local_dir.glob("default/local-*.json"))) == 2
    before = tree(cli.root)
    for argv in READ_ONLY:
        result = cli.run(*argv, **LOCAL)
        assert result.returncode == 0, (argv, result.stderr)
        assert tree(cli.root) == before, argv


def test_status_without_a_state_file_says_so_and_shows_the_empty_status(cli: Cli) -> None:
    result = cli.run("rolling", "status", "--json", **LOCAL)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"no state file at {cli.state_file} yet: run `cloudproxy reconcile` first"
    ]
    entry = json.loads(result.stdout)["status"]["local/default"]
    assert (entry["healthy"], entry["last_update"]) == (0, None)
    # Once a run has written the state, the hint is gone.
    assert cli.run("reconcile", **LOCAL).returncode == 0
    assert cli.run("rolling", "status", **LOCAL).stderr == ""


def test_dry_run_ends_with_a_summary_and_puts_it_in_the_json(cli: Cli) -> None:
    result = cli.run("reconcile", "--dry-run", **LOCAL)
    assert result.returncode == 0
    assert result.stderr.splitlines()[-1] == "dry run: 2 to create, 0 to delete, 0 deferred"
    doc = json.loads(cli.run("reconcile", "--dry-run", "--json", **LOCAL).stdout)
    assert doc["summary"] == {"create": 2, "delete": 0, "deferred": 0, "failed": 0}
    # Scaling down from two proxies to none plans two deletes.
    assert cli.run("reconcile", **LOCAL).returncode == 0
    down = {**LOCAL, "LOCAL_MIN_SCALING": "0"}
    result = cli.run("reconcile", "--dry-run", "--json", **down)
    assert json.loads(result.stdout)["summary"] == {
        "create": 0, "delete": 2, "deferred": 0, "failed": 0,
    }  # fmt: skip
    assert result.stderr.splitlines()[-1] == "dry run: 0 to create, 2 to delete, 0 deferred"


def test_a_real_run_summarises_what_it_did_in_the_json(cli: Cli) -> None:
    doc = cli.json("reconcile", "--json", **LOCAL)
    assert doc["summary"] == {"create": 2, "delete": 0, "deferred": 0, "failed": 0}


def test_detailed_exitcode_is_2_with_changes_pending_and_0_without(cli: Cli) -> None:
    pending = cli.run("reconcile", "--dry-run", "--detailed-exitcode", **LOCAL)
    assert pending.returncode == 2, pending.stderr
    assert "Traceback" not in pending.stderr
    assert cli.run("reconcile", "--dry-run", **LOCAL).returncode == 0  # not asked: 0
    assert cli.run("reconcile", **LOCAL).returncode == 0
    done = cli.run("reconcile", "--dry-run", "--detailed-exitcode", "--json", **LOCAL)
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["exit_code"] == 0


def test_detailed_exitcode_without_dry_run_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("reconcile", "--detailed-exitcode", **LOCAL)
    assert result.returncode == 2
    assert "--dry-run" in one_line_error(result)
    assert not cli.state_file.exists()
