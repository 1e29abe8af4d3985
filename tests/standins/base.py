"""What every provider stand-in offers the contract suite and the request-counting tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

from cloudproxy_cli.core.ports import Provider

if TYPE_CHECKING:
    from tests.standins.http import Failure, FailureQueue

# How a stand-in classifies each API request it served.
Kind = Literal["list", "create", "delete", "firewall", "other"]


class StandIn(Protocol):
    """A stateful fake of one cloud API on 127.0.0.1 (or moto for EC2), plus test controls.

    Every address it hands out is on loopback (127.0.0.x), so nothing a test does can send
    traffic anywhere else.
    """

    @property
    def name(self) -> str:
        """The provider's name: "digitalocean", "aws", ..."""
        ...

    @property
    def secrets(self) -> tuple[str, ...]:
        """The credentials its adapters were given: never in errors or logs."""
        ...

    def provider(self, instance: str = "default") -> Provider:
        """A real adapter for ``instance``, made by ``app.factories``, pointed here."""
        ...

    def add_foreign_vm(self, *, instance: str | None) -> str:
        """Create a VM directly in the stand-in that our adapter did not create: untagged
        (``instance=None``) or tagged as ``cloudproxy`` + another instance's tag. Returns its
        provider id."""
        ...

    def vm_exists(self, vm_id: str) -> bool: ...

    def vm_ids(self) -> list[str]:
        """Every VM the stand-in holds, in all its accounts (its own state, not an adapter's
        view), except those already gone."""
        ...

    def vm_tags(self, vm_id: str) -> dict[str, str]:
        """The VM's tags/labels as a flat mapping (a plain tag ``t`` appears as ``{t: ""}``)."""
        ...

    def boot_all(self) -> None:
        """Every VM becomes running and gets its public (loopback) address."""
        ...

    def fail_next(
        self, kind: Kind, status: int, *, times: int = 1, retry_after: int | None = None
    ) -> None:
        """The next ``times`` requests of ``kind`` answer ``status`` (with Retry-After if given)."""
        ...

    def requests(self) -> list[Kind]:
        """The kinds of the requests served since the last ``reset_requests``."""
        ...

    def reset_requests(self) -> None: ...

    def close(self) -> None: ...


class FaultyStandIn(StandIn, Protocol):
    """A stand-in of an HTTP API, with the failure injection of ``tests/standins/http.py``."""

    failures: FailureQueue[Failure]
