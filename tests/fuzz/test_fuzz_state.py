"""Corrupt, odd and foreign state files: readers never change them, reconcile recovers keeping
the original bytes or refuses in one line, and a newer version's file is never replaced."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloudproxy_cli.core.state import (
    SCHEMA_VERSION,
    Deferral,
    InstanceSnapshot,
    InstanceState,
    NewerStateError,
    OperationStrategy,
    ProxyRecord,
    RecycleOperation,
    RollingOverrides,
    State,
    StateFormatError,
    decode_state,
    encode_state,
)
from tests.fuzz.support import (
    FUZZ,
    Reliability,
    Result,
    Sandbox,
    assert_no_proxies,
    check_output,
    dumps,
    entries,
    flip,
    json_junk,
    run_cli,
    sandbox,
)

pytestmark = pytest.mark.fuzz

READERS: tuple[tuple[str, ...], ...] = (
    ("rolling", "status"),
    ("rolling", "status", "--json"),
    ("proxies",),
    ("reconcile", "--dry-run"),
)
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def real_state() -> State:
    """A state with every kind of field filled in, as a real run would leave it."""
    snap = InstanceSnapshot(
        last_update=T0,
        healthy_ips=("127.0.0.1:4001",),
        pending_ips=("127.0.0.1:4002",),
        pending=1,
        aged_ips=("127.0.0.1:4001",),
        deferred=(Deferral("local-0000000a", "127.0.0.1:4001", "batch full"),),
        in_flight=1,
        effective_min_available=1,
        min_scaling=2,
        last_error="timed out",
        last_error_at=T0,
        warnings=("a warning",),
    )
    records = {
        "local-0000000a": ProxyRecord("local-0000000a", T0, True, 0, T0),
        "local-0000000b": ProxyRecord("local-0000000b", T0 + timedelta(minutes=1), False, 2),
    }
    # Open operations live under an instance that is not enabled, so no run acts on them.
    ops = (
        RecycleOperation(
            "op-1", T0, OperationStrategy.REPLACE, "i-1", "198.51.100.1", T0, True, "i-2"
        ),
        RecycleOperation("op-2", T0, OperationStrategy.ADOPTED, replacement_id="i-3"),
    )
    return State(
        instances={
            "local/default": InstanceState(records=records, snapshot=snap),
            "aws/eu": InstanceState(operations=ops, firewall_id="sg-1"),
        },
        overrides=RollingOverrides(enabled=True, min_available=1, batch_size=2, strategy="surge"),
    )


REAL_DOC = encode_state(real_state())
REAL_BYTES = (json.dumps(REAL_DOC, indent=2) + "\n").encode()


def classify(data: bytes) -> str:
    """What the state file holds: ``valid``, ``newer`` (a higher schema) or ``corrupt``."""
    try:
        decode_state(json.loads(data))
    except NewerStateError:
        return "newer"
    except (StateFormatError, ValueError, RecursionError):
        return "corrupt"
    return "valid"


@st.composite
def paths_in(draw: st.DrawFn, doc: Any) -> list[Any]:
    """A path from the root of ``doc`` to one of its values."""
    path: list[Any] = []
    node = doc
    while isinstance(node, dict | list) and node and draw(st.booleans() | st.just(True)):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    return path


def replaced(doc: Any, path: list[Any], value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = replaced(doc[path[0]], path[1:], value)
    return copy


corruptions = st.one_of(
    st.tuples(st.just("state/truncated"), st.integers(0, len(REAL_BYTES) - 1)).map(
        lambda t: (t[0], REAL_BYTES[: t[1]])
    ),
    st.tuples(
        st.just("state/flipped-bytes"),
        st.lists(st.tuples(st.integers(0, len(REAL_BYTES) - 1), st.integers(1, 255)), max_size=4),
    ).map(lambda t: (t[0], flip(REAL_BYTES, t[1]))),
    st.tuples(st.just("state/wrong-type"), paths_in(REAL_DOC), json_junk).map(
        lambda t: (t[0], dumps(replaced(REAL_DOC, t[1], t[2])))
    ),
    st.tuples(
        st.just("state/schema-version"),
        st.one_of(
            st.integers(-(10**30), 10**30),
            st.sampled_from([str(SCHEMA_VERSION), 1.0, True, None, [1], "2"]),
        ),
    ).map(lambda t: (t[0], dumps({**REAL_DOC, "schema_version": t[1]}))),
    st.tuples(st.just("state/junk-bytes"), st.binary(max_size=64)),
)


# --- the properties ---------------------------------------------------------------------------


def backups(box: Sandbox) -> list[Path]:
    return sorted(box.state_file.parent.glob("state.json.corrupt-*"))


def backed_up_bytes(box: Sandbox) -> list[bytes]:
    return [p.read_bytes() for p in backups(box)]  # read through a symlink to its target


def check_reader(box: Sandbox, before: dict[str, tuple[bytes | str, int]], result: Result) -> str:
    """A read-only command leaves the directory as it found it (bytes and inodes)."""
    check_output(result)
    assert entries(box) == before  # StateFile.load never writes: recovery is reconcile's
    return f"exit-{result.code}"


def check_reconcile(box: Sandbox, data: bytes, kind: str, result: Result) -> str:
    """Reconcile proceeds on a valid file, recovers from a corrupt one keeping its bytes in a
    backup, and refuses (one line, file untouched) a newer version's file or an unreadable one."""
    check_output(result)
    assert_no_proxies(box)
    if kind == "newer":
        assert result.code == 1 and "newer cloudproxy" in result.error_lines[0], result
        assert box.state_file.read_bytes() == data
        return "refused"
    if result.code != 0:
        assert len(result.error_lines) == 1, result
        assert box.state_file.read_bytes() == data, "a refused run changed the state file"
        return "refused"
    if kind == "corrupt":
        assert data in backed_up_bytes(box), "the corrupt file's bytes were lost"
        assert "was corrupt" in result.stderr
        return "recovered"
    assert backups(box) == []
    return "proceeded"


