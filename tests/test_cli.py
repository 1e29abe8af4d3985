"""The `cloudproxy` command: exit codes, one-line errors, JSON documents, the lock and imports.

Most tests run it in-process through ``run(argv, environ)``; those about the lock, signals,
imports and the console script itself run it as a real process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudproxy_cli.cli.app import run
from tests.support.cli import COMMAND, Cli, one_line_error, run_python

CREDS = {"PROXY_USERNAME": "tester", "PROXY_PASSWORD": "s3cret-Pa55"}
LOCAL = {"LOCAL_ENABLED": "True", "LOCAL_MIN_SCALING": "1", **CREDS}


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# --- help and imports ---------------------------------------------------------------------------

COMMANDS = [
    [],
    ["reconcile"],
    ["rolling"],
    ["rolling", "status"],
    ["rolling", "set"],
    ["rolling", "reset"],
    ["destroy"],
    ["proxies"],
    ["proxies", "random"],
    ["config", "show"],
    ["completion"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cloudproxy")
def test_every_command_has_help_with_an_example(cli: Cli, command: list[str]) -> None:
    result = cli.run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
    assert result.stderr == ""


def test_top_level_help_documents_exit_codes(cli: Cli) -> None:
    out = " ".join(cli.run("--help").stdout.split())
    assert "0 ok, 1 failure, 2 usage error, 3 partial" in out
    assert "4 configuration error, 5 another run holds the lock" in out


SDKS = ("boto3", "botocore", "google.cloud", "hcloud", "digitalocean", "requests")
ADAPTERS = ("cloudproxy_cli.adapters.local", "cloudproxy_cli.adapters.health")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["rolling", "status", "--json"], ["rolling", "set", "--batch-size", "3"]],
    ids=["help", "status", "set"],
)
def test_status_set_and_help_import_no_cloud_sdk(cli: Cli, argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from cloudproxy_cli.cli.app import run\n"
        f"rc = run({argv!r})\n"
        f"bad = [m for m in sys.modules if m.startswith({SDKS + ADAPTERS!r})]\n"
        "print('IMPORTED', bad, rc, file=sys.stderr)\n"
        "sys.exit(3 if bad else rc)\n"
    )
    result = run_python(code, cwd=cli.root / "work", env={**cli.env, **LOCAL})
    assert result.returncode == 0, result.stderr
    assert "IMPORTED [] 0" in result.stderr


# --- configuration ------------------------------------------------------------------------------


def test_invalid_configuration_is_one_line_exit_4(cli: Cli) -> None:
    result = cli.run("reconcile", ROLLING_DEPLOYMENT="maybe", **LOCAL)
    assert result.returncode == 4
    assert "ROLLING_DEPLOYMENT" in one_line_error(result)
    assert not cli.state_file.exists()


def test_nothing_enabled_is_a_configuration_error(cli: Cli) -> None:
    result = cli.run("reconcile")
    assert result.returncode == 4
    assert "LOCAL_ENABLED" in one_line_error(result)


def test_config_show_masks_secrets_and_names_sources(cli: Cli) -> None:
    doc = cli.json("config", "show", "--json", AGE_LIMIT="120", **LOCAL)
    rows = {r["name"]: r for r in doc["settings"]}
    assert rows["age_limit"] == {"name": "age_limit", "value": 120, "source": "env AGE_LIMIT"}
    assert rows["proxy_password"]["value"] == "********"
    assert rows["rolling_batch_size"]["source"] == "default"
    assert rows["providers.local.default.min_scaling"]["source"] == "env LOCAL_MIN_SCALING"
    assert rows["state_file"]["value"] == str(cli.state_file)
    text = cli.run("config", "show", **LOCAL)
    assert "s3cret-Pa55" not in text.stdout + text.stderr
    assert "********" in text.stdout


# --- rolling set / status -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "x"], "--batch-size"),
        (["--min-available", "-1"], "--min-available"),
        (["--strategy", "yolo"], "--strategy"),
        ([], "nothing to set"),
    ],
)
def test_rolling_set_rejects_bad_values_and_leaves_state_unchanged(
    cli: Cli, args: list[str], mentions: str
) -> None:
    assert cli.run("rolling", "set", "--batch-size", "4", **LOCAL).returncode == 0
    before = cli.state_file.read_bytes()
    result = cli.run("rolling", "set", *args, **LOCAL)
    assert result.returncode == 2
    assert mentions in one_line_error(result)
    assert cli.state_file.read_bytes() == before


def test_rolling_set_on_a_fresh_machine_does_not_create_state_when_invalid(cli: Cli) -> None:
    result = cli.run("rolling", "set", "--batch-size", "0", **LOCAL)
    assert result.returncode == 2
    assert not cli.state_file.exists()


def test_rolling_set_persists_and_shows_its_source_until_reset(cli: Cli) -> None:
    out = cli.run("rolling", "set", "--batch-size", "3", "--strategy", "surge", **LOCAL)
    assert out.returncode == 0, out.stderr
    doc = cli.json("rolling", "status", "--json", ROLLING_BATCH_SIZE="7", **LOCAL)
    assert doc["config"]["batch_size"] == 3
    assert doc["config"]["strategy"] == "surge"
    assert doc["config"]["sources"]["batch_size"] == "rolling set"
    assert doc["config"]["sources"]["min_available"] == "default"
    assert cli.run("rolling", "reset", **LOCAL).returncode == 0
    doc = cli.json("rolling", "status", "--json", ROLLING_BATCH_SIZE="7", **LOCAL)
    assert doc["config"]["batch_size"] == 7
    assert doc["config"]["sources"]["batch_size"] == "env ROLLING_BATCH_SIZE"


def test_status_before_any_run_and_filters(cli: Cli) -> None:
    doc = cli.json("rolling", "status", "--json", **LOCAL)
    assert set(doc) == {"schema_version", "metadata", "message", "config", "status"}
    assert doc["schema_version"] == 1
    assert doc["message"] == "Rolling deployment status retrieved successfully"
    entry = doc["status"]["local/default"]
    assert entry["last_update"] is None and entry["healthy"] == 0
    for key in ("healthy", "pending", "pending_recycle", "recycling", "last_update",
                "healthy_ips", "pending_recycle_ips", "recycling_ips"):  # fmt: skip
        assert key in entry
    assert cli.json("rolling", "status", "local", "default", "--json", **LOCAL)[
        "status"
    ].keys() == {"local/default"}
    for args in (["nosuch"], ["local", "nosuch"]):
        result = cli.run("rolling", "status", *args, **LOCAL)
        assert result.returncode == 2
        one_line_error(result)


def test_status_table_without_json(cli: Cli) -> None:
    result = cli.run("rolling", "status", **LOCAL)
    assert result.returncode == 0
    assert "local/default" in result.stdout
    assert "batch size 2 (default)" in result.stdout


# --- reconcile, proxies, destroy ----------------------------------------------------------------


def test_reconcile_json_then_proxies_with_encoded_credentials(cli: Cli) -> None:
    env = {**LOCAL, "PROXY_PASSWORD": "p.ss-w_rd", "PROXY_USERNAME": "us.er"}
    doc = cli.json("reconcile", "--json", **env)
    inst = doc["instances"]["local/default"]
    assert doc["exit_code"] == 0 and inst["ok"] is True
    assert [a["action"] for a in inst["actions"]] == ["create"]
    assert inst["actions"][0]["status"] == "done"
    assert inst["counts"] == {
        "healthy": 0, "unhealthy": 0, "pending": 1, "pending_recycle": 0, "recycling": 0,
        "in_flight": 0,
    }  # fmt: skip
    listing = cli.json("proxies", "--json", **env)
    (row,) = listing["proxies"]
    assert row["url"] == f"http://us.er:p.ss-w_rd@{row['address']}"
    # Characters that are not URL-safe are percent-encoded.
    odd = cli.json("proxies", "--json", **{**env, "PROXY_PASSWORD": "a@b/c:d"})
    assert odd["proxies"][0]["url"].startswith("http://us.er:a%40b%2Fc%3Ad@127.0.0.1:")
    # Secrets never reach the state file.
    assert "p.ss-w_rd" not in cli.state_file.read_text()


def test_dry_run_plans_but_changes_nothing(cli: Cli) -> None:
    doc = cli.json("reconcile", "--dry-run", "--json", **{**LOCAL, "LOCAL_MIN_SCALING": "2"})
    actions = doc["instances"]["local/default"]["actions"]
    assert doc["dry_run"] is True
    assert [(a["action"], a["status"]) for a in actions] == [("create", "planned")] * 2
    assert doc["instances"]["local/default"]["counts"]["pending"] == 2
    assert not cli.state_file.exists()
    assert not list(cli.local_dir.glob("*/local-*.json"))


def test_destroy_then_reconcile_replaces(cli: Cli) -> None:
    cli.json("reconcile", "--json", **LOCAL)
    (row,) = cli.json("proxies", "--json", **LOCAL)["proxies"]
    result = cli.run("destroy", row["address"], **LOCAL)
    assert result.returncode == 0, result.stderr
    assert cli.json("proxies", "--json", **LOCAL)["proxies"] == []
    doc = cli.json("reconcile", "--json", **LOCAL)
    assert [a["action"] for a in doc["instances"]["local/default"]["actions"]] == ["create"]


def test_destroy_unknown_address_is_an_error(cli: Cli) -> None:
    result = cli.run("destroy", "127.0.0.1:1", **LOCAL)
    assert result.returncode == 2
    assert "127.0.0.1:1" in one_line_error(result)


def test_partial_and_total_failure_exit_codes(cli: Cli) -> None:
    broken = cli.local_dir / "broken"
    broken.mkdir(parents=True)
    (broken / "local-deadbeef.json").write_text("{not json")
    env = {**LOCAL, "LOCAL_BROKEN_ENABLED": "True", "LOCAL_BROKEN_MIN_SCALING": "1"}
    result = cli.run("reconcile", "--json", **env)
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["instances"]["local/broken"]["ok"] is False
    assert doc["instances"]["local/broken"]["actions"] == []
    assert doc["instances"]["local/default"]["ok"] is True
    assert len(doc["instances"]["local/default"]["actions"]) == 1
    # Only the broken instance: nothing succeeded.
    result = cli.run("reconcile", "--provider", "local", "--instance", "broken", **env)
    assert result.returncode == 1
    # Listing fails the same way: some instances listed, exit 3; none, exit 1.
    listing = cli.run("proxies", "--json", **env)
    assert listing.returncode == 3, listing.stderr
    assert len(json.loads(listing.stdout)["errors"]) == 1
    assert cli.run("proxies", **{**env, "LOCAL_ENABLED": "False"}).returncode == 1
    # The failure is recorded for status.
    status = cli.json("rolling", "status", "local", "broken", "--json", **env)
    assert status["status"]["local/broken"]["last_error"]
    (broken / "local-deadbeef.json").unlink()


def test_unknown_filter_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("reconcile", "--provider", "aws", **LOCAL)
    assert result.returncode == 2
    one_line_error(result)


# --- the lock -----------------------------------------------------------------------------------


class BlackHole:
    """A loopback listener that accepts connections and never answers (a hung origin)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"

    def close(self) -> None:
        self.sock.close()


