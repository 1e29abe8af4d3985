"""The spec's scenario, run by run, through the real service and core (behaviour.md's table)."""

from __future__ import annotations

import logging

import pytest

from cloudproxy_cli.core.plan import DeleteKind
from cloudproxy_cli.core.policy import Strategy
from tests.support.harness import Harness, policy

ORIGINAL = ["A", "B", "C", "D", "E"]


def five_aged(strategy: Strategy) -> Harness:
    h = Harness(policy(strategy=strategy))
    for i, name in enumerate(ORIGINAL):
        # A is the oldest; all five are past AGE_LIMIT=3600 and healthy.
        h.provider.add(name, age_s=4000 - i, ip=f"127.0.0.{11 + i}")
    return h


def counts(h: Harness) -> tuple[int, int, int]:
    snap = h.snapshot()
    return len(snap.healthy_ips), snap.pending, snap.in_flight


def selected(h: Harness) -> list[str]:
    plan = h.reports[-1].instances[0].plan
    assert plan is not None
    return [d.proxy_id for d in plan.deletes if d.kind == DeleteKind.RECYCLE] + [
        op.old_id or ""
        for op in plan.next_state.operations
        if op.opened_at == h.clock.now() and op.strategy == "surge"
    ]


def deferred(h: Harness) -> list[str]:
    plan = h.reports[-1].instances[0].plan
    assert plan is not None
    return [d.proxy_id for d in plan.deferrals]


def test_spec_scenario_replace_run_by_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudproxy")
    h = five_aged(Strategy.REPLACE)

    # Run 1: select A, B (5-2=3 >= 3); C, D, E deferred; delete A, B; create F, G.
    h.run()
    assert selected(h) == ["A", "B"]
    assert deferred(h) == ["C", "D", "E"]
    assert "A" not in h.ids() and "B" not in h.ids()
    assert len(h.cloud.created) == 2
    assert counts(h) == (3, 2, 2)
    assert h.snapshot().recycling_ips == ("127.0.0.11", "127.0.0.12")
    text = caplog.text
    assert (
        "Rolling deployment: Marked 127.0.0.11 for recycling in digitalocean/default. "
        "Currently recycling 1/2 proxies" in text
    )
    assert "Currently recycling 2/2 proxies" in text
    assert "Rolling deployment: Deferred recycling digitalocean/default droplet -> 127.0.0.13" in (
        text
    )

    # Run 2: F, G booting; batch full (2/2): C, D, E deferred.
    h.clock.advance(60)
    h.run()
    assert selected(h) == []
    assert deferred(h) == ["C", "D", "E"]
    assert all("batch full" in d.reason for d in h.snapshot().deferred)
    assert counts(h) == (3, 2, 2)

    # Run 3: F, G healthy -> A, B close; select C, D (5-2=3); E deferred; create H, I.
    caplog.clear()
    h.clock.advance(60)
    h.run()
    assert "Rolling deployment: Completed recycling 127.0.0.11 in digitalocean/default" in (
        caplog.text
    )
    assert selected(h) == ["C", "D"]
    assert deferred(h) == ["E"]
    assert counts(h) == (3, 2, 2)

    # Run 4: H, I booting; E deferred (batch full).
    h.clock.advance(60)
    h.run()
    assert selected(h) == []
    assert deferred(h) == ["E"]
    assert counts(h) == (3, 2, 2)

    # Run 5: H, I healthy; select E (5-1=4 >= 3); create J.
    h.clock.advance(60)
    h.run()
    assert selected(h) == ["E"]
    assert counts(h) == (4, 1, 1)
    assert not set(ORIGINAL) & h.ids(), "every original proxy is gone after run 5"

    # Run 6: J healthy; nothing aged: done. (The table's run 6 is the first run after J is
    # healthy; with a 90 s boot that is two minutes after run 5.)
    h.clock.advance(120)
    h.run()
    assert selected(h) == []
    assert deferred(h) == []
    assert counts(h) == (5, 0, 0)
    assert len(h.cloud.created) == 5 and sorted(h.cloud.deleted) == ORIGINAL


def test_spec_scenario_surge_never_drops_below_five_available() -> None:
    h = five_aged(Strategy.SURGE)
    # (healthy, pending, in flight) after each run. A surge operation stays in flight until its
    # old proxy is actually deleted, so the next batch starts one run after the previous closes.
    expected = [
        (5, 2, 2),  # select A, B (kept serving); create F, G
        (5, 2, 2),  # F, G booting
        (5, 0, 0),  # F, G healthy: delete A, B; C, D, E wait for the batch to free up
        (5, 2, 2),  # select C, D; create H, I
        (5, 2, 2),  # H, I booting
        (5, 0, 0),  # H, I healthy: delete C, D
        (5, 1, 1),  # select E; create J
        (5, 1, 1),  # J booting
        (5, 0, 0),  # J healthy: delete E; done
    ]
    seen = []
    for run in range(len(expected)):
        if run:
            h.clock.advance(60)
        h.run()
        seen.append(counts(h))
        # Never more than the batch of extra VMs exist at once.
        assert len(h.ids()) <= 5 + 2
    assert seen == expected
    assert not set(ORIGINAL) & h.ids()
    assert h.snapshot().pending_recycle_ips == ()
    assert len(h.cloud.created) == 5


def test_surge_keeps_selected_proxies_serving_as_pending_recycle() -> None:
    h = five_aged(Strategy.SURGE)
    h.run()
    snap = h.snapshot()
    assert snap.pending_recycle_ips == ("127.0.0.11", "127.0.0.12")
    assert set(ORIGINAL) <= h.ids(), "surge deletes nothing before the replacements are healthy"
    assert snap.recycling_ips == ()
