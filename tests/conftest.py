"""Shared pytest configuration."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _cloudproxy_logger() -> Iterator[None]:
    """The "cloudproxy" logger as each test found it: an in-process CLI run configures it (its
    own handler, a level, no propagation), which would hide later tests' records from caplog."""
    logger = logging.getLogger("cloudproxy")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