def lock_holder(cli: Cli) -> int | None:
    try:
        text = (cli.state_file.parent / "state.json.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def slow_reconcile(cli: Cli, hole: BlackHole, timeout: str = "6") -> subprocess.Popen[str]:
    """A reconcile that holds the lock for ~HEALTH_CHECK_TIMEOUT: its probe hangs at the origin."""
    assert cli.run("reconcile", **LOCAL).returncode == 0  # one proxy to probe

    def healthy() -> bool:
        doc = cli.json("reconcile", "--json", **LOCAL)
        return bool(doc["instances"]["local/default"]["counts"]["healthy"] == 1)

    assert wait_until(healthy), "the proxy never became healthy"
    first = cli.popen("reconcile", HEALTH_CHECK_URL=hole.url, HEALTH_CHECK_TIMEOUT=timeout, **LOCAL)
    assert wait_until(lambda: lock_holder(cli) == first.pid), "the first run never took the lock"
    return first


def test_overlapping_runs_second_exits_5_without_waiting_for_the_first(cli: Cli) -> None:
    hole = BlackHole()
    try:
        first = slow_reconcile(cli, hole)
        second = cli.run("reconcile", **LOCAL)
        assert second.returncode == 5
        assert f"pid {first.pid}" in one_line_error(second)
        # The first holds the lock until its probe times out: still running means the second
        # gave up at once instead of waiting for the lock.
        assert first.poll() is None
        # Closing the hole resets the probe's connection: the first run ends now, not at its
        # probe's timeout, and ends well.
        hole.close()
        assert first.wait(timeout=30) == 0
    finally:
        hole.close()


def test_sigkilled_run_leaves_a_readable_state_and_a_free_lock(cli: Cli) -> None:
    hole = BlackHole()
    try:
        first = slow_reconcile(cli, hole)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        hole.close()
    status = cli.run("rolling", "status", "--json", **LOCAL)
    assert status.returncode == 0 and status.stderr == ""
    assert json.loads(status.stdout)["status"]["local/default"]["healthy"] == 1
    assert cli.run("reconcile", **LOCAL).returncode == 0


def test_ctrl_c_stops_a_hung_run_at_once_leaving_a_readable_state_and_a_free_lock(
    cli: Cli,
) -> None:
    hole = BlackHole()
    try:
        # Its probe would hang for 30 s at the black hole.
        first = slow_reconcile(cli, hole, timeout="30")
        os.kill(first.pid, signal.SIGINT)
        # Well before the probe's timeout: a run that waited for it would raise TimeoutExpired.
        assert first.wait(timeout=15) == 130
        _, err = first.communicate()
    finally:
        hole.close()
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "cloudproxy: error: interrupted"
    status = cli.run("rolling", "status", "--json", **LOCAL)
    assert status.returncode == 0 and status.stderr == ""
    assert json.loads(status.stdout)["status"]["local/default"]["healthy"] == 1
    assert cli.run("reconcile", **LOCAL).returncode == 0


def test_main_module_runs(cli: Cli) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloudproxy_cli", "--help"],
        capture_output=True, text=True, timeout=60, check=False, env=cli.env,
    )  # fmt: skip
    assert result.returncode == 0 and "reconcile" in result.stdout
    assert COMMAND


