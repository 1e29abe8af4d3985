"""The state file cannot be written at the Nth save of a run (disk full, read-only); nothing is
lost or left unaccounted, and the fleet recovers once the disk is writable again.

As root (CI containers, this sandbox) the state lives on its own 64 KiB tmpfs: "disk full" fills
it at the Nth save, so the real ``StateFile`` meets a real ENOSPC mid-run; "read-only" remounts
it read-only (EROFS) before the Nth run (not mid-run: a file system with a file open for
writing, the lock, cannot be remounted read-only), so that run cannot even take its lock.
Without root, read-only is a directory without write permission (EACCES), and disk full is a
``StateStore`` wrapper whose save raises the ``StateError`` the real one raises on ENOSPC; the
reliability log says which was used.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from cloudproxy_cli.adapters.state_file import StateFile
from cloudproxy_cli.core.errors import StateError
from cloudproxy_cli.core.policy import Strategy
from cloudproxy_cli.core.state import State
from tests.faults.reliability import Outcome, record
from tests.faults.world import World, cloud, fleet_policy


@cache
def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/cloudproxy-tmpfs-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        mounted = _mount(probe) == 0
        if mounted:
            _umount(probe)
        return mounted
    finally:
        probe.rmdir()


def _mount(where: Path) -> int:
    cmd = ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)]
    return subprocess.run(cmd, capture_output=True, check=False).returncode


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True, check=True)


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], capture_output=True, check=True)


@contextmanager
def state_dir(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "state"
    where.mkdir()
    if not can_mount():
        yield where
        return
    assert _mount(where) == 0
    try:
        yield where
    finally:
        _remount(where, "rw")
        _umount(where)


class Disk:
    """Makes the state directory unwritable and writable again, for real where it can."""

    def __init__(self, where: Path, fault: str) -> None:
        self.where, self.fault = where, fault
        self.real = can_mount() or fault == "read-only"

    @property
    def how(self) -> str:
        if self.fault == "read-only":
            return "tmpfs remounted read-only (EROFS)" if can_mount() else "directory 0500 (EACCES)"
        return "64 KiB tmpfs filled (ENOSPC)" if can_mount() else "simulated ENOSPC (wrapper)"

    @property
    def error(self) -> str:
        """What the state file's error says the cause was."""
        if self.fault == "disk full":
            return os.strerror(errno.ENOSPC)
        return os.strerror(errno.EROFS if can_mount() else errno.EACCES)

    def break_it(self) -> None:
        if self.fault == "read-only":
            if can_mount():
                _remount(self.where, "ro")
            else:
                self.where.chmod(0o500)
        elif can_mount():
            with suppress(OSError), (self.where / "filler").open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()

    def mend(self) -> None:
        if self.fault == "read-only":
            if can_mount():
                _remount(self.where, "rw")
            else:
                self.where.chmod(0o700)
        else:
            (self.where / "filler").unlink(missing_ok=True)


class TriggeredStore(StateFile):
    """The real state file; before its Nth save the disk breaks (and stays broken)."""

    def __init__(self, path: Path, disk: Disk, at_save: int | None) -> None:
        super().__init__(path)
        self.disk, self.at_save, self.saves = disk, at_save, 0
        self.broken = False

    def save(self, state: State) -> None:
        self.saves += 1
        if self.saves == self.at_save:
            self.disk.break_it()
            self.broken = True
        if self.broken and not self.disk.real:
            why = os.strerror(errno.ENOSPC)
            raise StateError(f"cannot write the state file {self.path}: {why}")
        super().save(state)


@dataclass(frozen=True)
class Case:
    fault: str
    n: int  # disk full: at the Nth save; read-only: before the Nth run
    strategy: Strategy
    provider: str

    def __str__(self) -> str:
        return f"{self.provider}-{self.fault}-{self.n}-{self.strategy}"


CASES = [
    *(
        Case("disk full", n, strategy, provider)
        for n in (1, 2, 3, 4, 6)
        for strategy in Strategy
        for provider in ("digitalocean", "vultr")
    ),
    *(
        Case("read-only", n, strategy, provider)
        for n in (1, 2, 3)
        for strategy in Strategy
        for provider in ("digitalocean", "vultr")
    ),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_failed_state_write_loses_nothing(case: Case, tmp_path: Path) -> None:
    outcome: Outcome = "failed"
    with state_dir(tmp_path) as where, cloud(case.provider, tmp_path) as c:
        disk = Disk(where, case.fault)
        mend: Callable[[], None] = disk.mend
        try:
            full = case.fault == "disk full"
            store = TriggeredStore(where / "state.json", disk, case.n if full else None)
            w = World(c, fleet_policy(case.strategy), store)
            w.seed_aged()
            results = []
            for run in range(1, 4):
                if not full and run == case.n:
                    disk.break_it()
                results.append(w.run())
            failed = [r for r in results if isinstance(r, StateError)]
            assert failed, "the state write never failed"
            assert all(disk.error in str(e) for e in failed), failed
            mend()
            # Whatever was written before the failure is intact and readable.
            assert store.load().warning is None
            store.broken = False
            w.recover()
            outcome = "refused cleanly, then recovered"
        finally:
            mend()
            record(
                "faults", f"state write: {case.fault}, {disk.how}", outcome, provider=case.provider
            )
