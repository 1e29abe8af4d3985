"""A real `cloudproxy reconcile` process is SIGKILLed at every action boundary; later runs recover.

The trigger is on the cloud's side, so that no test hook ships in the product: the DigitalOcean
stand-in kills the process when it receives the run's Nth create or delete, either before doing
it (the process died after N-1 actions, each one saved) or after doing it (the VM was made or
removed, and the process died before it heard so). Then runs without faults, on the same state
file and the same cloud, must account for every VM and converge.

The killed process probes for real: each seeded droplet's loopback address has a stub proxy that
answers 200, so the run sees a healthy, aged fleet and recycles. The recovery runs probe with
the address double of ``world.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cloudproxy_cli.adapters.state_file import StateFile
from cloudproxy_cli.core.policy import Strategy
from tests.faults.reliability import Outcome, record
from tests.faults.world import Cloud, World, fleet_policy
from tests.standins.digitalocean import TOKENS, Answer, DigitalOceanStandIn, classify
from tests.support.cli import Cli
from tests.support.ok_server import OkHandler

CREDS = {"PROXY_USERNAME": "killuser", "PROXY_PASSWORD": "kill-Secret-42"}


class KillingStandIn(DigitalOceanStandIn):
    """SIGKILLs ``victim`` at the ``kill_at``-th create or delete it receives: ``before`` doing
    it (answered 500, to a process that is gone) or after."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: int | None = None
        self.kill_at = 0
        self.before = True
        self.actions = 0
        self.killed = threading.Event()

    def serve(self, method: str, target: str, authorization: str | None, raw_body: bytes) -> Answer:
        kind = classify(method, urlsplit(target).path.rstrip("/"))
        if kind not in ("create", "delete") or self.victim is None:
            return super().serve(method, target, authorization, raw_body)
        self.actions += 1
        if self.actions == self.kill_at and self.before:
            self._kill()
            return Answer(500, {"id": "server_error", "message": "killed"})
        answer = super().serve(method, target, authorization, raw_body)
        if self.actions == self.kill_at:
            self._kill()
        return answer

    def _kill(self) -> None:
        assert self.victim is not None
        os.kill(self.victim, signal.SIGKILL)
        self.killed.set()


@contextmanager
def stub_proxy(ip: str, port: int) -> Iterator[None]:
    assert ip.startswith("127."), ip
    server = ThreadingHTTPServer((ip, port), OkHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Case:
    strategy: Strategy
    kill_at: int
    before: bool

    def __str__(self) -> str:
        return f"{self.strategy}-{'before' if self.before else 'after'}-action{self.kill_at}"


# Three aged, healthy droplets, batch 2: replace deletes 2 then creates 2 (4 actions); surge
# creates 2 (the old ones go in a later run).
CASES = [
    Case(strategy, n, before)
    for strategy, actions in ((Strategy.REPLACE, 4), (Strategy.SURGE, 2))
    for n in range(1, actions + 1)
    for before in (True, False)
]


def _env(standin: DigitalOceanStandIn, case: Case, port: int) -> dict[str, str]:
    return {
        **CREDS,
        "DIGITALOCEAN_FAULTS_ENABLED": "True",
        "DIGITALOCEAN_FAULTS_ACCESS_TOKEN": TOKENS[0],
        "DIGITALOCEAN_FAULTS_API_ENDPOINT": standin.endpoint,
        "DIGITALOCEAN_FAULTS_MIN_SCALING": "3",
        "DIGITALOCEAN_FAULTS_MAX_SCALING": "5",
        "ROLLING_DEPLOYMENT": "True",
        "ROLLING_MIN_AVAILABLE": "1",
        "ROLLING_BATCH_SIZE": "2",
        "ROLLING_STRATEGY": str(case.strategy),
        "AGE_LIMIT": "3600",
        "PROXY_PORT": str(port),
        "HEALTH_CHECK_URL": "http://127.0.0.1:9/health",  # the stubs answer without fetching it
        "HEALTH_CHECK_TIMEOUT": "2",
    }


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_run_killed_at_any_action_loses_nothing(case: Case, tmp_path: Path) -> None:
    outcome: Outcome = "failed"
    standin = KillingStandIn()
    try:
        c = Cloud("digitalocean", standin)
        sandbox = Cli.make(tmp_path)
        w = World(c, fleet_policy(case.strategy), StateFile(sandbox.state_file))
        w.seed_aged()
        port = free_port()
        with ExitStack() as stubs:
            for proxy in c.provider.list_proxies():
                assert proxy.ip is not None
                stubs.enter_context(stub_proxy(proxy.ip, port))
            standin.kill_at, standin.before = case.kill_at, case.before
            proc = sandbox.popen("reconcile", **_env(standin, case, port))
            standin.victim = proc.pid
            _, err = proc.communicate(timeout=60)
        assert standin.killed.is_set(), f"the run ended before its action {case.kill_at}: {err}"
        assert proc.returncode == -signal.SIGKILL
        standin.victim = None
        assert w.store.load().warning is None, "the state file did not survive the kill"
        w.recover()
        outcome = "recovered"
    finally:
        standin.close()
        when = "before" if case.before else "after"
        record("faults", f"SIGKILL {when} an action", outcome, provider="digitalocean")