def test_corrupt_state_is_moved_aside_with_a_warning_and_the_run_goes_on(cli: Cli) -> None:
    cli.state_file.parent.mkdir(parents=True)
    cli.state_file.write_text('{"schema_version": 1, "instances": [')
    result = cli.run("reconcile", "--json", **LOCAL)
    assert result.returncode == 0, result.stderr
    assert "corrupt" in result.stderr and "Traceback" not in result.stderr
    (aside,) = cli.state_file.parent.glob("state.json.corrupt-*")
    assert aside.read_text() == '{"schema_version": 1, "instances": ['
    doc = json.loads(result.stdout)
    assert str(aside) in doc["state_warning"]
    assert [a["action"] for a in doc["instances"]["local/default"]["actions"]] == ["create"]
    assert (
        cli.json("rolling", "status", "--json", **LOCAL)["status"]["local/default"]["pending"] == 1
    )


CORRUPT = b'{"schema_version": 1, "instances": ['


@pytest.mark.parametrize(
    "argv",
    [["rolling", "status", "--json"], ["proxies", "--json"], ["reconcile", "--dry-run", "--json"]],
    ids=["status", "proxies", "dry-run"],
)
def test_read_only_commands_leave_a_corrupt_state_file_byte_identical(
    cli: Cli, argv: list[str]
) -> None:
    cli.state_file.parent.mkdir(parents=True)
    cli.state_file.write_bytes(CORRUPT)
    result = cli.run(*argv, **LOCAL)
    assert result.returncode == 0, result.stderr
    assert "corrupt" in result.stderr and "left in place" in result.stderr
    assert cli.state_file.read_bytes() == CORRUPT
    assert list(cli.state_file.parent.glob("state.json.corrupt-*")) == []


