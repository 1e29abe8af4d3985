"""Start-up (issue 8.9): a command line that names its command builds and imports that one only;
anything else still gets the whole command tree, so help and "did you mean" are unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloudproxy_cli.cli.app import COMMANDS, requested_command
from tests.support.cli import Cli, run_python


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["rolling", "status"], "rolling"),
        (["--config", "x.toml", "-q", "reconcile", "--dry-run"], "reconcile"),
        (["--state-file=s.json", "-v", "proxies", "--plain"], "proxies"),
        (["completion", "bash"], "completion"),
        ([], None),
        (["--help"], None),
        (["-qv", "rolling", "status"], None),  # combined flags: let click read them
        (["rollin", "status"], None),  # a typo: the whole tree suggests "rolling"
        (["--config"], None),
    ],
)
def test_the_requested_command_is_read_after_the_global_options(
    args: list[str], expected: str | None
) -> None:
    assert requested_command(args) == expected


def test_rolling_status_imports_no_other_command(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from cloudproxy_cli.cli.app import run\n"
        f"code = run(['--state-file', {str(tmp_path / 'state.json')!r}, 'rolling', 'status',"
        " '--json'], {'LOCAL_ENABLED': 'true'})\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('cloudproxy_cli.cli.'))\n"
        "print(json.dumps({'code': code, 'loaded': loaded}), file=sys.stderr)\n"
    )
    done = run_python(code, cwd=tmp_path)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, done.stderr
    others = {module for name, (module, _, _) in COMMANDS.items() if name != "rolling"}
    assert others, "the command table lists more than rolling"
    assert "cloudproxy_cli.cli.rolling" in report["loaded"]
    assert not others & set(report["loaded"]), report["loaded"]


def test_help_and_a_typo_still_see_every_command(cli: Cli) -> None:
    shown = cli.run("--help", COLUMNS="120")
    assert shown.returncode == 0
    for name in COMMANDS:
        assert name in shown.stdout, name
    typo = cli.run("rollin", "status")
    assert typo.returncode == 2
    assert "rolling" in typo.stderr


def test_main_exits_with_the_collector_frozen_and_still_flushes_and_runs_atexit(
    tmp_path: Path,
) -> None:
    # main() freezes the garbage collector before exit (the final collections over every
    # imported object were a sixth of `rolling status`); nothing else about exit may change.
    code = (
        "import atexit, gc, sys\n"
        "from cloudproxy_cli.cli import app\n"
        "atexit.register(lambda: print('atexit: frozen', gc.get_freeze_count() > 0,"
        " file=sys.stderr))\n"
        f"sys.argv = ['cloudproxy', '--state-file', {str(tmp_path / 'state.json')!r},"
        " 'rolling', 'status', '--json']\n"
        "app.main()\n"
    )
    done = run_python(code, cwd=tmp_path, env={**os.environ, "LOCAL_ENABLED": "true"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema_version"] == 1  # the whole document, flushed
    assert done.stderr.strip().splitlines()[-1] == "atexit: frozen True"
