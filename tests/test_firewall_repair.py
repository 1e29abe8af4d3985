"""A firewall deleted or changed behind cloudproxy's back is repaired by the next run that needs it.

Each case runs the real service (``run_reconcile``) with the real adapters (``app.factories``)
against a provider's stand-in, changes the firewall in the stand-in's own state, and checks
that the stand-in's firewall afterwards holds exactly the desired rules. Health checks go to a
double that answers without any connection.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cloudproxy_cli.adapters.common import ProxySettings, firewall_name
from cloudproxy_cli.app.service import InstanceRuntime, RunReport, run_reconcile
from cloudproxy_cli.cli.render import print_run
from cloudproxy_cli.core.firewall import CHECK_INTERVAL, firewall_check_due
from cloudproxy_cli.core.model import InstanceKey, ProbeResult, ProbeTarget
from cloudproxy_cli.core.policy import InstancePolicy, RollingPolicy
from cloudproxy_cli.core.ports import Provider
from cloudproxy_cli.core.state import InstanceState, State, decode_state, encode_state
from tests.standins.gcp import _Failure as GcpFailure
from tests.standins.http import Failure
from tests.support.fakes import MemoryStore

PORT = 8899
NAME = firewall_name("default")
HOST_IP = "203.0.113.7"
Rule = tuple[str, str, str]  # (protocol, ports, source CIDR) of one inbound rule


def wanted(port: int = PORT, allowed_ip: str | None = None) -> set[Rule]:
    """The one rule every provider's firewall must hold: IPv4 only, unless HOST_IP is IPv6."""
    return {("tcp", str(port), f"{allowed_ip}/32" if allowed_ip else "0.0.0.0/0")}


# --- each stand-in's firewall, seen and changed in its own state --------------------------------


class View:
    """One provider's firewall as the stand-in holds it (its own state, no API call)."""

    name: str

    def __init__(self, standin: Any) -> None:
        self.standin = standin

    def provider(self, allowed_ip: str | None) -> Provider:
        proxy = ProxySettings(PORT, "proxyuser", "proxy-pass-1234", allowed_ip)
        return self.standin.provider(proxy=proxy)  # type: ignore[no-any-return]

    def rules(self) -> set[Rule] | None:
        """The inbound rules of our firewall; ``None`` when there is none."""
        raise NotImplementedError

    def delete(self) -> None:
        raise NotImplementedError

    def set_port(self, port: int) -> None:
        raise NotImplementedError

    def fail_repair(self) -> None:
        """The firewall's first request (the read) is served; the next (the repair) fails."""
        self.standin.fail_next("firewall", 403, skip=1)


class ByName(View):
    """A stand-in that keeps firewalls by id, each with its ``name`` and a list of rules."""

    rules_key: str  # where a firewall keeps its rules
    port_key: str  # where a rule keeps its ports

    def _firewalls(self) -> dict[Any, dict[str, Any]]:
        raise NotImplementedError

    def _ours(self) -> dict[str, Any] | None:
        return next((f for f in self._firewalls().values() if f["name"] == NAME), None)

    @staticmethod
    def sources(rule: dict[str, Any]) -> list[str]:
        """The addresses an inbound rule admits (none for an outbound one)."""
        raise NotImplementedError

    def rules(self) -> set[Rule] | None:
        ours = self._ours()
        if ours is None:
            return None
        return {
            (r["protocol"], r[self.port_key], cidr)
            for r in ours[self.rules_key]
            for cidr in self.sources(r)
        }

    def delete(self) -> None:
        ours = self._ours()
        assert ours is not None
        del self._firewalls()[ours["id"]]

    def set_port(self, port: int) -> None:
        ours = self._ours()
        assert ours is not None
        ours[self.rules_key][0][self.port_key] = str(port)


