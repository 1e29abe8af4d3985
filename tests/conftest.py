"""Shared pytest configuration: every test talks to loopback only, in this process and below."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import loopback_guard
from tests.support.cli import Cli
from tests.support.local_proxies import local_sandbox

_SUBPROCESS_HOOK = Path(__file__).resolve().parent / "support" / "subprocess_hooks"


def pytest_configure(config: pytest.Config) -> None:
    """Python subprocesses (the CLI, proxy.py, xdist workers) install the guard at startup."""
    if os.environ.get(loopback_guard.VIOLATIONS_DIR_ENV):
        return  # an xdist worker: the controller already set it up
    os.environ[loopback_guard.VIOLATIONS_DIR_ENV] = tempfile.mkdtemp(prefix="loopback-guard-")
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(_SUBPROCESS_HOOK), *([path] if path else [])])


@pytest.fixture(scope="session", autouse=True)
def loopback_only() -> Iterator[None]:
    """Any connect/sendto to a non-loopback address raises before the real call is made."""
    loopback_guard.install()
    yield
    refused = list(loopback_guard.violations)
    directory = Path(os.environ[loopback_guard.VIOLATIONS_DIR_ENV])
    refused += [
        line for f in sorted(directory.glob("*.txt")) for line in f.read_text().splitlines()
    ]
    # Refusals the code under test caught and swallowed still fail the run.
    assert not refused, "\n".join(refused)


@pytest.fixture(autouse=True)
def fresh_cloudproxy_logger() -> None:
    """Each test starts with the ``cloudproxy`` logger as Python leaves it (no handler, level
    unset, propagating to the root, where caplog listens). An in-process CLI run configures it
    (its own handler, no propagation); one left behind, e.g. by runs interleaved in threads,
    would otherwise hide every later test's log lines from caplog."""
    logger = logging.getLogger("cloudproxy")
    logger.handlers[:], logger.propagate = [], True
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """A CLI sandbox in ``tmp_path``; every local proxy it started is stopped afterwards."""
    with local_sandbox(tmp_path) as sandbox:
        yield sandbox
