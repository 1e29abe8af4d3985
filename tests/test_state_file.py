"""Tests for the state file adapter: atomic saves, corruption recovery, and the lock."""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import platformdirs
import pytest

import cloudproxy_cli
from cloudproxy_cli.adapters.state_file import (
    STATE_FILE_ENV,
    LoadResult,
    StateFile,
    resolve_state_path,
)
from cloudproxy_cli.core.errors import LockHeldError, StateError
from cloudproxy_cli.core.state import (
    Deferral,
    InstanceSnapshot,
    InstanceState,
    OperationStrategy,
    ProxyRecord,
    RecycleOperation,
    RollingOverrides,
    State,
    encode_state,
)

WORKER = Path(__file__).parent / "support" / "state_file_worker.py"
SRC_DIR = Path(cloudproxy_cli.__file__).resolve().parents[1]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
# Generous bound for a worker to start (interpreter + imports) or report progress.
WORKER_DEADLINE = 30.0


def rich_state() -> State:
    records = {
        "p1": ProxyRecord("p1", first_seen_at=T0, established=True, last_healthy_at=T0),
        "p2": ProxyRecord("p2", first_seen_at=T0 + timedelta(minutes=5), consecutive_failures=2),
    }
    operation = RecycleOperation(
        op_id="op-1",
        opened_at=T0 + timedelta(hours=1),
        strategy=OperationStrategy.REPLACE,
        old_id="p0",
        old_address="203.0.113.7",
        old_created_at=T0 - timedelta(days=2),
        old_deleted=True,
        replacement_id="p2",
    )
    adopted = RecycleOperation(op_id="op-2", opened_at=T0, strategy=OperationStrategy.ADOPTED)
    snapshot = InstanceSnapshot(
        last_update=T0 + timedelta(hours=1, minutes=1),
        healthy_ips=("203.0.113.1",),
        pending_ips=("203.0.113.2",),
        pending=1,
        recycling_ips=("203.0.113.7",),
        aged_ips=("203.0.113.1",),
        deferred=(Deferral("p1", "203.0.113.1", "would drop below min_available"),),
        in_flight=1,
        effective_min_available=1,
        min_scaling=2,
        strategy="replace",
        last_error="timeout listing droplets",
        warnings=("something odd",),
    )
    return State(
        instances={
            "digitalocean/default": InstanceState(
                records=records, operations=(operation, adopted), snapshot=snapshot
            ),
            "aws/eu": InstanceState(),
        },
        overrides=RollingOverrides(enabled=True, min_available=3, batch_size=1, strategy="surge"),
    )


def entries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def temp_files(directory: Path) -> list[str]:
    return [name for name in entries(directory) if name.endswith(".tmp")]


# --- worker subprocesses ------------------------------------------------------------------------


