"""Output: `proxies` and `config show` readable at 80 columns, `--plain`, `proxies random`."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli, one_line_error
from tests.support.local_proxies import local_sandbox

# Long enough credentials that the proxies table needs more than 80 columns.
CREDS = {"PROXY_USERNAME": "operator", "PROXY_PASSWORD": "a-rather-long-secret"}
LOCAL = {"LOCAL_ENABLED": "True", "LOCAL_MIN_SCALING": "2", **CREDS}


@pytest.fixture
def cli() -> Iterator[Cli]:
    # A short root: the paths `config show` prints must fit in 80 columns themselves.
    root = Path(tempfile.mkdtemp(prefix="cp", dir="/tmp"))
    try:
        with local_sandbox(root) as sandbox:
            yield sandbox
    finally:
        shutil.rmtree(root)


def assert_readable(text: str, values: list[str], width: int) -> None:
    """Every value whole on one line, nothing cut (no ellipsis), no line wider than ``width``."""
    assert "…" not in text
    lines = text.splitlines()
    for value in values:
        assert any(value in line for line in lines), (value, text)
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, too_wide


def wait_healthy(cli: Cli, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = cli.json("reconcile", "--json", **LOCAL)
        if doc["instances"]["local/default"]["counts"]["healthy"] >= count:
            return
        time.sleep(0.1)
    raise AssertionError("the proxies never became healthy")


def test_proxies_fit_80_columns_with_every_url_whole(cli: Cli) -> None:
    assert cli.run("reconcile", **LOCAL).returncode == 0
    rows = cli.json("proxies", "--json", **LOCAL)["proxies"]
    assert len(rows) == 2
    values = [v for r in rows for v in (r["url"], r["id"], r["state"], r["instance"])]
    narrow = cli.run("proxies", **LOCAL, COLUMNS="80")
    assert narrow.returncode == 0
    assert_readable(narrow.stdout, values, 80)
    # A wide terminal gets the table, a row per proxy.
    wide = cli.run("proxies", **LOCAL, COLUMNS="200").stdout
    assert "┃" in wide
    for r in rows:
        assert any(r["url"] in line and r["id"] in line for line in wide.splitlines())


def test_config_show_fits_80_columns_with_every_value_whole(cli: Cli) -> None:
    env = {**LOCAL, "LOCAL_SECONDARY_ENABLED": "True", "AGE_LIMIT": "600"}
    doc = cli.json("config", "show", "--json", **env)
    text = cli.run("config", "show", **env, COLUMNS="80")
    assert text.returncode == 0
    values = []
    for row in doc["settings"]:
        value = row["value"]
        shown = (
            "(none)" if row["name"] == "config_file"
            else "(unset)" if value is None
            else str(value).lower() if isinstance(value, bool)
            else str(value)
        )  # fmt: skip
        values += [row["name"], shown, row["source"]]
        assert any(row["name"] in ln and shown in ln for ln in text.stdout.splitlines()), row
    assert_readable(text.stdout, values, 80)
    assert "providers.local.secondary.min_scaling" in text.stdout


def test_proxies_plain_is_one_url_per_line_and_nothing_else(cli: Cli) -> None:
    empty = cli.run("proxies", "--plain", **LOCAL)
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")
    assert cli.run("reconcile", **LOCAL).returncode == 0
    urls = [r["url"] for r in cli.json("proxies", "--json", **LOCAL)["proxies"]]
    result = cli.run("proxies", "--plain", **LOCAL, COLUMNS="20")
    assert result.returncode == 0
    assert result.stdout.splitlines() == urls
    assert result.stderr == ""
    both = cli.run("proxies", "--plain", "--json", **LOCAL)
    assert both.returncode == 2
    assert "--plain" in one_line_error(both)


def test_proxies_random_prints_one_healthy_url_or_fails_in_one_line(cli: Cli) -> None:
    none = cli.run("proxies", "random", **LOCAL)
    assert none.returncode == 1
    assert "no healthy proxy" in one_line_error(none)
    assert none.stdout == ""
    wait_healthy(cli, 2)
    urls = {r["url"] for r in cli.json("proxies", "--json", **LOCAL)["proxies"]}
    seen = set()
    for _ in range(12):
        result = cli.run("proxies", "random", **LOCAL)
        assert result.returncode == 0, result.stderr
        (line,) = result.stdout.splitlines()
        assert line in urls
        seen.add(line)
    # Random, not always the first: twelve draws of two hit both but for 1 time in 2048.
    assert seen == urls
    doc = cli.json("proxies", "random", "--json", **LOCAL)
    assert doc["proxy"]["url"] in urls and doc["proxy"]["state"] == "healthy"
