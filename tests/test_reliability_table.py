"""scripts/reliability_table turns the per-case reliability log into the markdown table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.reliability import LOG_ENV, record
from tests.fuzz.support import Reliability

SCRIPT = Path(__file__).parent.parent / "scripts" / "reliability_table"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_the_log_becomes_one_row_per_fault_class_with_totals(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    cases = [
        {"suite": "faults", "fault_class": "provider create: 5xx", "outcome": "recovered",
         "provider": "vultr"},
        {"suite": "faults", "fault_class": "provider create: 5xx", "outcome": "recovered",
         "provider": "aws"},
        {"suite": "faults", "fault_class": "provider create: 5xx", "outcome": "failed",
         "provider": "aws"},
        {"suite": "fuzz", "fault_class": "state file: random bytes", "outcome": "refused"},
        {"suite": "fuzz", "fault_class": "state file: random bytes", "outcome": "refused",
         "cases": 40},
    ]  # fmt: skip
    log.write_text("".join(json.dumps(c) + "\n" for c in cases) + "\n")
    out = tmp_path / "docs" / "reliability.md"
    result = run(str(log), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "reliability: 44 cases (1 failed, 2 recovered, 41 refused)\n"
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert rows[1:] == [
        "| faults | provider create: 5xx | aws, vultr | 3 | 1 failed, 2 recovered |",
        "| fuzz | state file: random bytes | — | 41 | 41 refused |",
        "| **total** | 2 classes | | **44** | 1 failed, 2 recovered, 41 refused |",
    ]
    # Without --output the same markdown goes to stdout.
    assert run(str(log)).stdout == out.read_text()


def test_a_malformed_log_is_a_one_line_error(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"suite": "faults", "outcome": "recovered"}\n')
    result = run(str(log))
    assert result.returncode == 1
    assert result.stderr == (
        f"reliability_table: error: {log}:1: missing or non-text fault_class\n"
    )
    log.write_text("{not json\n")
    assert "not JSON" in run(str(log)).stderr
    log.write_text('{"suite": "fuzz", "fault_class": "x", "outcome": "ok", "cases": 0}\n')
    assert "cases must be a positive whole number" in run(str(log)).stderr


def test_the_fuzz_suites_lines_are_read_by_the_generator(tmp_path: Path) -> None:
    recorder = Reliability()
    for _ in range(3):
        recorder.record("config/env", "loaded")
    recorder.record("config/env", "config-error")
    log = tmp_path / "log.jsonl"
    log.write_text("".join(line + "\n" for line in recorder.lines("tests/fuzz/x.py::t")))
    result = run(str(log))
    assert result.returncode == 0, result.stderr
    assert "| fuzz | config/env | — | 4 | 1 config-error, 3 loaded |" in result.stdout


def test_the_fault_suite_records_one_line_per_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))
    record("faults", "state write: disk full", "recovered", provider="digitalocean")
    record("faults", "SIGKILL after an action", "failed")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == [
        {"suite": "faults", "fault_class": "state write: disk full", "outcome": "recovered",
         "provider": "digitalocean"},
        {"suite": "faults", "fault_class": "SIGKILL after an action", "outcome": "failed"},
    ]  # fmt: skip
    monkeypatch.delenv(LOG_ENV)
    record("faults", "not logged", "recovered")
    assert len(log.read_text().splitlines()) == 2