def fuzz_one(data: bytes, reader: tuple[str, ...], fault: str, reliability: Reliability) -> None:
    kind = classify(data)
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp)) as box:
        box.state_file.write_bytes(data)
        before = entries(box)
        outcome = check_reader(box, before, run_cli(list(reader)))
        if kind == "newer":
            assert outcome == "exit-1", outcome
        reliability.record(f"{fault}/read", outcome)
        box.state_file.write_bytes(data)  # a reader may have moved it aside (see above)
        for stale in backups(box):
            stale.unlink()
        outcome = check_reconcile(box, data, kind, run_cli(["reconcile"]))
        reliability.record(f"{fault}/reconcile", f"{kind}-{outcome}")


def wrong_type(path: list[Any], value: Any) -> tuple[str, bytes]:
    return "state/wrong-type", dumps(replaced(REAL_DOC, path, value))


LOCAL_RECORD = ["instances", "local/default", "records", "local-0000000a"]


@settings(FUZZ, max_examples=200)
@given(corruption=corruptions, reader=st.sampled_from(READERS))
# Each crashed 'rolling status' or 'reconcile' with an internal error before the strict decoder.
@example(corruption=wrong_type(["overrides", "strategy"], "x"), reader=("rolling", "status"))
@example(
    corruption=wrong_type([*LOCAL_RECORD, "consecutive_failures"], float("inf")),
    reader=("proxies",),
)
@example(
    corruption=wrong_type(
        ["instances", "aws/eu", "operations", 0, "opened_at"], "0001-01-01T00:00:00+05:00"
    ),
    reader=("rolling", "status", "--json"),
)
@example(
    corruption=("state/schema-version", dumps({**REAL_DOC, "schema_version": 2})),
    reader=("reconcile", "--dry-run"),
)
def test_corrupt_state_files(
    corruption: tuple[str, bytes], reader: tuple[str, ...], reliability: Reliability
) -> None:
    fault, data = corruption
    fuzz_one(data, reader, fault, reliability)


# --- odd files in the state file's place --------------------------------------------------

HUGE_STATE = dumps(
    encode_state(
        State(
            instances={
                "aws/eu": InstanceState(
                    records={f"i-{n:08d}": ProxyRecord(f"i-{n:08d}", T0) for n in range(25_000)}
                )
            }
        )
    )
)
HUGE_JUNK = b'{"schema_version": 1, "instances": {"x": "' + b"\xff" * 3_000_000 + b'"}}'


