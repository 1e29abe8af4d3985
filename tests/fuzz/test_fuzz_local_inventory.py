"""Corrupt records in the local provider's inventory: a ProviderError for that instance (so a
failed list means no actions), never a traceback, and nothing it could not parse is deleted."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloudproxy_cli.adapters.local import LocalProvider
from cloudproxy_cli.core.errors import ProviderError
from tests.fuzz.support import FUZZ, Reliability, check_output, flip, json_junk, run_cli, sandbox

pytestmark = pytest.mark.fuzz

PROXY_ID = "local-0000abcd"
# No process has a pid above the kernel's limit (2**22): a record the fuzzer leaves valid can
# never name a live process, so deleting it signals nothing.
NO_SUCH_PID = 2**22 + 17
RECORD = {
    "id": PROXY_ID,
    "port": 40001,
    "pid": NO_SUCH_PID,
    "created_at": "2026-01-02T03:04:05+00:00",
    "start_time": 12345,
}
RECORD_BYTES = json.dumps(RECORD).encode()

records = st.one_of(
    st.tuples(st.just("inventory/wrong-type"), st.sampled_from(sorted(RECORD)), json_junk).map(
        lambda t: (t[0], json.dumps({**RECORD, t[1]: t[2]}).encode())
    ),
    st.tuples(
        st.just("inventory/boundary"),
        st.sampled_from(["port", "pid", "start_time"]),
        st.sampled_from([0, 1, -1, 65535, 65536, 2**31 - 1, 2**31, 2**63, 2**64]),
    ).map(lambda t: (t[0], json.dumps({**RECORD, t[1]: t[2]}).encode())),
    st.tuples(st.just("inventory/missing-field"), st.sampled_from(sorted(RECORD))).map(
        lambda t: (t[0], json.dumps({k: v for k, v in RECORD.items() if k != t[1]}).encode())
    ),
    st.tuples(st.just("inventory/truncated"), st.integers(0, len(RECORD_BYTES) - 1)).map(
        lambda t: (t[0], RECORD_BYTES[: t[1]])
    ),
    st.tuples(
        st.just("inventory/flipped-bytes"),
        st.lists(
            st.tuples(st.integers(0, len(RECORD_BYTES) - 1), st.integers(1, 255)),
            min_size=1,
            max_size=3,
        ),
    ).map(lambda t: (t[0], flip(RECORD_BYTES, t[1]))),
    st.tuples(st.just("inventory/junk-bytes"), st.binary(max_size=40)),
    st.tuples(st.just("inventory/json-junk"), json_junk).map(
        lambda t: (t[0], json.dumps(t[1]).encode())
    ),
)


def listing(directory: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(directory.iterdir()):
        out[path.name] = (
            f"-> {os.readlink(path)}"
            if path.is_symlink()
            else path.read_bytes()
            if path.is_file()
            else "<dir>"
        )
    return out


def provider(directory: Path) -> LocalProvider:
    return LocalProvider(instance="default", directory=directory, username=None, password=None)


def list_outcome(local: LocalProvider) -> str:
    try:
        local.list_proxies()
    except ProviderError as err:
        message = str(err)
    else:
        return "listed"
    assert "\n" not in message and "local/default" in message, message
    return "provider-error"


def check_inventory(directory: Path, reliability: Reliability, fault: str) -> None:
    local = provider(directory)
    before = listing(directory)
    outcome = list_outcome(local)
    assert listing(directory) == before, "listing changed the inventory"
    with contextlib.suppress(ProviderError):
        local.delete_proxy(PROXY_ID)
    if outcome == "provider-error":
        # What it could not parse it must not delete.
        assert listing(directory) == before, "a record that does not parse was deleted"
    reliability.record(fault, outcome)


@settings(FUZZ, max_examples=400)
@given(record=records, name=st.sampled_from([PROXY_ID, "local-0000beef", "x"]))
@example(
    record=("inventory/boundary", json.dumps({**RECORD, "pid": 2**31}).encode()), name=PROXY_ID
)
@example(
    record=("inventory/wrong-type", json.dumps({**RECORD, "created_at": 5}).encode()), name=PROXY_ID
)
def test_corrupt_inventory_records(
    record: tuple[str, bytes], name: str, reliability: Reliability
) -> None:
    fault, data = record
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "inv"
        directory.mkdir()
        (directory / f"{name}.json").write_bytes(data)
        check_inventory(directory, reliability, fault)


def odd(directory: Path, kind: str) -> None:
    path = directory / f"{PROXY_ID}.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "dangling-symlink":
        path.symlink_to("nowhere.json")
    elif kind == "symlink-to-record":
        (directory.parent / "elsewhere.json").write_bytes(RECORD_BYTES)
        path.symlink_to(directory.parent / "elsewhere.json")
    elif kind == "fifo":
        os.mkfifo(path)  # a plain read would block forever
    elif kind == "huge":
        path.write_bytes(b'{"id": "' + b"a" * 3_000_000 + b'"}')


@settings(FUZZ, max_examples=12)
@given(
    kind=st.sampled_from(
        ["directory", "symlink-loop", "dangling-symlink", "symlink-to-record", "fifo", "huge"]
    )
)
def test_odd_inventory_entries(kind: str, reliability: Reliability) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "inv"
        directory.mkdir()
        odd(directory, kind)
        check_inventory(directory, reliability, f"inventory/{kind}")


@settings(FUZZ, max_examples=60)
@given(record=records)
def test_reconcile_takes_no_action_on_an_inventory_it_cannot_read(
    record: tuple[str, bytes], reliability: Reliability
) -> None:
    """LOCAL_MIN_SCALING=2 would start two proxies: a failed list must start none."""
    fault, data = record
    with (
        tempfile.TemporaryDirectory() as tmp,
        sandbox(Path(tmp), {"LOCAL_MIN_SCALING": "2"}) as box,
    ):
        box.inventory.mkdir(parents=True)
        (box.inventory / f"{PROXY_ID}.json").write_bytes(data)
        if list_outcome(provider(box.inventory)) == "listed":
            reliability.record(fault + "/reconcile", "skipped-valid")
            return  # a valid record: reconcile would rightly act, and start processes
        before = listing(box.inventory)
        result = run_cli(["reconcile"])
        check_output(result)
        assert result.code == 1, result  # its only instance failed
        assert listing(box.inventory) == before
        assert "Could not list the proxies of local/default" in result.stderr
        reliability.record(fault + "/reconcile", f"exit-{result.code}")
