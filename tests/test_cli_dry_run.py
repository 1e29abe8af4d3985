"""A dry run words its log as intentions ("would mark ..."); a real run keeps the spec's words."""

from __future__ import annotations

import json
import logging

import pytest

from cloudproxy_cli.core.policy import Strategy
from tests.support.cli import Cli
from tests.support.harness import Harness, policy

KEY = "digitalocean/default"
LOCAL = {
    "LOCAL_ENABLED": "True",
    "LOCAL_MIN_SCALING": "2",
    "PROXY_USERNAME": "dry",
    "PROXY_PASSWORD": "dry-secret",
}
# The spec's past-tense lines (and the shell's "Created"/"Deleted"): never in a dry run's log.
DONE_WORDS = ("Marked ", "Deferred recycling", "Completed recycling", "Cannot recycle", "Created ")


def aged_fleet(min_available: int = 3) -> Harness:
    h = Harness(policy(strategy=Strategy.REPLACE, min_available=min_available))
    for i, name in enumerate(["A", "B", "C", "D", "E"]):
        h.provider.add(name, age_s=4000 - i, ip=f"127.0.0.{11 + i}")  # all past AGE_LIMIT
    return h


def logged(caplog: pytest.LogCaptureFixture, h: Harness, *, dry_run: bool) -> list[str]:
    caplog.clear()
    report = h.run(dry_run=dry_run)
    lines = [r.getMessage() for r in caplog.records if r.name == "cloudproxy"]
    # The run report's log (JSON "log") is what was logged: all of it in a dry run; in a real
    # run the spec's lines, the shell logging each action besides.
    ours = lines if dry_run else [line for line in lines if line.startswith("Rolling")]
    assert list(report.instances[0].log) == ours
    return lines


def assert_intentions_only(lines: list[str]) -> None:
    assert lines
    for line in lines:
        assert "would " in line, line
        assert not any(word in line for word in DONE_WORDS), line


def test_a_dry_run_says_what_the_real_run_then_does(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudproxy")
    h = aged_fleet()
    planned = logged(caplog, h, dry_run=True)
    assert_intentions_only(planned)
    assert planned == [
        f"Rolling deployment: would mark 127.0.0.11 for recycling in {KEY}; "
        "would be recycling 1/2 proxies",
        f"Rolling deployment: would mark 127.0.0.12 for recycling in {KEY}; "
        "would be recycling 2/2 proxies",
        f"Rolling deployment: would not recycle 127.0.0.13 for {KEY}: batch size reached "
        "(2/2 proxies recycling)",
        f"Rolling deployment: would defer recycling {KEY} droplet -> 127.0.0.13 "
        "(batch full: already recycling 2/2)",
        f"Rolling deployment: would not recycle 127.0.0.14 for {KEY}: batch size reached "
        "(2/2 proxies recycling)",
        f"Rolling deployment: would defer recycling {KEY} droplet -> 127.0.0.14 "
        "(batch full: already recycling 2/2)",
        f"Rolling deployment: would not recycle 127.0.0.15 for {KEY}: batch size reached "
        "(2/2 proxies recycling)",
        f"Rolling deployment: would defer recycling {KEY} droplet -> 127.0.0.15 "
        "(batch full: already recycling 2/2)",
        f"would delete 127.0.0.11 in {KEY}: aged; available after: 4 (minimum 3)",
        f"would delete 127.0.0.12 in {KEY}: aged; available after: 3 (minimum 3)",
        f"would create a droplet in {KEY}: replacement for 127.0.0.11",
        f"would create a droplet in {KEY}: replacement for 127.0.0.12",
    ]
    assert len(h.cloud.created) == 0 and len(h.ids()) == 5  # a dry run changes nothing

    done = logged(caplog, h, dry_run=False)  # the same clock: the same decisions, for real
    assert (
        f"Rolling deployment: Marked 127.0.0.11 for recycling in {KEY}. "
        "Currently recycling 1/2 proxies" in done
    )
    assert (
        f"Rolling deployment: Cannot recycle 127.0.0.13 for {KEY}. Batch size reached "
        "(2/2 proxies recycling)" in done
    )
    assert f"Rolling deployment: Deferred recycling {KEY} droplet -> 127.0.0.13" in "\n".join(done)
    assert not any("would " in line for line in done)
    assert len(h.cloud.created) == 2
    # One event each: the dry run's lines of the spec's kind match the real run's one to one.
    real_events = [line for line in done if line.startswith("Rolling deployment:")]
    planned_events = [line for line in planned if line.startswith("Rolling deployment:")]
    assert len(real_events) == len(planned_events)


def test_a_dry_run_would_complete_a_recycle(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudproxy")
    h = aged_fleet()
    h.run()  # A and B go, their replacements boot
    h.clock.advance(60)
    h.run()  # still booting
    h.clock.advance(60)  # now healthy: the next run completes both recycles
    planned = logged(caplog, h, dry_run=True)
    assert_intentions_only(planned)
    assert f"Rolling deployment: would complete recycling 127.0.0.11 in {KEY}" in planned
    done = logged(caplog, h, dry_run=False)
    assert f"Rolling deployment: Completed recycling 127.0.0.11 in {KEY}" in done


def test_a_dry_run_held_back_by_the_minimum_says_it_would_not_recycle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cloudproxy")
    h = aged_fleet(min_available=4)  # effective minimum 4 of 5: one recycle at a time
    planned = logged(caplog, h, dry_run=True)
    assert_intentions_only(planned)
    assert (
        f"Rolling deployment: would not recycle 127.0.0.12 for {KEY}: it would reduce available "
        "proxies below minimum (3 < 4)" in planned
    )
    done = logged(caplog, h, dry_run=False)
    assert (
        f"Rolling deployment: Cannot recycle 127.0.0.12 for {KEY}. Would reduce available "
        "proxies below minimum (3 < 4)" in done
    )


def test_the_cli_dry_run_logs_intentions_and_keeps_its_summary(cli: Cli) -> None:
    result = cli.run("reconcile", "--dry-run", **LOCAL)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "dry run: 2 to create, 0 to delete, 0 deferred"
    assert sum("would create a proxy in local/default: below MIN_SCALING" in x for x in lines) == 2
    assert not any(word in result.stderr for word in DONE_WORDS)
    doc = json.loads(cli.run("reconcile", "--dry-run", "--json", **LOCAL).stdout)
    assert doc["instances"]["local/default"]["log"] == [
        f"would create a proxy in local/default: below MIN_SCALING ({n}/2)" for n in (0, 1)
    ]
    assert cli.json("proxies", "--json", **LOCAL)["proxies"] == []  # still nothing created

    real = cli.run("reconcile", **LOCAL)
    assert real.returncode == 0, real.stderr
    assert real.stderr.count("INFO Created local-") == 2
    assert "would " not in real.stderr
