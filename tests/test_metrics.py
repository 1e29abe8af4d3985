"""The metrics file: real reconcile runs over the fakes, written, parsed back, checked against the
JSON run report of the same run."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudproxy_cli.app.metrics import PROXY_STATES, MetricsError, write_metrics
from cloudproxy_cli.app.service import InstanceRuntime, RunReport, run_reconcile
from cloudproxy_cli.app.status import run_document
from cloudproxy_cli.core.model import InstanceKey
from cloudproxy_cli.core.policy import InstancePolicy
from tests.support.fakes import FakeCloud, FakeProber, FakeProvider, MemoryStore
from tests.support.harness import Harness, policy

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def read_metrics(path: Path) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        assert family.documentation, f"{family.name} has no HELP text"
        assert family.name.startswith("cloudproxy_")
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, key: str, **labels: str) -> float:
    provider, instance = key.split("/")
    wanted = frozenset({"provider": provider, "instance": instance, **labels}.items())
    return samples[(name, wanted)]


def policies_of(h: Harness) -> dict[str, InstancePolicy]:
    return {str(h.key): h.policy}


def write(h: Harness, path: Path, report: RunReport, **kwargs: frozenset[str]) -> Samples:
    write_metrics(path, report, policies_of(h), now=h.clock.now(), **kwargs)
    return read_metrics(path)


def assert_matches_run_report(samples: Samples, h: Harness, report: RunReport) -> None:
    """Every count and error of the JSON run report has the same value in the metrics."""
    doc = run_document(report, policies_of(h), exit_code=0)
    for key, inst in doc["instances"].items():
        for state in ("healthy", "pending", "pending_recycle", "recycling"):
            assert value(samples, "cloudproxy_proxies", key, state=state) == inst["counts"][state]
        assert value(samples, "cloudproxy_recycles_in_flight", key) == inst["counts"]["in_flight"]
        kinds = ("list", "create", "delete")
        errors = sum(value(samples, "cloudproxy_run_provider_errors", key, kind=k) for k in kinds)
        assert errors == len(inst["errors"])
        assert value(samples, "cloudproxy_run_deferrals", key) == len(inst["deferred"])
        assert value(samples, "cloudproxy_instance_ok", key) == int(inst["ok"])


def test_a_fleet_filling_up_then_recycling_matches_each_run_report(tmp_path: Path) -> None:
    h = Harness(policy(min_scaling=5, min_available=3, batch_size=2, age_limit_s=3600))
    path = tmp_path / "cloudproxy.prom"
    key = str(h.key)

    first = h.run()  # creates 5 booting proxies
    samples = write(h, path, first)
    assert_matches_run_report(samples, h, first)
    assert value(samples, "cloudproxy_proxies", key, state="pending") == 5
    assert value(samples, "cloudproxy_proxies", key, state="healthy") == 0
    assert value(samples, "cloudproxy_rollout_in_progress", key) == 0

    h.clock.advance(120)  # booted
    samples = write(h, path, h.run())
    assert value(samples, "cloudproxy_proxies", key, state="healthy") == 5

    h.clock.advance(3600)  # all aged: recycling starts, two at a time, the rest deferred
    aged = h.run()
    samples = write(h, path, aged)
    assert_matches_run_report(samples, h, aged)
    assert value(samples, "cloudproxy_run_recycles_started", key) == 2
    assert value(samples, "cloudproxy_run_deferrals", key) == 3
    assert value(samples, "cloudproxy_rollout_in_progress", key) == 1
    assert value(samples, "cloudproxy_proxies", key, state="aged") == 3  # two deleted already
    assert value(samples, "cloudproxy_proxies", key, state="recycling") == 2

    h.clock.advance(120)  # the replacements are healthy: those two recycles complete
    done = h.run()
    samples = write(h, path, done)
    assert_matches_run_report(samples, h, done)
    assert value(samples, "cloudproxy_run_recycles_completed", key) == 2
    assert value(samples, "cloudproxy_min_available", key) == 3
    states = {dict(labels)["state"] for name, labels in samples if name == "cloudproxy_proxies"}
    assert states == set(PROXY_STATES)


def test_failed_calls_are_counted_by_kind_and_the_last_success_is_kept(tmp_path: Path) -> None:
    h = Harness(policy(min_scaling=3, min_available=1, batch_size=1))
    path = tmp_path / "cloudproxy.prom"
    key = str(h.key)
    good = h.run()
    samples = write(h, path, good)
    success_at = good.started_at.timestamp()
    assert value(samples, "cloudproxy_last_success_timestamp_seconds", key) == success_at
    assert value(samples, "cloudproxy_instance_ok", key) == 1

    # Creates fail: the instance failed this run; the last success is the earlier one.
    h.clock.advance(60)
    h.cloud.vms.clear()  # the three proxies vanished: the run tries to create three
    h.provider.fail_create = True
    failed = h.run()
    samples = write(h, path, failed)
    assert_matches_run_report(samples, h, failed)
    assert value(samples, "cloudproxy_run_provider_errors", key, kind="create") == 3
    assert value(samples, "cloudproxy_run_provider_errors", key, kind="list") == 0
    assert value(samples, "cloudproxy_instance_ok", key) == 0
    assert value(samples, "cloudproxy_last_success_timestamp_seconds", key) == success_at

    # The listing fails: one list error, still the same last success.
    h.clock.advance(60)
    h.provider.fail_list = True
    unlisted = h.run()
    samples = write(h, path, unlisted)
    assert_matches_run_report(samples, h, unlisted)
    assert value(samples, "cloudproxy_run_provider_errors", key, kind="list") == 1
    assert value(samples, "cloudproxy_last_success_timestamp_seconds", key) == success_at

    h.clock.advance(60)
    h.provider.fail_list = h.provider.fail_create = False
    recovered = h.run()
    samples = write(h, path, recovered)
    assert value(samples, "cloudproxy_last_success_timestamp_seconds", key) == (
        recovered.started_at.timestamp()
    )


def test_each_instance_has_its_own_labels_and_stalled_flag(tmp_path: Path) -> None:
    h = Harness(policy(min_scaling=2))
    cloud = FakeCloud(h.clock)
    keys = [InstanceKey("digitalocean", "default"), InstanceKey("digitalocean", "eu")]
    providers = {k: FakeProvider(cloud, k.instance) for k in keys}
    providers[keys[1]].fail_list = True
    runtimes = [InstanceRuntime(k, providers[k], h.policy, proxy_port=8899) for k in keys]
    report = run_reconcile(lambda _s: runtimes, MemoryStore(), FakeProber(cloud), h.clock)
    h.clock.advance(2.5)
    path = tmp_path / "cloudproxy.prom"
    policies = {str(k): h.policy for k in keys}
    write_metrics(path, report, policies, now=h.clock.now(), stalled=frozenset({"digitalocean/eu"}))
    samples = read_metrics(path)

    assert value(samples, "cloudproxy_proxies", "digitalocean/default", state="pending") == 2
    assert value(samples, "cloudproxy_proxies", "digitalocean/eu", state="pending") == 0
    assert value(samples, "cloudproxy_instance_ok", "digitalocean/default") == 1
    assert value(samples, "cloudproxy_instance_ok", "digitalocean/eu") == 0
    assert value(samples, "cloudproxy_rollout_stalled", "digitalocean/default") == 0
    assert value(samples, "cloudproxy_rollout_stalled", "digitalocean/eu") == 1
    assert samples[("cloudproxy_run_duration_seconds", frozenset())] == 2.5
    assert samples[("cloudproxy_run_timestamp_seconds", frozenset())] == (
        report.started_at.timestamp()
    )


def test_the_file_is_world_readable_and_replaced_whole(tmp_path: Path) -> None:
    h = Harness(policy())
    path = tmp_path / "cloudproxy.prom"
    path.write_text("stale\n", encoding="utf-8")
    write(h, path, h.run())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert "stale" not in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloudproxy.prom"]


def test_a_missing_directory_is_a_one_line_error_naming_the_path(tmp_path: Path) -> None:
    h = Harness(policy())
    path = tmp_path / "no-such-dir" / "cloudproxy.prom"
    with pytest.raises(MetricsError) as err:
        write(h, path, h.run())
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "No such file or directory" in message


def test_a_failed_write_leaves_no_partial_file_behind(tmp_path: Path) -> None:
    h = Harness(policy())
    path = tmp_path / "cloudproxy.prom"
    path.mkdir()  # the rename onto it fails after the temp file was written
    with pytest.raises(MetricsError, match=r"cloudproxy\.prom: Is a directory"):
        write(h, path, h.run())
    assert [p.name for p in tmp_path.iterdir()] == ["cloudproxy.prom"]
    assert list(path.iterdir()) == []


def test_an_unparsable_old_file_is_replaced_without_a_carried_timestamp(tmp_path: Path) -> None:
    h = Harness(policy())
    path = tmp_path / "cloudproxy.prom"
    path.write_text("cloudproxy_last_success_timestamp_seconds{{{ not metrics\n", "utf-8")
    h.provider.fail_list = True
    samples = write(h, path, h.run())
    assert not [k for k in samples if k[0] == "cloudproxy_last_success_timestamp_seconds"]
    assert value(samples, "cloudproxy_instance_ok", str(h.key)) == 0


def test_a_dry_run_writes_no_metrics(tmp_path: Path) -> None:
    h = Harness(policy())
    path = tmp_path / "cloudproxy.prom"
    with pytest.raises(ValueError, match="dry run"):
        write(h, path, h.run(dry_run=True))
    assert not path.exists()


def test_duration_is_never_negative(tmp_path: Path) -> None:
    h = Harness(policy())
    report = h.run()
    path = tmp_path / "cloudproxy.prom"
    write_metrics(path, report, policies_of(h), now=report.started_at - timedelta(seconds=1))
    assert read_metrics(path)[("cloudproxy_run_duration_seconds", frozenset())] == 0.0
