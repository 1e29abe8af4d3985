"""Shared pytest configuration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.local_proxies import stop_local_proxies


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """A CLI sandbox in ``tmp_path``; every local proxy it started is stopped afterwards."""
    sandbox = Cli.make(tmp_path)
    try:
        yield sandbox
    finally:
        for inventory in sorted(sandbox.local_dir.glob("*")):
            stop_local_proxies(inventory)
