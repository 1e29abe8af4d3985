"""`reconcile --metrics-file` / METRICS_FILE through the real CLI on real local proxies: the
file parses with prometheus-client's own parser and says what the same run's JSON report says."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import Cli, one_line_error

LOCAL = {
    "LOCAL_ENABLED": "True",
    "LOCAL_MIN_SCALING": "2",
    "LOCAL_BOOT_DELAY": "0",
    "PROXY_USERNAME": "metrics",
    "PROXY_PASSWORD": "metrics-secret",
}
STATES = ("healthy", "pending", "pending_recycle", "recycling", "unhealthy")
ERROR_KINDS = ("list", "create", "delete")
DEADLINE_S = 60

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(path: Path) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def sample(samples: Samples, name: str, key: str, **labels: str) -> float:
    provider, instance = key.split("/")
    return samples[
        (name, frozenset({"provider": provider, "instance": instance, **labels}.items()))
    ]


def reconcile(cli: Cli, metrics: Path, *args: str, **env: str) -> tuple[dict[str, Any], Samples]:
    """One real run: its JSON report and the metrics file it wrote."""
    result = cli.run("reconcile", "--json", "--metrics-file", str(metrics), *args, **env)
    doc: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == doc["exit_code"], result.stderr
    return doc, parse(metrics)


def assert_agree(doc: dict[str, Any], samples: Samples) -> None:
    """Counts per state, in flight, deferrals, errors, ok and stalled: the same in both."""
    assert doc["instances"], doc
    for key, inst in doc["instances"].items():
        counts = inst["counts"]
        if counts:  # an instance never observed has no counts, and no proxies metric
            for state in STATES:
                assert sample(samples, "cloudproxy_proxies", key, state=state) == counts[state]
            in_flight = sample(samples, "cloudproxy_recycles_in_flight", key)
            assert in_flight == counts["in_flight"]
        assert sample(samples, "cloudproxy_run_deferrals", key) == len(inst["deferred"])
        errors = sum(
            sample(samples, "cloudproxy_run_provider_errors", key, kind=k) for k in ERROR_KINDS
        )
        assert errors == len(inst["errors"])
        assert sample(samples, "cloudproxy_instance_ok", key) == int(inst["ok"])
        assert sample(samples, "cloudproxy_rollout_stalled", key) == int(inst["stalled"])


def test_every_run_writes_metrics_that_match_its_json_report(cli: Cli, tmp_path: Path) -> None:
    metrics = tmp_path / "cloudproxy.prom"
    first, samples = reconcile(cli, metrics, **LOCAL)
    assert_agree(first, samples)
    assert [a["action"] for a in first["instances"]["local/default"]["actions"]] == ["create"] * 2
    assert sample(samples, "cloudproxy_proxies", "local/default", state="pending") == 2

    deadline = time.monotonic() + DEADLINE_S
    while True:  # the proxies answer within a boot; each run reports what it saw
        later, samples = reconcile(cli, metrics, **LOCAL)
        assert_agree(later, samples)
        if later["instances"]["local/default"]["counts"]["healthy"] == 2:
            break
        assert time.monotonic() < deadline, later
    assert later["instances"]["local/default"]["actions"] == []
    assert sample(samples, "cloudproxy_proxies", "local/default", state="pending") == 0


def test_metrics_are_written_after_a_run_in_which_an_instance_failed(
    cli: Cli, tmp_path: Path
) -> None:
    broken = cli.local_dir / "broken"
    broken.mkdir(parents=True)
    (broken / "local-deadbeef.json").write_text("{not json")
    env = {**LOCAL, "LOCAL_BROKEN_ENABLED": "True", "LOCAL_BROKEN_MIN_SCALING": "1"}
    metrics = tmp_path / "cloudproxy.prom"
    doc, samples = reconcile(cli, metrics, **env)
    assert doc["exit_code"] == 3
    assert_agree(doc, samples)
    assert sample(samples, "cloudproxy_run_provider_errors", "local/broken", kind="list") == 1
    assert sample(samples, "cloudproxy_instance_ok", "local/broken") == 0
    (broken / "local-deadbeef.json").unlink()


def test_a_stalled_rollout_is_stalled_in_the_metrics_as_in_the_report_and_exit_code(
    cli: Cli, tmp_path: Path
) -> None:
    # Surge with MAX_SCALING = MIN_SCALING: no room to surge, so every aged proxy is deferred
    # and no recycle ever completes; after ROLLING_PROGRESS_DEADLINE the rollout is stalled.
    env = {
        **LOCAL,
        "LOCAL_MAX_SCALING": "2",
        "ROLLING_DEPLOYMENT": "True",
        "ROLLING_STRATEGY": "surge",
        "ROLLING_PROGRESS_DEADLINE": "1",
    }
    metrics = tmp_path / "cloudproxy.prom"
    deadline = time.monotonic() + DEADLINE_S
    while True:  # time passes for real: the proxies age, then the rollout waits too long
        doc, samples = reconcile(cli, metrics, **env, AGE_LIMIT="1")
        assert_agree(doc, samples)
        if doc["instances"]["local/default"]["stalled"]:
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)  # a poll interval: the condition is the loop's test, not the sleep
    assert doc["exit_code"] == 6
    assert any("stalled" in r for r in doc["instances"]["local/default"]["degraded"])
    assert sample(samples, "cloudproxy_rollout_stalled", "local/default") == 1
    assert sample(samples, "cloudproxy_run_deferrals", "local/default") == 2
    status = cli.status_of("local/default", **env, AGE_LIMIT="1")
    assert status["phase"] == "stalled"


def test_metrics_file_from_the_environment_or_the_config_and_the_option_wins(
    cli: Cli, tmp_path: Path
) -> None:
    from_env, from_toml, from_option = (tmp_path / f"{n}.prom" for n in ("env", "toml", "opt"))
    assert cli.run("-q", "reconcile", **LOCAL, METRICS_FILE=str(from_env)).returncode == 0
    assert from_env.exists()
    config = tmp_path / "cloudproxy.toml"
    config.write_text(f'metrics_file = "{from_toml}"\n')
    assert cli.run("--config", str(config), "-q", "reconcile", **LOCAL).returncode == 0
    assert from_toml.exists()
    ran = cli.run(
        "--config", str(config), "-q", "reconcile", "--metrics-file", str(from_option), **LOCAL
    )
    assert ran.returncode == 0, ran.stderr
    assert from_option.exists()
    assert sorted(p.name for p in tmp_path.glob("*.prom")) == ["env.prom", "opt.prom", "toml.prom"]


def test_a_dry_run_writes_no_metrics_and_says_so(cli: Cli, tmp_path: Path) -> None:
    metrics = tmp_path / "cloudproxy.prom"
    result = cli.run("reconcile", "--dry-run", **LOCAL, METRICS_FILE=str(metrics))
    assert result.returncode == 0, result.stderr
    assert f"dry run: metrics file {metrics} not written" in result.stderr
    assert not metrics.exists()


def test_a_run_that_finds_the_lock_held_writes_no_metrics(cli: Cli, tmp_path: Path) -> None:
    from cloudproxy_cli.adapters.state_file import StateFile

    metrics = tmp_path / "cloudproxy.prom"
    cli.state_file.parent.mkdir(parents=True, exist_ok=True)
    with StateFile(cli.state_file).lock():
        result = cli.run("reconcile", "--metrics-file", str(metrics), **LOCAL)
    assert result.returncode == 5
    assert not metrics.exists()


def test_an_unwritable_metrics_path_is_one_line_exit_1_and_the_run_stands(
    cli: Cli, tmp_path: Path
) -> None:
    # A regular file where the directory should be: unwritable even for root (tests may run
    # as root, which file modes do not stop).
    out = tmp_path / "out"
    out.mkdir()
    (out / "textfile").write_text("not a directory")
    path = out / "textfile" / "c.prom"
    result = cli.run("-q", "reconcile", "--metrics-file", str(path), **LOCAL)
    assert result.returncode == 1
    line = one_line_error(result)
    assert str(path) in line and "the run itself completed" in line
    assert [p.name for p in out.iterdir()] == ["textfile"]
    # The run did its work all the same: the proxies it created are there, and recorded.
    assert len(cli.json("proxies", "--json", **LOCAL)["proxies"]) == 2


def test_a_metrics_path_that_is_a_directory_fails_the_same_way(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = out / "c.prom"
    target.mkdir(parents=True)
    # --metrics-file refuses a directory itself (a usage error); METRICS_FILE gets this far.
    result = cli.run("-q", "reconcile", "--json", **LOCAL, METRICS_FILE=str(target))
    assert result.returncode == 1
    assert str(target) in one_line_error(result)
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 1 and str(target) in doc["metrics_error"]
    # The temp file was written, and removed when the rename failed.
    assert [p.name for p in out.iterdir()] == ["c.prom"] and list(target.iterdir()) == []
