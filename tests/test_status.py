"""`rolling status`: the phase, counts, timings and reasons it shows, in text and JSON alike."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudproxy_cli.adapters.state_file import StateFile
from cloudproxy_cli.core.state import (
    Deferral,
    InstanceSnapshot,
    InstanceState,
    OperationStrategy,
    ProbeFailure,
    RecycleOperation,
    Rollout,
    State,
)
from tests.support.cli import Cli
from tests.support.harness import Harness, policy

CREDS = {"PROXY_USERNAME": "tester", "PROXY_PASSWORD": "s3cret-Pa55"}
LOCAL = {"LOCAL_ENABLED": "True", "LOCAL_MIN_SCALING": "4", "ROLLING_DEPLOYMENT": "True", **CREDS}
KEY = "local/default"
IPS = [f"127.0.0.1:{40000 + n}" for n in range(5)]
DEFERRED = "would leave 2 healthy proxies, below the minimum of 3"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli.make(tmp_path, **LOCAL)


def write_state(cli: Cli, *, last_run_ago_s: int = 30, next_age_in_s: int | None = 100) -> None:
    """A recycle under way in local/default: IPS[0] is being replaced by IPS[4], IPS[1] waits."""
    now = datetime.now(UTC)
    ran = now - timedelta(seconds=last_run_ago_s)
    op = RecycleOperation(
        "op-0", ran, OperationStrategy.REPLACE, old_id="p0", old_address=IPS[0],
        old_deleted=True, replacement_id="local-n4",
    )  # fmt: skip
    snap = InstanceSnapshot(
        last_update=ran,
        healthy_ips=(IPS[1], IPS[2]),
        pending_ips=(IPS[4],),
        pending=1,
        recycling_ips=(IPS[0],),
        unhealthy_ips=(IPS[3],),
        aged_ips=(IPS[1],),
        deferred=(Deferral("p1", IPS[1], DEFERRED),),
        in_flight=1,
        effective_min_available=3,
        min_scaling=4,
        probe_failures=(ProbeFailure(IPS[3], "timeout", "timed out after 2.0s"),),
        next_age_at=None if next_age_in_s is None else now + timedelta(seconds=next_age_in_s),
        rollout=Rollout(started_at=ran),
        replacements={"op-0": IPS[4]},
    )
    inst = InstanceState(operations=(op,), snapshot=snap, rollout=Rollout(started_at=ran))
    StateFile(cli.state_file).save(State(instances={KEY: inst}))


def entry(cli: Cli, **env: str) -> dict[str, Any]:
    return cli.status_of(KEY, **env)


def test_json_keeps_the_spec_keys_and_adds_the_explanations(cli: Cli) -> None:
    write_state(cli)
    s = entry(cli)
    spec = ("healthy", "pending", "pending_recycle", "recycling", "last_update", "healthy_ips",
            "pending_recycle_ips", "recycling_ips")  # fmt: skip
    assert list(s)[: len(spec)] == list(spec)
    assert (s["healthy"], s["pending"], s["recycling"]) == (2, 1, 1)
    assert s["phase"] == "rolling" and s["phase_text"] == "rolling 0 of 2"
    assert s["phase_reasons"] == [f"{IPS[1]}: {DEFERRED}"]
    assert (s["unhealthy"], s["aged_waiting"], s["aged_waiting_ips"]) == (1, 1, [IPS[1]])
    assert s["unhealthy_reasons"] == [
        {"address": IPS[3], "kind": "timeout", "reason": "timed out after 2.0s"}
    ]
    assert 30 <= s["last_run_age_s"] <= 40 and s["stale"] is False
    assert 90 <= s["next_recycle_in_s"] <= 100
    # The replacement by its address, its id alongside.
    op = s["operations"][0]
    assert (op["old"], op["replacement"], op["replacement_id"]) == (IPS[0], IPS[4], "local-n4")


def test_a_run_older_than_stale_after_is_flagged(cli: Cli) -> None:
    write_state(cli, last_run_ago_s=400, next_age_in_s=None)
    s = entry(cli)
    assert s["stale"] is True and s["next_recycle_in_s"] is None
    text = cli.run("rolling", "status", COLUMNS="200").stdout
    assert "STALE" in text
    assert "the last reconcile ran 4" in text and "(more than STALE_AFTER 300 s)" in text
    assert entry(cli, STALE_AFTER="1000")["stale"] is False
    assert "STALE" not in cli.run("rolling", "status", STALE_AFTER="1000", COLUMNS="200").stdout


def test_header_and_rows_show_the_minimum_in_force_and_label_the_effective_one(
    cli: Cli,
) -> None:
    write_state(cli)
    assert cli.run("rolling", "set", "--min-available", "4").returncode == 0
    s = entry(cli)
    # MIN_SCALING 4: a minimum of 4 would block every recycle, so 3 is in force.
    assert (s["min_available"], s["effective_min_available"]) == (4, 3)
    for columns in ("200", "80"):
        out = cli.run("rolling", "status", COLUMNS=columns).stdout
        assert "min available 4 (rolling set)" in out
        assert "4 (eff. 3)" in out
    s = entry(cli, LOCAL_MIN_SCALING="6")
    assert (s["min_available"], s["effective_min_available"]) == (4, 4)
    out = cli.run("rolling", "status", LOCAL_MIN_SCALING="6", COLUMNS="200").stdout
    assert "eff." not in out


def values_shown(s: dict[str, Any]) -> list[str]:
    """Values the text must show whole (the ticking ages aside)."""
    return [KEY, s["phase_text"], IPS[0], IPS[4], DEFERRED, "timed out after 2.0s", "3 (eff. 1)"]


@pytest.mark.parametrize("columns", [80, 60])
def test_status_at_80_columns_cuts_no_value(cli: Cli, columns: int) -> None:
    write_state(cli)
    out = cli.run("rolling", "status", COLUMNS=str(columns), ROLLING_MIN_AVAILABLE="3",
                  LOCAL_MIN_SCALING="2").stdout  # fmt: skip
    s = entry(cli, ROLLING_MIN_AVAILABLE="3", LOCAL_MIN_SCALING="2")
    lines = out.splitlines()
    assert "…" not in out
    assert all(len(line) <= columns for line in lines), [ln for ln in lines if len(ln) > columns]
    for label, value in [("healthy", "2"), ("unhealthy", "1"), ("pending", "1"),
                         ("aged waiting", "1"), ("recycling", "1"), ("in flight", "1/2"),
                         ("next recycle", "in ")]:  # fmt: skip
        assert any(ln.split()[: len(label.split())] == label.split() and value in ln
                   for ln in lines), (label, out)  # fmt: skip
    joined = " ".join(" ".join(line.split()) for line in lines)
    for value in values_shown(s):
        assert value in joined, (value, out)


def test_wide_status_is_a_table_with_the_same_values(cli: Cli) -> None:
    write_state(cli)
    out = cli.run("rolling", "status", COLUMNS="250").stdout
    header = next(line for line in out.splitlines() if "unhealthy" in line and "phase" in line)
    assert "aged waiting" in header and "next recycle" in header
    row = next(line for line in out.splitlines() if line.lstrip().startswith(KEY))
    cells = [c.strip() for c in row.split("│")]
    assert cells[:9] == [KEY, "rolling 0 of 2", "2", "1", "1", "1", "0", "1", "1/2"]
    assert f"recycling {IPS[0]} -> {IPS[4]}" in out
    assert f"unhealthy {IPS[3]}: timed out after 2.0s (timeout)" in out


def test_a_fully_unhealthy_fleet_says_so(cli: Cli) -> None:
    now = datetime.now(UTC)
    snap = InstanceSnapshot(last_update=now, unhealthy_ips=tuple(IPS[:3]), min_scaling=4)
    StateFile(cli.state_file).save(State(instances={KEY: InstanceState(snapshot=snap)}))
    s = entry(cli)
    assert (s["healthy"], s["unhealthy"], s["phase"]) == (0, 3, "idle")


def test_a_state_file_from_before_rollout_tracking_loads(cli: Cli) -> None:
    ran = (datetime.now(UTC) - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    old = {
        "schema_version": 1,
        "overrides": {},
        "instances": {
            KEY: {
                "records": {},
                "operations": [
                    {"op_id": "op", "opened_at": ran, "strategy": "replace", "old_id": "p0",
                     "old_address": IPS[0], "old_deleted": True, "replacement_id": "n1"}
                ],
                "snapshot": {"last_update": ran, "healthy_ips": [IPS[1]], "in_flight": 1},
            }
        },
    }  # fmt: skip
    cli.state_file.parent.mkdir(parents=True)
    cli.state_file.write_text(json.dumps(old))
    s = entry(cli)
    assert s["phase_text"] == "rolling 0 of 1" and s["rollout"] is None
    assert s["operations"][0]["replacement"] == "n1"  # no address known: its id
    assert s["unhealthy_reasons"] == [] and s["next_recycle_in_s"] is None


def test_reconcile_records_replacements_by_address() -> None:
    h = Harness(policy(min_scaling=3, min_available=2, batch_size=1))
    for n in range(3):
        h.provider.add(f"p{n}", age_s=4000 - n)
    h.run()
    (op,) = h.store.state.instance(str(h.key)).operations
    assert op.replacement_id is not None
    address = h.provider.list_proxies()[-1].address
    assert address is not None and h.snapshot().replacements == {op.op_id: address}


def test_stale_after_and_the_progress_deadline_come_from_env_or_toml(cli: Cli) -> None:
    write_state(cli, last_run_ago_s=400)
    config = cli.root / "cloudproxy.toml"
    config.write_text("stale_after = 500\nrolling_progress_deadline = 900\n")
    doc = cli.json("--config", str(config), "rolling", "status", "--json")
    assert (doc["config"]["stale_after_s"], doc["config"]["progress_deadline_s"]) == (500, 900)
    assert doc["status"][KEY]["stale"] is False
    doc = cli.json("--config", str(config), "rolling", "status", "--json", STALE_AFTER="60",
                   ROLLING_PROGRESS_DEADLINE="120")  # fmt: skip
    assert (doc["config"]["stale_after_s"], doc["config"]["progress_deadline_s"]) == (60, 120)
    # The rollout started 400 s ago without a completed recycle: past 120 s, stalled.
    assert doc["status"][KEY]["stale"] is True and doc["status"][KEY]["phase"] == "stalled"
    bad = cli.run("rolling", "status", STALE_AFTER="0")
    assert bad.returncode == 4 and "STALE_AFTER" in bad.stderr


def test_the_new_state_fields_round_trip_through_the_state_file(cli: Cli) -> None:
    write_state(cli)
    store = StateFile(cli.state_file)
    loaded = store.load().state
    store.save(loaded)
    again = store.load().state
    assert again == loaded
    inst = again.instance(KEY)
    assert inst.rollout is not None and inst.snapshot is not None
    assert inst.snapshot.replacements == {"op-0": IPS[4]}
    assert inst.snapshot.probe_failures == (
        ProbeFailure(IPS[3], "timeout", "timed out after 2.0s"),
    )
    assert inst.snapshot.rollout == inst.rollout and inst.snapshot.next_age_at is not None
