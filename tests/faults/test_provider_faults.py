"""Every kind of provider call fails in every way the stand-ins can fail it; the fleet recovers.

Each case: three aged proxies on a stand-in (DigitalOcean, Vultr, AWS through moto), one fault
queued for one kind of request, two runs that meet it, then runs without faults until the
fleet converges (MIN_SCALING healthy, none aged, nothing in flight) within a bounded number of
runs. After every run: every VM of ours in the stand-in was listed, the batch was never
exceeded, no recycle took availability below the minimum, and no create passed MAX_SCALING.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudproxy_cli.core.policy import Strategy
from tests.faults.reliability import Outcome, record
from tests.faults.world import CLOUDS, World, cloud, fleet_policy
from tests.standins.base import Kind
from tests.standins.http import Failure

FAULT_RUNS = 2  # runs that meet the fault before it is lifted


@dataclass(frozen=True)
class Fault:
    name: str
    make: Callable[[], Failure]
    kinds: tuple[Kind, ...]
    skip: int = 0  # requests of the kind served normally first


ALL: tuple[Kind, ...] = ("list", "create", "delete", "firewall")
FAULTS = (
    Fault("5xx (503)", lambda: Failure.error(503), ALL),
    Fault("error status (400)", lambda: Failure.error(400), ALL),
    Fault("429 with Retry-After", lambda: Failure.rate_limited(retry_after=1), ALL),
    Fault("connection dropped", Failure.drop, ALL),
    Fault("malformed JSON", lambda: Failure.malformed("{not json"), ALL),
    Fault("well-formed answer of the wrong shape", lambda: Failure.malformed({"x": []}), ALL),
    Fault("ghost (done, then 502)", lambda: Failure.ghost(502), ("create", "delete")),
    Fault("ghost (done, then dropped)", lambda: Failure.ghost(None), ("create", "delete")),
    Fault("later page fails (503)", lambda: Failure.error(503), ("list",), skip=1),
)


@dataclass(frozen=True)
class Case:
    provider: str
    fault: Fault
    kind: Kind
    times: int  # 1: a blip the adapter's retry may absorb; 3: lasts beyond its retries
    strategy: Strategy

    @property
    def fault_class(self) -> str:
        return f"provider {self.kind}: {self.fault.name}"

    def __str__(self) -> str:
        return f"{self.provider}-{self.kind}-{self.fault.name}-x{self.times}-{self.strategy}"


def _cases() -> list[Case]:
    cases: list[Case] = []
    for provider in CLOUDS:
        for fault in FAULTS:
            for kind in fault.kinds:
                n = len(cases)
                strategy = Strategy.SURGE if n % 2 else Strategy.REPLACE
                cases.append(Case(provider, fault, kind, 3 if n % 3 == 0 else 1, strategy))
    return cases


@pytest.mark.parametrize("case", _cases(), ids=str)
def test_fleet_recovers_from_a_failing_provider_call(case: Case, tmp_path: Path) -> None:
    outcome: Outcome = "failed"
    with cloud(case.provider, tmp_path) as c:
        try:
            w = World.make(c, fleet_policy(case.strategy), tmp_path / "state.json")
            w.seed_aged()
            queued = case.fault.skip + case.times
            c.standin.failures.add(
                case.kind, case.fault.make(), times=case.times, skip=case.fault.skip
            )
            for _ in range(FAULT_RUNS):
                w.run()
            assert c.standin.failures.pending(case.kind) < queued, "the fault never fired"
            refused = any(r.instances[0].error is not None for r in w.reports)
            c.standin.failures.clear()
            w.recover()
            outcome = "refused cleanly, then recovered" if refused else "recovered"
        finally:
            record("faults", case.fault_class, outcome, provider=case.provider)


# --- random sequences of faults --------------------------------------------------------------

# One run's faults: (fault, kind, times) for each of a few queued faults.
run_faults = st.lists(
    st.tuples(st.sampled_from(FAULTS), st.sampled_from(ALL), st.integers(1, 3)), max_size=3
)


@settings(
    max_examples=int(os.environ.get("CLOUDPROXY_FAULT_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    provider=st.sampled_from(["digitalocean", "vultr"]),
    strategy=st.sampled_from(Strategy),
    runs=st.lists(run_faults, min_size=1, max_size=4),
)
def test_fleet_recovers_from_random_fault_sequences(
    provider: str, strategy: Strategy, runs: list[list[tuple[Fault, Kind, int]]]
) -> None:
    """Several runs in a row, each meeting a few random faults, then runs without."""
    outcome: Outcome = "failed"
    with tempfile.TemporaryDirectory() as tmp, cloud(provider, Path(tmp)) as c:
        try:
            w = World.make(c, fleet_policy(strategy), Path(tmp) / "state.json")
            w.seed_aged()
            for faults in runs:
                for fault, kind, times in faults:
                    c.standin.failures.add(kind, fault.make(), times=times, skip=fault.skip)
                w.run()
            refused = any(r.instances[0].error is not None for r in w.reports)
            c.standin.failures.clear()
            w.recover()
            outcome = "refused cleanly, then recovered" if refused else "recovered"
        finally:
            record("faults", "random sequence of provider faults", outcome, provider=provider)
