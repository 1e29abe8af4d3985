"""End to end: the cloudproxy command (its real entry point) recycles a real local fleet."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.local_proxies import local_sandbox, proxy_processes

pytestmark = pytest.mark.e2e

AGE_LIMIT_S = 4
ENV = {
    "LOCAL_ENABLED": "True",
    "LOCAL_MIN_SCALING": "5",
    "LOCAL_BOOT_DELAY": "0.3",
    "ROLLING_DEPLOYMENT": "True",
    "ROLLING_MIN_AVAILABLE": "3",
    "ROLLING_BATCH_SIZE": "2",
    "AGE_LIMIT": str(AGE_LIMIT_S),
    "HEALTH_CHECK_TIMEOUT": "5",
    "PROXY_USERNAME": "e2e",
    "PROXY_PASSWORD": "e2e-secret",
}


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    with local_sandbox(tmp_path, **ENV) as sandbox:
        yield sandbox
    assert proxy_processes(str(sandbox.local_dir)) == [], "a proxy process outlived the test"


def reconcile_and_status(cli: Cli, **env: str) -> tuple[dict[str, Any], dict[str, Any]]:
    run = cli.run("reconcile", "--json", **env)
    assert run.returncode == 0, run.stderr
    status = cli.json("rolling", "status", "--json", **env)
    return status["config"], status["status"]["local/default"]


def proxy_ids(cli: Cli) -> set[str]:
    return {row["id"] for row in cli.json("proxies", "--json")["proxies"]}


def test_rolling_recycles_every_original_proxy_without_dropping_below_the_minimum(
    cli: Cli,
) -> None:
    # Fill the fleet: 5 proxies, all healthy. No age limit yet: on a slow machine the first
    # proxies would otherwise age past AGE_LIMIT (and be recycled) before the last is healthy.
    deadline = time.monotonic() + 60
    while True:
        _, s = reconcile_and_status(cli, AGE_LIMIT="0")
        if s["healthy"] == 5:
            break
        assert time.monotonic() < deadline, s
    originals = proxy_ids(cli)
    assert len(originals) == 5

    # Keep running cron until every original proxy has been replaced. Time passes for real:
    # the originals age past AGE_LIMIT after a few seconds; the checks hold after every run.
    runs, max_in_flight, seen_recycling = 0, 0, False
    deadline = time.monotonic() + 120
    while originals & proxy_ids(cli):
        assert time.monotonic() < deadline, "recycling did not finish"
        config, s = reconcile_and_status(cli)
        runs += 1
        assert s["healthy"] >= 3, s  # never below ROLLING_MIN_AVAILABLE once the fleet was full
        assert s["in_flight"] <= 2, s  # never more than ROLLING_BATCH_SIZE in flight
        assert len(s["recycling_ips"]) <= 2
        assert s["last_error"] is None, s
        assert config["batch_size"] == 2
        max_in_flight = max(max_in_flight, s["in_flight"])
        seen_recycling |= bool(s["recycling_ips"])
    assert max_in_flight == 2, "the batch was used"
    assert seen_recycling
    assert runs >= 3, "five proxies at two per batch take at least three runs"
    assert len(proxy_ids(cli)) >= 3


def test_rolling_set_batch_size_is_visible_and_enforced_by_the_next_reconcile(cli: Cli) -> None:
    env = {"ROLLING_MIN_AVAILABLE": "1", "AGE_LIMIT": "0"}
    deadline = time.monotonic() + 60
    while reconcile_and_status(cli, **env)[1]["healthy"] < 5:
        assert time.monotonic() < deadline
    assert cli.run("rolling", "set", "--batch-size", "3").returncode == 0
    config = cli.json("rolling", "status", "--json")["config"]
    assert config["batch_size"] == 3 and config["sources"]["batch_size"] == "rolling set"
    # Wait (for real) until the whole fleet is older than a one-second age limit.
    time.sleep(1.1)  # the proxies must age: this is the scenario's clock, not synchronisation
    result = cli.json("reconcile", "--json", AGE_LIMIT="1", ROLLING_MIN_AVAILABLE="1")
    actions = result["instances"]["local/default"]["actions"]
    recycled = [a for a in actions if a["action"] == "delete" and a["kind"] == "recycle"]
    assert len(recycled) == 3
    assert len(result["instances"]["local/default"]["deferred"]) == 2
    assert result["instances"]["local/default"]["counts"]["in_flight"] == 3
    status = cli.json("rolling", "status", "--json")["status"]["local/default"]
    assert status["in_flight"] == 3 and len(status["recycling_ips"]) == 3
