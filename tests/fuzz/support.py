"""Shared pieces of the fuzz suite: the Hypothesis profile and an in-process CLI sandbox."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cloudproxy_cli.adapters.local import LocalProvider
from cloudproxy_cli.cli.app import run
from cloudproxy_cli.config import GLOBAL_SETTINGS, PROVIDER_SETTINGS

# Every variable a setting could come from, removed from each example's environment.
_SETTING_PREFIXES = (
    *(f"{p.upper()}_" for p in PROVIDER_SETTINGS),
    *(k.upper() for k in GLOBAL_SETTINGS),
    "CLOUDPROXY_",
    "NO_COLOR",
)

# Reproducible in CI: a fixed seed per test, no example database, no per-example deadline.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

EXIT_CODES = frozenset({0, 1, 2, 3, 4, 5, 6})  # cli/exit_codes.py, less 130 (Ctrl-C)
ERROR_PREFIX = "cloudproxy: error: "
# Log lines as render.setup_logging formats them when stderr is not a terminal.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (DEBUG|INFO|WARNING|ERROR) ")
# The notes a result adds after itself on stderr (results.py: CommandResult.notes).
NOTE_LINE = re.compile(
    r"dry run: \d+ to create, \d+ to delete, \d+ deferred(, \d+ failed)?"
    r"|no state file at .+ yet: run `cloudproxy reconcile` first"
)


class Reliability:
    """Counts (fault class, outcome) pairs for one test."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def record(self, fault_class: str, outcome: str) -> None:
        self.counts[(fault_class, outcome)] += 1

    def lines(self, test: str) -> list[str]:
        return [
            json.dumps({"suite": "fuzz", "test": test, "fault_class": f, "outcome": o, "cases": n})
            for (f, o), n in sorted(self.counts.items())
        ]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith(ERROR_PREFIX)]


@dataclass(frozen=True)
class Sandbox:
    """One example's world: a cwd, a state file path and the local provider's inventory."""

    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def state_file(self) -> Path:
        return self.root / "state" / "state.json"

    @property
    def inventory(self) -> Path:
        return self.state_file.parent / "local" / "default"

    def inventory_files(self) -> list[str]:
        if not self.inventory.is_dir():
            return []
        return sorted(n for n in os.listdir(self.inventory) if n.endswith(".json"))


@contextlib.contextmanager
def sandbox(root: Path, env: dict[str, str] | None = None) -> Iterator[Sandbox]:
    """Isolate one Hypothesis example: fixtures are not reset between examples, so this
    context manager sets (and afterwards restores) the cwd and the whole environment."""
    box = Sandbox(root)
    box.work.mkdir(parents=True, exist_ok=True)
    box.state_file.parent.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(_SETTING_PREFIXES):
                mp.delenv(name)
        base = {
            "HOME": str(root / "home"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_STATE_HOME": str(root / "state-home"),
            "CLOUDPROXY_STATE_FILE": str(box.state_file),
            "NO_COLOR": "1",
            # No command may start a proxy process: a run that gets this far plans nothing.
            "LOCAL_ENABLED": "true",
            "LOCAL_MIN_SCALING": "0",
        }
        for name, value in {**base, **(env or {})}.items():
            mp.setenv(name, value)
        mp.chdir(box.work)
        yield box


def run_cli(argv: list[str]) -> Result:
    """``cloudproxy <argv>`` in this process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    # run() configures the "cloudproxy" logger (handler on this stderr, no propagation): put it
    # back afterwards, or later tests in this worker lose their log records to a closed buffer.
    logger = logging.getLogger("cloudproxy")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    return Result(code, out.getvalue(), err.getvalue())


def check_output(result: Result) -> None:
    """What every command owes its user, whatever it was given."""
    assert result.code in EXIT_CODES, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    errors = result.error_lines
    assert len(errors) <= 1, result.stderr
    if result.code in {2, 4, 5}:
        assert len(errors) == 1, result.stderr
    for line in result.stderr.splitlines():
        assert line.startswith(ERROR_PREFIX) or LOG_LINE.match(line) or NOTE_LINE.fullmatch(line), (
            line
        )


# --- shared strategies and checks ---------------------------------------------------------

json_junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=4,
)


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode()  # NaN and Infinity included, as Python writes them


def flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for offset, mask in flips:
        out[offset] ^= mask
    return bytes(out)


def entries(box: Sandbox) -> dict[str, tuple[bytes | str, int]]:
    """The state directory's files (content or link target, inode); lock and inventory aside."""
    found: dict[str, tuple[bytes | str, int]] = {}
    for path in box.state_file.parent.iterdir():
        if path.name.endswith(".lock") or path.name == "local":
            continue
        st_ = path.lstat()
        if path.is_symlink():
            found[path.name] = (os.readlink(path), st_.st_ino)
        elif path.is_file():
            found[path.name] = (path.read_bytes(), st_.st_ino)
        else:
            found[path.name] = ("<dir>", st_.st_ino)
    return found


def assert_no_proxies(box: Sandbox) -> None:
    """No example may start a proxy; if one did, stop it before failing."""
    left = box.inventory_files()
    if left:
        provider = LocalProvider(
            instance="default", directory=box.inventory, username=None, password=None
        )
        for name in left:
            provider.delete_proxy(name.removesuffix(".json"))
    assert not left, left
