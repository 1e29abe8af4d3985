"""CLI basics: --version, shell completion, global options after the command, --quiet, pipes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pytest

from cloudproxy_cli.cli.app import hoist_global_options
from tests.support.cli import Cli, one_line_error

CREDS = {"PROXY_USERNAME": "tester", "PROXY_PASSWORD": "s3cret-Pa55"}
LOCAL = {"LOCAL_ENABLED": "True", "LOCAL_MIN_SCALING": "1", **CREDS}


# --- version and completion ---------------------------------------------------------------------


def test_version_comes_from_the_package_metadata(cli: Cli) -> None:
    result = cli.run("--version")
    assert result.returncode == 0
    assert result.stdout == f"cloudproxy {version('cloudproxy-cli')}\n"
    assert result.stdout == "cloudproxy 0.1.0\n"
    assert result.stderr == ""


def test_help_offers_completion(cli: Cli) -> None:
    out = cli.run("--help").stdout
    for option in ("--install-completion", "--show-completion", "--version", "completion"):
        assert option in out


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o default -F"), ("zsh", "compdef"), ("fish", "complete --command")],
)
def test_completion_prints_the_script_for_a_shell(cli: Cli, shell: str, marker: str) -> None:
    result = cli.run("completion", shell)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
    assert "_CLOUDPROXY_COMPLETE" in result.stdout


def test_completion_script_protocol_completes_commands(cli: Cli) -> None:
    """What the bash script runs on <TAB>: the real process answers with the matches."""
    bash = "complete_bash"
    top = cli.run_process(_CLOUDPROXY_COMPLETE=bash, COMP_WORDS="cloudproxy rol", COMP_CWORD="1")
    assert top.returncode == 0, top.stderr
    assert top.stdout.split() == ["rolling"]
    sub = cli.run_process(
        _CLOUDPROXY_COMPLETE=bash, COMP_WORDS="cloudproxy rolling s", COMP_CWORD="2"
    )
    assert sorted(sub.stdout.split()) == ["set", "status"]


def test_an_unknown_shell_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("completion", "tcsh")
    assert result.returncode == 2
    one_line_error(result)


# --- global options after the command -----------------------------------------------------------


def test_hoisting_moves_global_options_before_the_command() -> None:
    argv = ["rolling", "status", "--json", "--config", "c.toml", "-q", "--state-file=s.json"]
    assert hoist_global_options(argv) == [
        "--config", "c.toml", "-q", "--state-file=s.json", "rolling", "status", "--json",
    ]  # fmt: skip
    assert hoist_global_options(["-v", "reconcile"]) == ["-v", "reconcile"]
    # Nothing after `--` is an option.
    assert hoist_global_options(["destroy", "--", "-q"]) == ["destroy", "--", "-q"]


@pytest.mark.parametrize("position", ["before", "after"])
def test_global_options_work_before_and_after_the_command(cli: Cli, position: str) -> None:
    config = cli.root / "cfg.toml"
    config.write_text("age_limit = 42\n")
    state = cli.root / "elsewhere" / "state.json"
    options = ["--config", str(config), f"--state-file={state}"]
    command = ["config", "show", "--json"]
    argv = [*options, *command] if position == "before" else [*command, *options]
    doc = cli.json(*argv, **LOCAL)
    rows = {r["name"]: r for r in doc["settings"]}
    assert rows["age_limit"]["value"] == 42
    assert rows["age_limit"]["source"] == f"file {config}"
    assert rows["state_file"] == {
        "name": "state_file",
        "value": str(state),
        "source": "--state-file",
    }


def test_a_global_option_without_its_value_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("rolling", "status", "--config", **LOCAL)
    assert result.returncode == 2
    assert "--config" in one_line_error(result)


# --- --quiet under cron -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["-q reconcile", "reconcile --quiet"])
def test_quiet_prints_nothing_when_nothing_changed(cli: Cli, where: str) -> None:
    first = cli.run(*where.split(), **LOCAL)  # creates the proxy: that is news
    assert first.returncode == 0
    assert "create" in first.stdout
    steady = cli.run(*where.split(), **LOCAL)  # the proxy is pending: nothing to do
    assert steady.returncode == 0
    assert (steady.stdout, steady.stderr) == ("", "")
    # Without --quiet the same run reports itself.
    assert "nothing to do" in cli.run("reconcile", **LOCAL).stdout


def test_quiet_still_prints_errors(cli: Cli) -> None:
    broken = cli.local_dir / "broken"
    broken.mkdir(parents=True)
    (broken / "local-deadbeef.json").write_text("{not json")
    env = {**LOCAL, "LOCAL_BROKEN_ENABLED": "True"}
    result = cli.run("-q", "reconcile", **env)
    assert result.returncode == 3
    assert "corrupt inventory file" in result.stderr
    assert "local/broken: FAILED" in result.stdout
    (broken / "local-deadbeef.json").unlink()
    config_error = cli.run("-q", "reconcile", **{**LOCAL, "AGE_LIMIT": "soon"})
    assert config_error.returncode == 4
    assert "AGE_LIMIT" in one_line_error(config_error)


# --- a closed pipe ------------------------------------------------------------------------------


def fake_inventory(directory: Path, count: int) -> None:
    """``count`` inventory entries whose processes are long gone: listed, never probed here."""
    directory.mkdir(parents=True)
    created = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
    for n in range(count):
        entry = {"id": f"local-{n:08x}", "port": 1024 + n, "pid": 2**31 - 1,
                 "created_at": created, "start_time": 1}  # fmt: skip
        (directory / f"local-{n:08x}.json").write_text(json.dumps(entry))


@pytest.mark.parametrize("argv", [["proxies", "--plain"], ["proxies"]], ids=" ".join)
def test_a_reader_that_stops_early_gets_a_quiet_exit_0(cli: Cli, argv: list[str]) -> None:
    # Far more than a pipe buffer holds, so the writer is still writing when the reader goes.
    fake_inventory(cli.local_dir / "default", 1500)
    proc = cli.popen(*argv, **LOCAL)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first.strip()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{dir}", "rolling", "status"],
        ["--state-file", "{dir}", "rolling", "status"],
        ["reconcile", "--dry-run", "--metrics-file", "{dir}"],
    ],
)
@pytest.mark.parametrize("bad", ["directory", "nul"])
def test_a_file_option_refuses_a_directory_or_a_nul_byte_before_anything_runs(
    cli: Cli, tmp_path: Path, argv: list[str], bad: str
) -> None:
    value = str(tmp_path) if bad == "directory" else "state\x00.json"
    result = cli.run(*[value if a == "{dir}" else a for a in argv])
    assert result.returncode == 2, result
    message = one_line_error(result)
    option = next(a for a in argv if a.startswith("--") and a != "--dry-run")
    assert option in message
    assert ("is a directory" if bad == "directory" else "NUL byte") in message
    assert result.stdout == ""