def test_run_reads_the_environ_it_is_given(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert "AGE_LIMIT" not in os.environ
    assert run(["config", "show", "--json"], {**cli.env, **LOCAL, "AGE_LIMIT": "77"}) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["settings"]}
    assert rows["age_limit"]["value"] == 77
    assert rows["state_file"]["source"] == "env CLOUDPROXY_STATE_FILE"


def test_cloud_provider_without_health_check_url_is_a_configuration_error(cli: Cli) -> None:
    env = {"DIGITALOCEAN_ENABLED": "True", "DIGITALOCEAN_ACCESS_TOKEN": "t0ken", **CREDS}
    result = cli.run("reconcile", **env)
    assert result.returncode == 4
    line = one_line_error(result)
    assert "HEALTH_CHECK_URL" in line and "t0ken" not in line


def test_a_digitalocean_only_reconcile_imports_no_other_sdk(cli: Cli, tmp_path: Path) -> None:
    from tests.standins.digitalocean import make_standin

    standin = make_standin(tmp_path)
    code = (
        "import sys\n"
        "from cloudproxy_cli.cli.app import run\n"
        "rc = run(['reconcile', '--json'])\n"
        "others = ('google.cloud', 'boto3', 'botocore', 'hcloud')\n"
        "bad = sorted({m.split('.')[0] + ('.cloud' if m.startswith('google.cloud') else '')\n"
        "              for m in sys.modules if m.startswith(others)})\n"
        "print('IMPORTED', bad, 'digitalocean' in sys.modules, rc, file=sys.stderr)\n"
    )
    env = {
        **cli.env,
        **CREDS,
        "DIGITALOCEAN_ENABLED": "True",
        "DIGITALOCEAN_ACCESS_TOKEN": standin.tokens[0],
        "DIGITALOCEAN_API_ENDPOINT": standin.endpoint,
        "DIGITALOCEAN_MIN_SCALING": "1",
        "HEALTH_CHECK_URL": "http://127.0.0.1:9/",
    }
    try:
        result = run_python(code, cwd=cli.root / "work", env=env)
    finally:
        standin.close()
    assert "IMPORTED [] True 0" in result.stderr, result.stderr
    assert standin.requests().count("create") == 1