class DigitalOceanView(ByName):
    name = "digitalocean"
    rules_key, port_key = "inbound_rules", "ports"

    def _firewalls(self) -> dict[Any, dict[str, Any]]:
        firewalls: dict[Any, dict[str, Any]] = self.standin.accounts[
            self.standin.tokens[0]
        ].firewalls
        return firewalls

    @staticmethod
    def sources(rule: dict[str, Any]) -> list[str]:
        addresses: list[str] = rule["sources"]["addresses"]
        return addresses


class VultrView(View):
    name = "vultr"

    def provider(self, allowed_ip: str | None) -> Provider:
        return self.standin.provider(allowed_ip=allowed_ip)  # type: ignore[no-any-return]

    def _account(self) -> Any:
        return self.standin.accounts[self.standin.tokens[0]]

    def _ours(self) -> str | None:
        groups = self._account().firewalls.values()
        return next((g["id"] for g in groups if g["description"] == NAME), None)

    def rules(self) -> set[Rule] | None:
        ours = self._ours()
        if ours is None:
            return None
        return {
            (r["protocol"], r["port"], f"{r['subnet']}/{r['subnet_size']}")
            for r in self._account().rules[ours]
        }

    def delete(self) -> None:
        ours = self._ours()
        assert ours is not None
        del self._account().firewalls[ours]
        del self._account().rules[ours]

    def set_port(self, port: int) -> None:
        ours = self._ours()
        assert ours is not None
        self._account().rules[ours][0]["port"] = str(port)


class HetznerView(ByName):
    name = "hetzner"
    rules_key, port_key = "rules", "port"

    def fail_repair(self) -> None:
        self.standin.failures.add("firewall", Failure(403), skip=1)

    def _firewalls(self) -> dict[Any, dict[str, Any]]:
        firewalls: dict[Any, dict[str, Any]] = self.standin.projects["a"].firewalls
        return firewalls

    @staticmethod
    def sources(rule: dict[str, Any]) -> list[str]:
        addresses: list[str] = rule["source_ips"] if rule["direction"] == "in" else []
        return addresses


class GcpView(View):
    name = "gcp"
    key = ("proj-default", NAME)

    def fail_repair(self) -> None:
        self.standin.failures.add("firewall", GcpFailure(403), skip=1)

    def rules(self) -> set[Rule] | None:
        ours = self.standin.firewalls.get(self.key)
        if ours is None:
            return None
        return {
            (allowed["IPProtocol"], port, cidr)
            for allowed in ours["allowed"]
            for port in allowed["ports"]
            for cidr in ours["sourceRanges"]
        }

    def delete(self) -> None:
        del self.standin.firewalls[self.key]

    def set_port(self, port: int) -> None:
        self.standin.firewalls[self.key]["allowed"][0]["ports"] = [str(port)]


