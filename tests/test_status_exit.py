"""reconcile's exit code 6 (degraded) and its precedence: failure 1 > partial 3 > degraded 6."""

from __future__ import annotations

from datetime import timedelta

from cloudproxy_cli.app.service import InstanceRuntime, RunReport, run_reconcile
from cloudproxy_cli.app.status import StatusView, status_document
from cloudproxy_cli.cli.exit_codes import EXIT_CODES_HELP, ExitCode
from cloudproxy_cli.cli.results.reconcile import ReconcileResult
from cloudproxy_cli.core.model import InstanceKey
from cloudproxy_cli.core.policy import EffectiveRolling
from tests.support.fakes import FakeProvider
from tests.support.harness import Harness, policy

DEADLINE_S = 300


def stalling_harness() -> Harness:
    """Three aged proxies, batch 1; replacements that take an hour to boot never complete."""
    p = policy(min_scaling=3, min_available=2, batch_size=1, pending_timeout_s=7200)
    p = p._replace(progress_deadline=timedelta(seconds=DEADLINE_S))
    h = Harness(p)
    h.cloud.boot_seconds = 3600
    for n in range(3):
        h.provider.add(f"p{n}", age_s=4000 - n)
    return h


def exit_code(h: Harness, report: RunReport | None = None) -> ExitCode:
    report = report or h.reports[-1]
    return ReconcileResult(report, {str(i.key): h.policy for i in report.instances}).exit_code


def test_a_rollout_without_progress_past_the_deadline_is_degraded() -> None:
    h = stalling_harness()
    h.run()
    assert exit_code(h) == ExitCode.OK  # the recycle opened; its replacement boots
    h.clock.advance(DEADLINE_S - 1)
    h.run()
    assert exit_code(h) == ExitCode.OK
    h.clock.advance(2)
    report = h.run()
    assert exit_code(h) == ExitCode.DEGRADED
    assert int(ExitCode.DEGRADED) == 6
    result = ReconcileResult(report, {str(h.key): h.policy})
    assert result.document()["exit_code"] == 6
    assert result.document()["instances"][str(h.key)]["degraded"] == [
        f"rollout stalled: no recycle completed for {DEADLINE_S + 1} s "
        f"(ROLLING_PROGRESS_DEADLINE {DEADLINE_S} s)"
    ]
    # rolling status says the same.
    view = StatusView(
        now=h.clock.now(), rolling=h.policy.rolling,
        progress_deadline=timedelta(seconds=DEADLINE_S),
    )  # fmt: skip
    doc = status_document(
        h.store.state, EffectiveRolling(h.policy.rolling, {}), [str(h.key)], view=view
    )
    assert doc["status"][str(h.key)]["phase"] == "stalled"


def test_too_few_healthy_proxies_is_degraded() -> None:
    h = Harness(policy(min_scaling=3, min_available=2))
    for n in range(3):
        h.provider.add(f"p{n}", age_s=100)
    h.run()
    assert exit_code(h) == ExitCode.OK
    for n in (1, 2):  # two established proxies stop answering; nothing boots to make up
        h.cloud.vms[f"p{n}"].dead = True
    h.clock.advance(60)
    h.run()
    assert exit_code(h) == ExitCode.DEGRADED


def test_partial_and_failure_come_before_degraded() -> None:
    h = stalling_harness()
    broken = FakeProvider(h.cloud, "second")
    broken.fail_list = True
    runtimes = [
        h.runtime,
        InstanceRuntime(InstanceKey("digitalocean", "second"), broken, h.policy, 8899),
    ]
    h.run()
    h.clock.advance(DEADLINE_S + 1)
    report = run_reconcile(lambda _state: runtimes, h.store, h.prober, h.clock)
    assert exit_code(h, report) == ExitCode.PARTIAL  # one failed, the other degraded
    h.provider.fail_list = True
    report = run_reconcile(lambda _state: runtimes, h.store, h.prober, h.clock)
    assert exit_code(h, report) == ExitCode.FAILURE


def test_the_exit_codes_help_names_degraded() -> None:
    assert "6 degraded" in EXIT_CODES_HELP
