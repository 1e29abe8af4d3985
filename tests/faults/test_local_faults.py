"""The local provider under faults: real proxy.py processes die, the inventory disk fills up.

Real processes, the real prober through them (its own origin on 127.0.0.1), the real state
file. "No VM the tool cannot see" means here: every live proxy process of the instance's
directory has an inventory entry, so that the adapter lists it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cloudproxy_cli.adapters.health import HttpProber
from cloudproxy_cli.adapters.local import LocalProvider
from cloudproxy_cli.adapters.state_file import StateFile
from cloudproxy_cli.core.model import Proxy
from cloudproxy_cli.core.policy import Strategy
from tests.faults.reliability import Outcome, record
from tests.faults.world import AGE_LIMIT, World, fleet_policy
from tests.support.fakes import FakeClock
from tests.support.local_proxies import proxy_processes, stop_local_proxies

USER, PASSWORD = "localuser", "local-Secret-7"
# A proxy.py process normally listens within a second. One that is still silent after this
# boots no more: the run goes on without it, as it would for a VM that never boots.
BOOT_DEADLINE_S = 10.0
LOCAL_RECOVERY_RUNS = 16  # a proxy that never boots is replaced after PENDING_TIMEOUT (10 runs)


def _running_ids(directory: Path) -> dict[int, str]:
    """Live proxy processes of ``directory`` (a proxy's workers too) and the id each serves."""
    found = {}
    for pid in proxy_processes(str(directory.absolute())):
        with suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--id" in argv:
                found[pid] = argv[argv.index(b"--id") + 1].decode()
    return found


def _answers(port: int) -> bool:
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@dataclass
class LocalHost:
    """This machine: proxies in ``directory``, made with the fleet's (fake) clock."""

    directory: Path
    clock: FakeClock
    name: str = "local"
    instance: str = "faults"
    provider: Any = field(init=False)

    def __post_init__(self) -> None:
        self.provider = LocalProvider(
            instance=self.instance,
            directory=self.directory,
            username=USER,
            password=PASSWORD,
            clock=self.clock.now,
        )

    def entries(self) -> dict[str, dict[str, Any]]:
        found = {}
        for path in self.directory.glob("local-*.json"):
            with suppress(FileNotFoundError):
                found[path.stem] = json.loads(path.read_text())
        return found

    def boot(self) -> None:
        """Wait (bounded) until every live proxy of the inventory accepts connections.

        Liveness is looked at again on every poll: a process SIGKILLed just before may still be
        listed at first, and waiting for its port would only run out the deadline."""
        deadline = time.monotonic() + BOOT_DEADLINE_S
        while time.monotonic() < deadline:
            live = _running_ids(self.directory)
            entries = self.entries().values()
            if all(_answers(e["port"]) for e in entries if e["pid"] in live):
                return
            time.sleep(0.02)  # polling a condition, with a deadline

    def ours(self) -> set[str]:
        entries = self.entries()
        orphans = {pid: i for pid, i in _running_ids(self.directory).items() if i not in entries}
        assert not orphans, f"proxy processes without an inventory entry: {orphans}"
        return set(entries)


class FillingProvider:
    """The local adapter; before its Nth create the inventory's file system fills up."""

    def __init__(self, inner: LocalProvider, where: Path, at_create: int) -> None:
        self.inner, self.where, self.at_create, self.creates = inner, where, at_create, 0

    def list_proxies(self) -> list[Proxy]:
        return self.inner.list_proxies()

    def create_proxy(self) -> Proxy:
        self.creates += 1
        if self.creates == self.at_create:
            with suppress(OSError), (self.where / "filler").open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        return self.inner.create_proxy()

    def delete_proxy(self, proxy_id: str) -> None:
        self.inner.delete_proxy(proxy_id)

    def ensure_firewall(self, known_id: str | None) -> str | None:
        return self.inner.ensure_firewall(known_id)

    def mend(self) -> None:
        (self.where / "filler").unlink(missing_ok=True)


@contextmanager
def local_world(tmp_path: Path, directory: Path, strategy: Strategy) -> Iterator[World]:
    clock = FakeClock(datetime.now(UTC))
    host = LocalHost(directory, clock)
    prober = HttpProber(username=USER, password=PASSWORD, timeout_s=2.0)
    w = World(host, fleet_policy(strategy), StateFile(tmp_path / "state.json"), clock, prober)
    try:
        yield w
    finally:
        prober.close()
        stop_local_proxies(directory)


def seed(w: World) -> None:
    """Three proxies, booted, then past the age limit."""
    for _ in range(3):
        w.cloud.provider.create_proxy()
    w.cloud.boot()
    w.clock.advance(2 * AGE_LIMIT.total_seconds())


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_proxy_process_that_dies_is_replaced(strategy: Strategy, tmp_path: Path) -> None:
    outcome: Outcome = "failed"
    try:
        with local_world(tmp_path, tmp_path / "local", strategy) as w:
            seed(w)
            host = w.cloud
            assert isinstance(host, LocalHost)
            victim = sorted(host.entries().values(), key=lambda e: e["port"])[0]
            os.kill(victim["pid"], signal.SIGKILL)
            w.recover(LOCAL_RECOVERY_RUNS)
            assert victim["id"] not in host.ours()
            outcome = "recovered"
    finally:
        record("faults", "local: a proxy process is SIGKILLed", outcome, provider="local")


def test_a_replacement_killed_while_booting_is_replaced(tmp_path: Path) -> None:
    outcome: Outcome = "failed"
    try:
        with local_world(tmp_path, tmp_path / "local", Strategy.REPLACE) as w:
            seed(w)
            host = w.cloud
            assert isinstance(host, LocalHost)
            before = set(host.entries())
            w.run()
            young = [e for i, e in host.entries().items() if i not in before]
            assert young, "the run created no replacement"
            os.kill(young[0]["pid"], signal.SIGKILL)
            w.recover(LOCAL_RECOVERY_RUNS)
            assert young[0]["id"] not in host.ours()
            outcome = "recovered"
    finally:
        record("faults", "local: a booting replacement is SIGKILLed", outcome, provider="local")


@contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    where.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True, check=False).returncode:
        pytest.skip("needs root to mount a small tmpfs for the local inventory")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=True)


@pytest.mark.parametrize("at_create", [1, 2])
def test_a_full_inventory_disk_leaves_no_orphan_process(at_create: int, tmp_path: Path) -> None:
    outcome: Outcome = "failed"
    try:
        with small_disk(tmp_path / "disk") as disk:
            directory = disk / "local"
            with local_world(tmp_path, directory, Strategy.REPLACE) as w:
                seed(w)
                host = w.cloud
                assert isinstance(host, LocalHost)
                filling = FillingProvider(host.provider, disk, at_create)
                host.provider = filling
                w.run()
                w.run()
                assert filling.creates >= at_create, "no create met the full disk"
                filling.mend()
                w.recover(LOCAL_RECOVERY_RUNS)
                outcome = "recovered"
    finally:
        record("faults", "local: the inventory disk is full at a create", outcome, provider="local")