def make_odd(box: Sandbox, kind: str) -> bytes | None:
    """Put an odd entry at the state path; returns the bytes a reader sees there, if any."""
    path, other = box.state_file, box.root / "other.json"
    if kind in {"symlink-to-state", "symlink-to-corrupt"}:
        other.write_bytes(REAL_BYTES if kind == "symlink-to-state" else b"{trunc")
        path.symlink_to(other)
        return other.read_bytes()
    if kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "dangling-symlink":
        path.symlink_to(box.root / "nowhere.json")
    elif kind == "directory":
        path.mkdir()
    elif kind in {"huge-state", "huge-junk"}:
        path.write_bytes(HUGE_STATE if kind == "huge-state" else HUGE_JUNK)
        return path.read_bytes()
    elif kind == "mode-000":
        # Tests run as root, which reads a mode-000 file anyway: then this is a valid file.
        # As another user the read fails and every command must say so in one line.
        path.write_bytes(REAL_BYTES)
        path.chmod(0)
        return REAL_BYTES if os.geteuid() == 0 else None
    return None


# kind -> (reader exit code, reconcile outcome)
ODD_FILES = {
    "symlink-to-state": (0, "proceeded"),
    "symlink-to-corrupt": (0, "recovered"),
    "symlink-loop": (1, "refused"),
    "dangling-symlink": (0, "proceeded"),
    "directory": (1, "refused"),
    "huge-state": (0, "proceeded"),
    "huge-junk": (0, "recovered"),
    "mode-000": (0, "proceeded") if os.geteuid() == 0 else (1, "refused"),
}


def check_odd_reconcile(box: Sandbox, seen: bytes | None, before: Any, result: Result) -> str:
    check_output(result)
    assert_no_proxies(box)
    if result.code != 0:
        assert len(result.error_lines) == 1, result
        assert entries(box) == before, "a refused run changed the state directory"
        return "refused"
    if seen is not None and classify(seen) == "corrupt":
        assert seen in backed_up_bytes(box), "the corrupt file's bytes were lost"
        return "recovered"
    other = box.root / "other.json"
    if other.exists():  # a symlinked state: the run saved into the target, the link stays
        assert box.state_file.is_symlink()
        assert box.state_file.resolve() == other.resolve()
        assert decode_state(json.loads(other.read_bytes())) is not None
    return "proceeded"


@settings(FUZZ, max_examples=24)
@given(kind=st.sampled_from(sorted(ODD_FILES)), reader=st.sampled_from(READERS))
def test_odd_files_in_place_of_the_state_file(
    kind: str, reader: tuple[str, ...], reliability: Reliability
) -> None:
    want_code, want_outcome = ODD_FILES[kind]
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp)) as box:
        seen = make_odd(box, kind)
        before = entries(box)
        result = run_cli(list(reader))
        outcome = check_reader(box, before, result)
        assert result.code == want_code, result
        reliability.record(f"state/{kind}/read", outcome)
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp)) as box:
        seen = make_odd(box, kind)
        before = entries(box)
        outcome = check_odd_reconcile(box, seen, before, run_cli(["reconcile"]))
        assert outcome == want_outcome, (kind, outcome)
        reliability.record(f"state/{kind}/reconcile", outcome)


@settings(FUZZ, max_examples=60)
@given(
    version=st.integers(SCHEMA_VERSION + 1, 10**20),
    argv=st.sampled_from(
        [*map(list, READERS), ["reconcile"], ["rolling", "set", "--enable"], ["rolling", "reset"]]
    ),
)
def test_a_newer_state_file_is_never_replaced(
    version: int, argv: list[str], reliability: Reliability
) -> None:
    """Every command, writers included, refuses in one line and leaves the file in place."""
    data = dumps({**REAL_DOC, "schema_version": version, "a_future_field": [1, 2]})
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp)) as box:
        box.state_file.write_bytes(data)
        before = entries(box)
        result = run_cli(argv)
        check_output(result)
        assert result.code == 1 and "newer cloudproxy" in result.error_lines[0], result
        assert entries(box) == before
        reliability.record("state/newer-schema", "refused")