class AwsView(View):
    """moto's security groups, read and changed as someone at the console would (boto3)."""

    name = "aws"

    def __init__(self, standin: Any) -> None:
        super().__init__(standin)
        self.console = standin.console()

    def provider(self, allowed_ip: str | None) -> Provider:
        return self.standin.provider(allowed_ip=allowed_ip)  # type: ignore[no-any-return]

    def _ours(self) -> dict[str, Any] | None:
        groups = self.console.describe_security_groups()["SecurityGroups"]
        return next((g for g in groups if g["GroupName"] == NAME), None)

    def rules(self) -> set[Rule] | None:
        ours = self._ours()
        if ours is None:
            return None
        found: set[Rule] = set()
        for perm in ours["IpPermissions"]:
            ports = f"{perm['FromPort']}" if perm["FromPort"] == perm["ToPort"] else "range"
            ranges = perm.get("IpRanges", []) + perm.get("Ipv6Ranges", [])
            found |= {(perm["IpProtocol"], ports, r.get("CidrIp") or r["CidrIpv6"]) for r in ranges}
        return found

    def delete(self) -> None:
        ours = self._ours()
        assert ours is not None
        self.console.delete_security_group(GroupId=ours["GroupId"])

    def set_port(self, port: int) -> None:
        ours = self._ours()
        assert ours is not None
        console = self.console
        console.revoke_security_group_ingress(
            GroupId=ours["GroupId"], IpPermissions=ours["IpPermissions"]
        )
        opened = {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                  "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}  # fmt: skip
        console.authorize_security_group_ingress(GroupId=ours["GroupId"], IpPermissions=[opened])


VIEWS: dict[str, type[View]] = {
    v.name: v for v in (DigitalOceanView, VultrView, HetznerView, GcpView, AwsView)
}


# --- a reconcile loop over one stand-in ------------------------------------------------------


class AllHealthy:
    """A prober double: every proxy answers (no connection is made)."""

    def probe(self, targets: Sequence[ProbeTarget]) -> dict[str, ProbeResult]:
        return {t.proxy_id: ProbeResult(True) for t in targets}


@dataclass
class Clock:
    skipped: timedelta = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skipped


@dataclass
class Loop:
    view: View
    store: MemoryStore = field(default_factory=MemoryStore)
    clock: Clock = field(default_factory=Clock)
    allowed_ip: str | None = None

    def run(self) -> RunReport:
        """One reconcile, with an adapter made afresh (as each cron run makes its own)."""
        key = InstanceKey(self.view.name, "default")
        runtime = InstanceRuntime(key, self.view.provider(self.allowed_ip), self.policy, PORT)
        return run_reconcile(lambda _s: [runtime], self.store, AllHealthy(), self.clock)

    @property
    def policy(self) -> InstancePolicy:
        return InstancePolicy(rolling=RollingPolicy(enabled=True), min_scaling=2)

    @property
    def remembered(self) -> InstanceState:
        return self.store.state.instance(f"{self.view.name}/default")

    def lose_a_proxy(self) -> None:
        """One proxy vanishes, so the next run must create one (and so needs the firewall)."""
        self.view.standin.boot_all()
        provider = self.view.provider(self.allowed_ip)
        provider.delete_proxy(provider.list_proxies()[0].id)
        self.view.standin.reset_requests()


def errors(report: RunReport) -> list[str]:
    return report.instances[0].errors()


@pytest.fixture(params=sorted(VIEWS))
def loop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Loop]:
    standin = importlib.import_module(f"tests.standins.{request.param}").make_standin(tmp_path)
    try:
        made = Loop(VIEWS[request.param](standin))
        report = made.run()  # the first run creates two proxies behind a new firewall
        assert not errors(report), errors(report)
        assert made.view.rules() == wanted()
        yield made
    finally:
        standin.close()


def test_a_deleted_firewall_is_made_again_by_the_next_creating_run(loop: Loop) -> None:
    before = loop.remembered.firewall_id
    loop.view.delete()
    assert loop.view.rules() is None
    loop.lose_a_proxy()
    report = loop.run()
    assert not errors(report), errors(report)
    assert loop.view.rules() == wanted()
    assert loop.remembered.firewall_id is not None
    if loop.view.name != "gcp":  # a GCP rule's id is its name
        assert loop.remembered.firewall_id != before


def test_a_changed_port_rule_is_repaired_by_the_next_creating_run(loop: Loop) -> None:
    before = loop.remembered.firewall_id
    loop.view.set_port(22)
    assert loop.view.rules() == {("tcp", "22", "0.0.0.0/0")}
    loop.lose_a_proxy()
    report = loop.run()
    assert not errors(report), errors(report)
    assert loop.view.rules() == wanted()
    assert loop.remembered.firewall_id == before  # the same firewall, repaired in place


def test_host_ip_settings_changed_are_applied_to_the_firewall(loop: Loop) -> None:
    loop.allowed_ip = HOST_IP  # ONLY_HOST_IP switched on
    loop.lose_a_proxy()
    assert not errors(loop.run())
    assert loop.view.rules() == wanted(allowed_ip=HOST_IP)
    loop.allowed_ip = None  # and off again
    loop.lose_a_proxy()
    assert not errors(loop.run())
    assert loop.view.rules() == wanted()


