"""What tests that drive stand-ins share: opening one by name, and doubles for a whole run."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from cloudproxy_cli.core.model import ProbeResult, ProbeTarget
from tests.standins.base import FaultyStandIn

HTTP_STANDINS = ("digitalocean", "vultr", "aws", "gcp", "hetzner")


def open_standin(name: str, tmp_path: Path) -> Iterator[FaultyStandIn]:
    """The stand-in ``tests/standins/<name>.py`` makes, closed afterwards (for a fixture)."""
    module = importlib.import_module(f"tests.standins.{name}")
    stand = cast(FaultyStandIn, module.make_standin(tmp_path))
    try:
        yield stand
    finally:
        stand.close()


class AllHealthy:
    """A prober double: every proxy with an address answers."""

    def probe(self, targets: Sequence[ProbeTarget]) -> dict[str, ProbeResult]:
        return {t.proxy_id: ProbeResult(True) for t in targets}


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
