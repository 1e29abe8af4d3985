"""End to end: the real `cloudproxy` command recycles a DigitalOcean fleet (the stand-in, with a
real proxy on each booted droplet's loopback address) under the rolling rules."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.user_data import render_user_data
from tests.standins.digitalocean import DigitalOceanStandIn
from tests.support.cli import Cli
from tests.support.local_proxies import proxy_processes, proxy_py_server
from tests.support.ok_server import OkHandler

pytestmark = pytest.mark.e2e

KEY = "digitalocean/default"
USER, PASSWORD = "e2euser", "e2eSecret42"
MAX_RUNS = 12  # the scenario needs 5; a loop that never converges must fail, not hang
_BASIC_AUTH = re.compile(r"^BasicAuth (\S+) (\S+)$", re.MULTILINE)


class DropletProxies:
    """A real proxy.py on each booted droplet's 127.0.0.x address and the proxy port, with the
    credentials its user data gave tinyproxy; deleting the droplet stops it."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.credentials: dict[str, tuple[str, str]] = {}  # droplet id -> from its user data
        self._running: dict[str, ExitStack] = {}
        self._lock = threading.Lock()

    def boot(self, droplet_id: str, ip: str, user_data: str | None) -> None:
        found = _BASIC_AUTH.findall(user_data or "")
        assert len(found) == 1, f"droplet {droplet_id}: no BasicAuth line in its user data"
        username, password = found[0]
        workdir = self.workdir / droplet_id
        workdir.mkdir(parents=True)
        stack = ExitStack()
        stack.enter_context(
            proxy_py_server(workdir, username=username, password=password, host=ip, port=self.port)
        )
        with self._lock:
            self.credentials[droplet_id] = (username, password)
            self._running[droplet_id] = stack

    def delete(self, droplet_id: str) -> None:
        with self._lock:
            stack = self._running.pop(droplet_id, None)
        if stack is not None:
            stack.close()

    def running(self) -> set[str]:
        with self._lock:
            return set(self._running)

    def stop_all(self) -> None:
        for droplet_id in sorted(self.running()):
            self.delete(droplet_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OkHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[DigitalOceanStandIn, DropletProxies]]:
    standin = DigitalOceanStandIn()
    proxies = DropletProxies(tmp_path / "droplets", free_port())
    standin.on_boot = proxies.boot
    standin.on_delete = proxies.delete
    try:
        yield standin, proxies
    finally:
        standin.close()
        proxies.stop_all()
        left = proxy_processes(str(tmp_path / "droplets"), module="proxy")
        assert left == [], "a droplet's proxy process outlived the test"


def reconcile_and_status(cli: Cli) -> tuple[dict[str, Any], dict[str, Any]]:
    run = cli.run("reconcile", "--json")
    assert run.returncode == 0, run.stderr
    status = cli.json("rolling", "status", "--json")
    return status["config"], status["status"][KEY]


def test_rolling_recycles_every_aged_droplet_without_dropping_below_the_minimum(
    tmp_path: Path, cloud: tuple[DigitalOceanStandIn, DropletProxies], origin: str
) -> None:
    standin, proxies = cloud
    # The spec's scenario: five droplets of this instance, two hours old, serving.
    seeded_user_data = render_user_data(ProxySettings(proxies.port, USER, PASSWORD))
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    originals = {
        standin.add_droplet(
            tags=["cloudproxy", "cloudproxy-default"],
            created_at=two_hours_ago,
            user_data=seeded_user_data,
        )
        for _ in range(5)
    }
    standin.boot(originals)
    assert proxies.running() == originals
    cli = Cli.make(
        tmp_path / "cli",
        DIGITALOCEAN_ENABLED="True",
        DIGITALOCEAN_ACCESS_TOKEN=standin.tokens[0],
        DIGITALOCEAN_API_ENDPOINT=standin.endpoint,
        DIGITALOCEAN_MIN_SCALING="5",
        ROLLING_DEPLOYMENT="True",
        ROLLING_MIN_AVAILABLE="3",
        ROLLING_BATCH_SIZE="2",
        AGE_LIMIT="3600",
        PROXY_USERNAME=USER,
        PROXY_PASSWORD=PASSWORD,
        PROXY_PORT=str(proxies.port),
        HEALTH_CHECK_URL=origin,
        HEALTH_CHECK_TIMEOUT="3",
    )

    # Boot model: a droplet created in run k is still booting (no public IP) at run k+1 and
    # boots after it, so run k+2 finds it healthy, as in the spec's walk-through.
    existed_before = set(originals)
    runs, max_in_flight, seen_recycling = 0, 0, False
    while originals & set(standin.droplet_ids()):
        assert runs < MAX_RUNS, "recycling did not finish"
        config, s = reconcile_and_status(cli)
        runs += 1
        assert s["healthy"] >= 3, s  # never below ROLLING_MIN_AVAILABLE: the fleet was full
        assert s["in_flight"] <= 2, s  # never more than ROLLING_BATCH_SIZE in flight
        assert len(s["recycling_ips"]) <= 2, s
        assert s["last_error"] is None, s
        assert config["batch_size"] == 2 and config["min_available"] == 3
        assert standin.hook_errors == []
        max_in_flight = max(max_in_flight, s["in_flight"])
        seen_recycling |= bool(s["recycling_ips"])
        now = set(standin.droplet_ids())
        standin.boot(existed_before & now)
        existed_before = now
        assert proxies.running() <= now, "a deleted droplet's proxy still runs"
    assert max_in_flight == 2, "the batch was used"
    assert seen_recycling
    assert runs >= 3, "five droplets at two per batch take at least three runs"

    # Let the last replacements boot; the pool settles at MIN_SCALING, all healthy.
    for _ in range(3):
        _, s = reconcile_and_status(cli)
        standin.boot_all()
        if s["healthy"] == 5 and s["in_flight"] == 0 and s["pending"] == 0:
            break
    else:
        pytest.fail(f"the pool did not settle: {s}")

    # A steady-state run has nothing to do and costs one list request, nothing else.
    before = len(standin.served())
    result = cli.json("reconcile", "--json")
    assert result["instances"][KEY]["actions"] == []
    assert [s.kind for s in standin.served()[before:]] == ["list"]

    # The firewall: made once, in the first run that created a droplet, never again.
    creates = [s for s in standin.served() if (s.method, s.path) == ("POST", "/v2/firewalls")]
    assert len(creates) == 1
    (firewall,) = standin.firewalls()
    assert firewall["name"] == "cloudproxy-default"
    assert firewall["tags"] == ["cloudproxy-default"]
    assert firewall["inbound_rules"][0]["ports"] == str(proxies.port)

    # Every replacement got the configured credentials through its create request's user
    # data, and its proxy (started with them) passed the prober's authenticated probe.
    replacements = set(standin.droplet_ids())
    assert len(replacements) == 5 and not replacements & originals
    for droplet_id in replacements:
        assert proxies.credentials[droplet_id] == (USER, PASSWORD)
        assert standin.vm_tags(droplet_id) == {"cloudproxy": "", "cloudproxy-default": ""}
    assert proxies.running() == replacements
    assert standin.hook_errors == []