def test_the_hourly_check_repairs_without_creating(loop: Loop) -> None:
    loop.view.standin.boot_all()
    loop.view.delete()
    loop.view.standin.reset_requests()
    checked = loop.remembered.firewall_checked_at
    assert checked is not None
    report = loop.run()  # nothing to create, checked moments ago: not noticed yet
    assert loop.view.standin.requests() == ["list"]
    assert loop.view.rules() is None
    loop.clock.skipped = CHECK_INTERVAL
    report = loop.run()
    assert not errors(report), errors(report)
    assert "create" not in loop.view.standin.requests()
    assert loop.view.rules() == wanted()
    after = loop.remembered.firewall_checked_at
    assert after is not None and after >= checked + CHECK_INTERVAL


def test_a_failed_repair_fails_the_creates_with_the_reason(loop: Loop) -> None:
    loop.view.set_port(22)
    loop.lose_a_proxy()
    loop.view.fail_repair()
    report = loop.run()
    (outcome,) = report.instances[0].outcomes
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith(f"firewall: could not verify or repair it: {loop.view.name}/")
    assert "\n" not in outcome.error
    assert "create" not in loop.view.standin.requests()  # no VM behind a wrong firewall
    checked = loop.remembered.firewall_checked_at
    # The next run, the API working again, repairs it and creates.
    report = loop.run()
    assert not errors(report), errors(report)
    assert loop.view.rules() == wanted()
    assert loop.remembered.firewall_checked_at != checked


def test_a_failed_hourly_check_is_reported_and_tried_again(loop: Loop) -> None:
    loop.view.standin.boot_all()
    loop.clock.skipped = CHECK_INTERVAL
    loop.view.standin.fail_next("firewall", 403)  # not retried: one request fails
    report = loop.run()
    (error,) = errors(report)
    assert error.startswith("firewall: could not verify or repair it:")
    assert report.instances[0].failed
    text = io.StringIO()
    policies = {str(i.key): loop.policy for i in report.instances}
    print_run(Console(file=text, soft_wrap=True), report, policies)
    assert f"FAILED: {error}" in text.getvalue() and "nothing to do" not in text.getvalue()
    snapshot = loop.remembered.snapshot
    assert snapshot is not None and snapshot.last_error == error
    loop.view.standin.reset_requests()
    assert not errors(loop.run())  # still due: checked, this time successfully
    assert "firewall" in loop.view.standin.requests()


# --- the pure decision and the state field ---------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("checked_at", "now", "creating", "due"),
    [
        (None, T0, False, True),  # never checked (a state file from before this field)
        (T0, T0, True, True),  # a run that creates always checks
        (T0, T0 + CHECK_INTERVAL - timedelta(seconds=1), False, False),
        (T0, T0 + CHECK_INTERVAL, False, True),
        (T0 + timedelta(minutes=5), T0, False, True),  # checked "in the future": clock set back
    ],
)
def test_firewall_check_due(
    checked_at: datetime | None, now: datetime, creating: bool, due: bool
) -> None:
    assert firewall_check_due(checked_at, now=now, creating=creating) is due


def test_firewall_checked_at_round_trips_and_old_files_load() -> None:
    state = State(
        instances={"aws/default": InstanceState(firewall_id="sg-1", firewall_checked_at=T0)}
    )
    doc = encode_state(state)
    assert doc["instances"]["aws/default"]["firewall_checked_at"] == "2026-01-01T12:00:00Z"
    assert decode_state(doc) == state
    del doc["instances"]["aws/default"]["firewall_checked_at"]  # written by an older version
    old = decode_state(doc).instance("aws/default")
    assert (old.firewall_id, old.firewall_checked_at) == ("sg-1", None)
