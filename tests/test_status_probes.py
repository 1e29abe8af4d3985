"""Probe reasons end to end: real local proxies (proxy.py, basic auth) whose password changed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudproxy_cli.core.model import InstanceKey, ProbeKind, ProbeResult, Proxy
from cloudproxy_cli.core.reconcile import reconcile
from cloudproxy_cli.core.state import InstanceState
from tests.support.cli import Cli
from tests.support.fakes import T0
from tests.support.harness import policy
from tests.support.local_proxies import local_sandbox

PASSWORD = "first-Pa55word"
ENV = {
    "LOCAL_ENABLED": "True",
    "LOCAL_MIN_SCALING": "2",
    "PROXY_USERNAME": "tester",
    "PROXY_PASSWORD": PASSWORD,
    "HEALTH_CHECK_TIMEOUT": "5",
}
KEY = "local/default"
WARNING = "credentials rejected by every proxy: did PROXY_PASSWORD change?"


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    with local_sandbox(tmp_path, **ENV) as sandbox:
        yield sandbox


def status(cli: Cli, **env: str) -> dict[str, Any]:
    return cli.status_of(KEY, **env)


def healthy_fleet(cli: Cli) -> None:
    """Reconcile until both proxies answer (each run probes them: no sleeping here)."""
    deadline = time.monotonic() + 60
    while status(cli)["healthy"] < 2:
        assert time.monotonic() < deadline, status(cli)
        assert cli.run("reconcile").returncode in (0, 6)


def test_a_changed_password_is_reported_per_proxy_and_fleet_wide(cli: Cli) -> None:
    healthy_fleet(cli)
    changed = {"PROXY_PASSWORD": "second-Pa55word"}
    run = cli.run("-v", "reconcile", **changed)
    # Nothing healthy and nothing booting: below the effective minimum, so degraded.
    assert run.returncode == 6, run.stderr
    assert WARNING in run.stderr
    assert run.stderr.count("unhealthy (auth): 407 proxy authentication required") == 2
    assert "degraded: 0 healthy and 0 booting proxies, below the effective minimum of 1" in (
        run.stdout
    )
    assert PASSWORD not in run.stderr and "second-Pa55word" not in run.stderr

    s = status(cli, **changed)
    assert (s["healthy"], s["unhealthy"]) == (0, 2)
    assert [(u["kind"], u["reason"]) for u in s["unhealthy_reasons"]] == [
        ("auth", "407 proxy authentication required")
    ] * 2
    assert {u["address"] for u in s["unhealthy_reasons"]} == set(s["unhealthy_ips"])
    assert any(w.startswith(WARNING) for w in s["warnings"])
    text = cli.run("rolling", "status", COLUMNS="200", **changed).stdout
    assert text.count("407 proxy authentication required (auth)") == 2
    assert WARNING in text

    rows = cli.json("proxies", "--json", **changed)["proxies"]
    assert [(r["state"], r["reason"], r["reason_kind"]) for r in rows] == [
        ("unhealthy", "407 proxy authentication required", "auth")
    ] * 2
    table = cli.run("proxies", COLUMNS="250", **changed).stdout
    assert "reason" in table and table.count("407 proxy authentication required") == 2

    # The old password back: healthy again, no reasons, no warning.
    assert cli.run("reconcile").returncode == 0
    s = status(cli)
    assert (s["healthy"], s["unhealthy_reasons"]) == (2, [])
    assert not any(w.startswith(WARNING) for w in s["warnings"])
    assert [r["reason"] for r in cli.json("proxies", "--json")["proxies"]] == [None, None]


@pytest.mark.parametrize(
    ("kinds", "warned"),
    [
        ([ProbeKind.AUTH, ProbeKind.AUTH], True),
        ([ProbeKind.AUTH, ProbeKind.AUTH, ProbeKind.OK], False),
        ([ProbeKind.AUTH, ProbeKind.TIMEOUT], False),
        ([ProbeKind.AUTH], False),  # one proxy proves nothing about the fleet
    ],
)
def test_the_credentials_warning_needs_every_probed_proxy_rejecting(
    kinds: list[ProbeKind], warned: bool
) -> None:
    proxies = [Proxy(f"p{n}", T0 - timedelta(hours=n), ip=f"127.0.0.{n + 1}") for n in range(3)]
    health = {
        p.id: ProbeResult(kind == ProbeKind.OK, str(kind), kind=kind)
        for p, kind in zip(proxies, kinds, strict=False)
    }
    plan = reconcile(
        InstanceKey("local"), proxies[: len(kinds)], health, InstanceState(),
        policy(min_scaling=len(kinds)), now=T0,
    )  # fmt: skip
    assert any(w.startswith(WARNING) for w in plan.warnings) is warned
    failed = [k for k in kinds if k != ProbeKind.OK]
    assert sorted(f.kind for f in plan.probe_failures) == sorted(str(k) for k in failed)