class Worker:
    """A tests/support/state_file_worker.py subprocess whose stdout lines we can wait for."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        # A thread reads stdout so that waiting for a line can have a deadline.
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.strip()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next_line(self, deadline: float = WORKER_DEADLINE) -> tuple[float, str]:
        try:
            return self.lines.get(timeout=deadline)
        except queue.Empty:
            self._kill()
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(
                f"worker {self.proc.args!r} printed nothing in {deadline}s; stderr: {stderr}"
            )

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WORKER_DEADLINE)

    def stop(self) -> None:
        self._kill()
        # The pump sees EOF once the process is gone; closing stdout under it would race.
        self._pump_thread.join(timeout=WORKER_DEADLINE)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.json"


# --- resolve_state_path -------------------------------------------------------------------------


def test_resolve_prefers_cli_then_env_then_platform_default(tmp_path: Path) -> None:
    cli = tmp_path / "cli.json"
    env_path = tmp_path / "env.json"
    environ = {STATE_FILE_ENV: str(env_path)}
    assert resolve_state_path(cli, environ) == cli
    assert resolve_state_path(None, environ) == env_path
    default = Path(platformdirs.user_state_dir("cloudproxy")) / "state.json"
    assert resolve_state_path(None, {}) == default
    assert resolve_state_path(None, {STATE_FILE_ENV: "  "}) == default


# --- save / load --------------------------------------------------------------------------------


def test_round_trip(path: Path) -> None:
    state = rich_state()
    sf = StateFile(path)
    sf.save(state)
    result = sf.load()
    assert result == LoadResult(state=state, warning=None, corrupt=False)
    assert json.loads(path.read_text())["schema_version"] == 1
    # A second object (a later run) reads the same thing.
    assert StateFile(path).load().state == state


def test_operation_strategies_are_stored_as_their_plain_names(path: Path) -> None:
    StateFile(path).save(rich_state())
    stored = json.loads(path.read_text())["instances"]["digitalocean/default"]["operations"]
    assert [op["strategy"] for op in stored] == ["replace", "adopted"]
    # A file written before the strategy became an enum holds the same strings: it loads.
    path.write_text(path.read_text().replace('"replace"', '"surge"'))
    loaded = StateFile(path).load().state.instance("digitalocean/default").operations
    assert [op.strategy for op in loaded] == [OperationStrategy.SURGE, OperationStrategy.ADOPTED]
    assert all(isinstance(op.strategy, OperationStrategy) for op in loaded)


def test_save_replaces_previous_state(path: Path) -> None:
    sf = StateFile(path)
    sf.save(rich_state())
    sf.save(State())
    assert sf.load().state == State()


def test_file_mode_0600_dir_0700_and_no_temp_left_even_with_umask_0(path: Path) -> None:
    old_umask = os.umask(0)  # a permissive umask must not widen what we create
    try:
        sf = StateFile(path)
        sf.save(rich_state())
        sf.save(rich_state())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert entries(path.parent) == {"state.json"}


def test_temp_file_is_created_0600_from_the_start(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[int] = []
    real_fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    old_umask = os.umask(0)
    try:
        StateFile(path).save(rich_state())
    finally:
        os.umask(old_umask)
    assert modes == [0o600]


def test_lock_file_is_separate_from_the_state_file(path: Path) -> None:
    sf = StateFile(path)
    assert sf.lock_path == path.with_name("state.json.lock")
    with sf.lock():
        lock_inode = sf.lock_path.stat().st_ino
        assert sf.lock_path.read_text().strip() == str(os.getpid())
        sf.save(rich_state())
        first_inode = path.stat().st_ino
        sf.save(State())
        # save() replaces the state file's inode; the lock file (and so the lock) is untouched.
        assert path.stat().st_ino != first_inode
        assert sf.lock_path.stat().st_ino == lock_inode
    assert json.loads(path.read_text()) == encode_state(State())
    assert entries(path.parent) == {"state.json", "state.json.lock"}
    assert stat.S_IMODE(sf.lock_path.stat().st_mode) == 0o600


def test_failed_save_leaves_old_file_and_no_temp(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sf = StateFile(path)
    sf.save(rich_state())
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StateError, match="cannot write the state file"):
        sf.save(State())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert temp_files(path.parent) == []


def test_missing_file_is_a_fresh_state(path: Path) -> None:
    assert StateFile(path).load() == LoadResult(State(), None, False)
    assert not path.parent.exists()  # a plain read creates nothing


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        json.dumps({**encode_state(State()), "schema_version": 0}).encode(),
        json.dumps({"schema_version": 1, "instances": {"x": {"records": {"p": {}}}}}).encode(),
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
    ],
    ids=["bad-json", "empty", "wrong-schema", "malformed", "not-utf8", "deep-nesting"],
)
def test_corrupt_file_is_reported_by_load_and_moved_aside_by_recover(
    path: Path, content: bytes
) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    sf = StateFile(path)
    result = sf.load()

    # load() only reads: the corrupt file stays byte for byte, and nothing else appears.
    assert result.state == State()
    assert result.corrupt
    assert result.warning is not None and "\n" not in result.warning
    assert "left in place" in result.warning
    assert path.read_bytes() == content
    assert entries(path.parent) == {"state.json"}

    warning = sf.recover()
    aside = [p for p in path.parent.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert not path.exists()
    assert warning is not None
    assert "\n" not in warning
    assert str(aside[0]) in warning
    # The timestamp is UTC and sortable: state.json.corrupt-YYYYmmddTHHMMSSZ.
    stamp = aside[0].name.removeprefix("state.json.corrupt-")
    parsed = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - parsed) < timedelta(minutes=5)
    assert sf.load() == LoadResult(State())


def test_recover_leaves_a_sound_or_missing_file_alone(path: Path) -> None:
    sf = StateFile(path)
    assert sf.recover() is None
    sf.save(rich_state())
    before = path.read_bytes()
    assert sf.recover() is None
    assert path.read_bytes() == before
    assert entries(path.parent) == {"state.json", "state.json.lock"}


def test_second_corruption_does_not_overwrite_the_first_copy(path: Path) -> None:
    sf = StateFile(path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"first")
    assert sf.recover() is not None
    path.write_bytes(b"second")
    assert sf.recover() is not None
    aside = sorted(p.read_bytes() for p in path.parent.glob("state.json.corrupt-*"))
    assert aside == [b"first", b"second"]


def test_unreadable_file_raises_state_error(path: Path) -> None:
    path.mkdir(parents=True)  # a directory where the file should be: reading fails with EISDIR
    with pytest.raises(StateError, match="cannot read the state file"):
        StateFile(path).load()


def test_a_fifo_in_place_of_the_file_is_refused_without_blocking(path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer appears: every cron run would hang.
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with pytest.raises(StateError, match="not a regular file"):
        StateFile(path).load()


def test_saving_through_a_symlink_replaces_its_target_and_keeps_the_link(path: Path) -> None:
    real = path.parent / "elsewhere" / "real-state.json"
    real.parent.mkdir(parents=True)
    StateFile(real).save(State())
    path.symlink_to(real)
    state = State(overrides=RollingOverrides(batch_size=4))
    StateFile(path).save(state)
    assert path.is_symlink() and path.resolve() == real
    assert StateFile(real).load().state == state


# --- update -------------------------------------------------------------------------------------


def test_update_applies_and_saves(path: Path) -> None:
    sf = StateFile(path)
    sf.save(rich_state())
    new = sf.update(lambda s: s._replace(overrides=RollingOverrides(batch_size=7)))
    assert new.overrides.batch_size == 7
    assert sf.load().state == new
    assert temp_files(path.parent) == []


def test_update_with_raising_fn_leaves_bytes_unchanged(path: Path) -> None:
    sf = StateFile(path)
    sf.save(rich_state())
    before = path.read_bytes()
    inode = path.stat().st_ino

    def boom(state: State) -> State:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sf.update(boom)
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode
    assert temp_files(path.parent) == []
    with StateFile(path).lock():  # and the lock was released
        pass


def test_update_with_raising_fn_leaves_a_corrupt_file_in_place(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{corrupt")

    def boom(state: State) -> State:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        StateFile(path).update(boom)
    assert path.read_bytes() == b"{corrupt"
    assert list(path.parent.glob("state.json.corrupt-*")) == []


def test_update_recovers_a_corrupt_file_and_reports_it(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{corrupt")
    warnings: list[str] = []
    seen: list[State] = []

    def fn(state: State) -> State:
        seen.append(state)
        return state._replace(overrides=RollingOverrides(enabled=False))

    new = StateFile(path).update(fn, on_warning=warnings.append)
    assert seen == [State()]
    assert StateFile(path).load().state == new
    (aside,) = path.parent.glob("state.json.corrupt-*")
    assert aside.read_bytes() == b"{corrupt"
    assert len(warnings) == 1
    assert str(aside) in warnings[0]


# --- locking ------------------------------------------------------------------------------------


def test_lock_is_reentrant_within_one_object_but_excludes_another(path: Path) -> None:
    sf = StateFile(path)
    with sf.lock():
        with sf.lock():
            sf.save(rich_state())
        # update() inside lock() must not trip over our own lock.
        sf.update(lambda s: s)
        with pytest.raises(LockHeldError, match=f"pid {os.getpid()}"), StateFile(path).lock():
            pass
    with StateFile(path).lock():  # released once the outermost block exits
        pass


def test_lock_held_by_another_process_fails_fast_with_its_pid(
    path: Path, workers: list[Worker]
) -> None:
    holder = Worker("hold", str(path))
    workers.append(holder)
    _, line = holder.next_line()
    assert line == "locked"

    # The holder never lets go on its own, so a lock() that waited would never return: the
    # deadline only turns such a hang into a failure, it measures no speed.
    attempt: queue.Queue[BaseException | None] = queue.Queue()

    def try_lock() -> None:
        try:
            with StateFile(path).lock():
                attempt.put(None)
        except BaseException as exc:  # handed to the test thread
            attempt.put(exc)

    threading.Thread(target=try_lock, daemon=True).start()
    error = attempt.get(timeout=WORKER_DEADLINE)
    assert isinstance(error, LockHeldError)
    assert str(error) == (
        f"another cloudproxy run holds the lock on {path} (pid {holder.pid}); try again later"
    )
    with pytest.raises(LockHeldError):
        StateFile(path).update(lambda s: s)
    assert not path.exists()

    # Once the holder exits, the lock is free again.
    assert holder.proc.stdin is not None
    holder.proc.stdin.close()
    assert holder.proc.wait(timeout=WORKER_DEADLINE) == 0
    with StateFile(path).lock():
        pass


def test_recover_needs_the_lock_and_leaves_the_file_while_another_run_holds_it(
    path: Path, workers: list[Worker]
) -> None:
    holder = Worker("hold", str(path))
    workers.append(holder)
    assert holder.next_line()[1] == "locked"
    path.write_bytes(b"{corrupt")

    result = StateFile(path).load()
    assert result.state == State()
    assert result.corrupt
    with pytest.raises(LockHeldError):
        StateFile(path).recover()
    assert path.read_bytes() == b"{corrupt"
    assert list(path.parent.glob("state.json.corrupt-*")) == []


def test_sigkill_during_writes_leaves_a_readable_file_and_a_free_lock(
    path: Path, workers: list[Worker]
) -> None:
    records = 5000
    # At least this many kills; more (up to the cap) until one has landed mid-write: how much
    # of a save cycle has a temp file open depends on the machine (tmpfs fsyncs in no time).
    rounds, max_rounds = 8, 40
    last_generation = 0
    killed_mid_write = 0
    round_no = 0
    while round_no < rounds or (killed_mid_write == 0 and round_no < max_rounds):
        worker = Worker("churn", str(path), str(records))
        workers.append(worker)
        # Wait (reading its reports, not sleeping) until it has saved a few times, and time a
        # save cycle from the gaps between reports.
        stamps = [worker.next_line()[0] for _ in range(3 + round_no % 3)]
        period = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        # Not synchronisation: a delay that walks the kill across the save cycle from round to
        # round (golden-ratio steps cover it evenly however many rounds run), so kills land in
        # encoding, in the temp-file write, and around the rename.
        time.sleep(period * ((round_no * 0.6180339887) % 1.0))
        round_no += 1
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.proc.wait(timeout=WORKER_DEADLINE) == -signal.SIGKILL
        if temp_files(path.parent):
            killed_mid_write += 1

        result = StateFile(path).load()
        assert result.warning is None, result.warning
        assert not result.corrupt
        generation = result.state.overrides.batch_size
        assert generation is not None
        assert generation >= len(stamps)  # at least what it reported having saved
        assert len(result.state.instance("do/default").records) == records
        last_generation = generation

        sf = StateFile(path)
        with sf.lock():  # the dead worker's lock died with it
            # ... and taking the lock cleans up a temp file the kill may have orphaned.
            assert temp_files(path.parent) == []
        assert entries(path.parent) == {"state.json", "state.json.lock"}
    assert last_generation > 0
    # The test only means something if some kills did land while a save was under way.
    assert killed_mid_write > 0, f"none of {round_no} kills landed while a save was under way"
