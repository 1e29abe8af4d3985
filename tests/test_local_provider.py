"""Tests for the local provider: real proxy.py processes on 127.0.0.1, one port each."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cloudproxy_cli.adapters import local as local_adapter
from cloudproxy_cli.adapters.health import HttpProber
from cloudproxy_cli.adapters.local import LocalProvider
from cloudproxy_cli.adapters.local_proxy import MODULE
from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import ProbeResult, ProbeTarget, Proxy
from tests.support.local_proxies import (
    START_DEADLINE_S,
    local_proxies_cleaned_up,
    proxy_processes,
    wait_for_no_processes,
)

USER = "local-user"
PASSWORD = "l0cal-s3cret-pw"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[Path]:
    with local_proxies_cleaned_up(tmp_path / "state" / "local" / "default") as directory:
        # The provider makes its directory on the first create; tests write entries before.
        directory.mkdir(parents=True)
        yield directory


@pytest.fixture
def prober() -> Iterator[HttpProber]:
    with HttpProber(username=USER, password=PASSWORD, timeout_s=2.0) as p:
        yield p


def make_provider(directory: Path, **kwargs: Any) -> LocalProvider:
    options: dict[str, Any] = {"username": USER, "password": PASSWORD, **kwargs}
    return LocalProvider(instance="default", directory=directory, **options)


def probe(prober: HttpProber, proxy: Proxy) -> ProbeResult:
    assert proxy.ip is not None
    assert proxy.port is not None
    return prober.probe([ProbeTarget(proxy.id, proxy.ip, proxy.port)])[proxy.id]


def wait_healthy(prober: HttpProber, proxy: Proxy) -> ProbeResult:
    """Probe until healthy or the deadline; return the last result."""
    deadline = time.monotonic() + START_DEADLINE_S
    while not (result := probe(prober, proxy)).ok and time.monotonic() < deadline:
        time.sleep(0.02)
    return result


def entry(directory: Path, proxy_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / f"{proxy_id}.json").read_text())
    return data


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line[stat_line.rfind(")") + 2] != "Z"


def test_created_proxy_is_listed_with_aware_utc_time_on_its_own_loopback_port(
    inventory: Path,
) -> None:
    provider = make_provider(inventory, clock=lambda: T0)
    first, second = provider.create_proxy(), provider.create_proxy()

    listed = provider.list_proxies()
    assert sorted(listed, key=lambda p: p.id) == sorted([first, second], key=lambda p: p.id)
    for proxy in listed:
        assert re.fullmatch(r"local-[0-9a-f]{8}", proxy.id)
        assert proxy.created_at == T0
        assert proxy.created_at.utcoffset() is not None
        assert proxy.ip == "127.0.0.1"
        assert proxy.port is not None
        assert proxy.address == f"127.0.0.1:{proxy.port}"
    assert first.port != second.port
    assert stat.S_IMODE(inventory.stat().st_mode) == 0o700
    data = entry(inventory, first.id)
    assert data["id"] == first.id
    assert data["port"] == first.port
    assert datetime.fromisoformat(data["created_at"]) == T0
    assert isinstance(data["pid"], int)
    assert isinstance(data["start_time"], int)
    assert stat.S_IMODE((inventory / f"{first.id}.json").stat().st_mode) == 0o600


def test_proxy_answers_with_our_credentials_and_refuses_others(
    inventory: Path, prober: HttpProber
) -> None:
    proxy = make_provider(inventory).create_proxy()

    assert wait_healthy(prober, proxy).ok
    with HttpProber(username=USER, password="wrong", timeout_s=2.0) as wrong:
        result = probe(wrong, proxy)
    assert (result.ok, result.detail) == (False, "407 proxy authentication required")


def test_proxy_without_credentials_is_open(inventory: Path) -> None:
    proxy = make_provider(inventory, username=None, password=None).create_proxy()
    with HttpProber(username=None, password=None, timeout_s=2.0) as prober:
        assert wait_healthy(prober, proxy).ok


def test_boot_delay_keeps_the_proxy_refusing_while_create_returns_at_once(
    inventory: Path, prober: HttpProber
) -> None:
    # A delay far longer than the test: create returning at all shows it does not wait for the
    # boot, and the probe is certainly inside the delay.
    provider = make_provider(inventory, boot_delay_s=3600.0)
    proxy = provider.create_proxy()
    early = probe(prober, proxy)
    assert (early.ok, early.detail) == (False, "connection refused")
    assert [p.id for p in provider.list_proxies()] == [proxy.id]
    provider.delete_proxy(proxy.id)  # a booting proxy can be deleted
    assert proxy_processes(proxy.id) == []


def test_boot_delay_ends_in_a_healthy_proxy(inventory: Path, prober: HttpProber) -> None:
    delay = 0.5
    start = time.monotonic()
    proxy = make_provider(inventory, boot_delay_s=delay).create_proxy()
    assert wait_healthy(prober, proxy).ok
    assert time.monotonic() - start >= delay  # a lower bound: it cannot be healthy sooner


def test_delete_stops_every_process_frees_the_port_and_unlists(
    inventory: Path, prober: HttpProber
) -> None:
    provider = make_provider(inventory)
    proxy, kept = provider.create_proxy(), provider.create_proxy()
    assert wait_healthy(prober, proxy).ok
    leader = entry(inventory, proxy.id)["pid"]
    assert len(proxy_processes(proxy.id)) == 2  # proxy.py's main process and its acceptor

    handle = local_adapter._children[leader]  # the Popen this process started the proxy with
    provider.delete_proxy(proxy.id)
    # 0 is the proxy's own SIGTERM handler exiting; the SIGKILL fallback would make it -9.
    assert handle.returncode == 0
    assert not is_running(leader)
    assert proxy_processes(proxy.id) == []
    assert [p.id for p in provider.list_proxies()] == [kept.id]
    assert sorted(p.name for p in inventory.glob(f"{proxy.id}*")) == []
    assert probe(prober, proxy).detail == "connection refused"


def test_delete_twice_and_unknown_ids_succeed(inventory: Path) -> None:
    provider = make_provider(inventory)
    proxy = provider.create_proxy()
    provider.delete_proxy(proxy.id)
    provider.delete_proxy(proxy.id)
    provider.delete_proxy("local-00000000")
    provider.delete_proxy("../../etc/passwd")
    provider.delete_proxy("do-12345")
    assert provider.list_proxies() == []


def test_proxies_outlive_the_command_that_created_them(inventory: Path, prober: HttpProber) -> None:
    # What cron does: one process creates the proxy and exits; a later one deletes it.
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from cloudproxy_cli.adapters.local import LocalProvider
        provider = LocalProvider(
            instance="default", directory=Path({str(inventory)!r}),
            username={USER!r}, password={PASSWORD!r},
        )
        print(provider.create_proxy().id)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    proxy_id = done.stdout.strip()

    provider = make_provider(inventory)
    [proxy] = provider.list_proxies()
    assert proxy.id == proxy_id
    assert wait_healthy(prober, proxy).ok
    provider.delete_proxy(proxy.id)
    assert wait_for_no_processes(proxy.id) == []


def test_a_process_that_is_not_ours_is_never_killed(inventory: Path) -> None:
    provider = make_provider(inventory)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        # An entry that looks right (pid alive, start time matching) but names a process we
        # did not start: a pid reused after our proxy died.
        stranger_stat = Path(f"/proc/{stranger.pid}/stat").read_text()
        start_time = int(stranger_stat[stranger_stat.rfind(")") + 2 :].split()[19])
        (inventory / "local-0123abcd.json").write_text(
            json.dumps(
                {
                    "id": "local-0123abcd",
                    "port": 1,
                    "pid": stranger.pid,
                    "created_at": T0.isoformat(),
                    "start_time": start_time,
                }
            )
        )
        assert [p.id for p in provider.list_proxies()] == ["local-0123abcd"]
        provider.delete_proxy("local-0123abcd")
        assert stranger.poll() is None
        assert is_running(stranger.pid)
        assert provider.list_proxies() == []
    finally:
        stranger.kill()
        stranger.wait()


def test_our_own_command_line_with_another_start_time_is_not_killed(
    inventory: Path, prober: HttpProber
) -> None:
    provider = make_provider(inventory)
    proxy = provider.create_proxy()
    path = inventory / f"{proxy.id}.json"
    genuine = path.read_text()
    data = json.loads(genuine)
    data["start_time"] += 1  # same pid and cmdline, but a different process by its start time
    path.write_text(json.dumps(data))

    provider.delete_proxy(proxy.id)
    assert is_running(data["pid"])
    assert wait_healthy(prober, proxy).ok

    path.write_text(genuine)  # now it is ours again, and goes
    provider.delete_proxy(proxy.id)
    assert wait_for_no_processes(proxy.id) == []


def test_instances_never_see_each_other(tmp_path: Path, prober: HttpProber) -> None:
    with (
        local_proxies_cleaned_up(tmp_path / "local" / "a") as dir_a,
        local_proxies_cleaned_up(tmp_path / "local" / "b") as dir_b,
    ):
        a, b = make_provider(dir_a), make_provider(dir_b)
        proxy_a, proxy_b = a.create_proxy(), b.create_proxy()
        assert [p.id for p in a.list_proxies()] == [proxy_a.id]
        assert [p.id for p in b.list_proxies()] == [proxy_b.id]
        a.delete_proxy(proxy_b.id)  # unknown to a: nothing happens to b's proxy
        assert [p.id for p in b.list_proxies()] == [proxy_b.id]
        assert wait_healthy(prober, proxy_b).ok


def test_a_dead_proxy_is_still_listed_and_unhealthy(inventory: Path, prober: HttpProber) -> None:
    provider = make_provider(inventory)
    proxy = provider.create_proxy()
    assert wait_healthy(prober, proxy).ok

    os.kill(entry(inventory, proxy.id)["pid"], signal.SIGKILL)
    # Its acceptor process must not carry on serving: it dies with its parent.
    assert wait_for_no_processes(proxy.id) == []
    assert [p.id for p in provider.list_proxies()] == [proxy.id]
    result = probe(prober, proxy)
    assert not result.ok
    # "reset" when the probe slipped into the backlog of a socket that was just being closed
    assert result.detail in {"connection refused", "connection reset"}
    provider.delete_proxy(proxy.id)
    assert provider.list_proxies() == []


def test_a_process_the_inventory_does_not_list_stops_by_itself(inventory: Path) -> None:
    # E.g. its creator was killed between starting it and recording it: nobody could ever
    # delete it, so it must not run on. Short grace and interval keep the test fast.
    make_provider(inventory)  # creates the directory
    with socket.socket() as s1, socket.socket() as s2:
        s1.bind(("127.0.0.1", 0))
        s2.bind(("127.0.0.1", 0))
        ports = [s1.getsockname()[1], s2.getsockname()[1]]
    listed_id, unlisted_id = "local-00000aaa", "local-00000bbb"
    procs = {
        proxy_id: subprocess.Popen(
            [
                *(sys.executable, "-m", MODULE, "--id", proxy_id, "--port", str(ports[i])),
                *("--state-dir", str(inventory), "--orphan-grace", "0.3"),
                *("--check-interval", "0.05"),
            ],
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for i, proxy_id in enumerate((listed_id, unlisted_id))
    }
    listed = procs[listed_id]
    (inventory / f"{listed_id}.json").write_text(
        json.dumps(
            {
                "id": listed_id,
                "port": ports[0],
                "pid": listed.pid,
                "created_at": T0.isoformat(),
                "start_time": 0,
            }
        )
    )
    try:
        _, err = procs[unlisted_id].communicate(timeout=START_DEADLINE_S)
        assert b"not in the inventory" in err
        assert listed.poll() is None  # it has been checked many times by now: it stays
        (inventory / f"{listed_id}.json").unlink()
        _, err = listed.communicate(timeout=START_DEADLINE_S)
        assert b"not in the inventory" in err
        assert wait_for_no_processes(str(inventory)) == []
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_credentials_are_not_on_any_command_line(inventory: Path, prober: HttpProber) -> None:
    proxy = make_provider(inventory).create_proxy()
    assert wait_healthy(prober, proxy).ok  # by now proxy.py has forked its acceptor too
    pids = proxy_processes(proxy.id)
    assert len(pids) == 2
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in argv
        assert USER.encode() not in argv


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("local-0badc0de.json", "{not json"),
        ("local-0badc0de.json", "[]"),
        ("local-0badc0de.json", '{"id": "local-0badc0de"}'),
        ("local-0badc0de.json", None),  # a valid entry, but for another id than the file name
        ("local-0badc0de.json", "naive"),  # created_at without a time zone
        ("local-0badc0de.json", "boolport"),
    ],
)
def test_corrupt_inventory_raises_provider_error(
    inventory: Path, name: str, content: str | None
) -> None:
    provider = make_provider(inventory)
    good: dict[str, Any] = {
        "id": "local-0badc0de",
        "port": 8899,
        "pid": 1,
        "created_at": T0.isoformat(),
        "start_time": 0,
    }
    if content is None:
        content = json.dumps({**good, "id": "local-00000001"})
    elif content == "naive":
        content = json.dumps({**good, "created_at": "2024-05-01T12:00:00"})
    elif content == "boolport":
        content = json.dumps({**good, "port": True})
    (inventory / name).write_text(content)

    with pytest.raises(ProviderError, match="local-0badc0de"):
        provider.list_proxies()
    with pytest.raises(ProviderError):
        provider.delete_proxy("local-0badc0de")  # cannot tell which process it names: refuse


def test_a_valid_entry_parses(inventory: Path) -> None:
    # The control for the corrupt cases above: the same entry, intact, is listed.
    provider = make_provider(inventory)
    (inventory / "local-0badc0de.json").write_text(
        json.dumps(
            {
                "id": "local-0badc0de",
                "port": 8899,
                "pid": 1,
                "created_at": "2024-05-01T14:00:00+02:00",
                "start_time": 0,
            }
        )
    )
    [proxy] = provider.list_proxies()
    assert proxy == Proxy("local-0badc0de", T0, ip="127.0.0.1", port=8899)
    assert proxy.created_at.tzinfo == UTC


def test_a_missing_inventory_directory_holds_no_proxies_and_is_not_created(
    inventory: Path,
) -> None:
    # Listing is a read (`proxies`, a dry run): it must not create the directory. A process
    # whose inventory vanished stops by itself, so nothing is left unaccounted for.
    inventory.rmdir()
    provider = make_provider(inventory)
    assert provider.list_proxies() == []
    assert not inventory.exists()
    provider.create_proxy()
    assert len(provider.list_proxies()) == 1


def test_an_unreadable_inventory_is_an_error_not_an_empty_list(inventory: Path) -> None:
    provider = make_provider(inventory)
    inventory.rmdir()
    inventory.write_text("not a directory")
    with pytest.raises(ProviderError, match="cannot list"):
        provider.list_proxies()
    inventory.unlink()


def test_a_naive_clock_is_rejected(inventory: Path) -> None:
    # Naive on purpose: this test checks that the provider refuses a clock without a timezone.
    provider = make_provider(inventory, clock=lambda: datetime(2024, 5, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="aware"):
        provider.create_proxy()
    assert provider.list_proxies() == []


def test_ensure_firewall_is_a_no_op(inventory: Path) -> None:
    assert make_provider(inventory).ensure_firewall(None) is None
    assert make_provider(inventory).ensure_firewall("anything") is None
    assert list(inventory.iterdir()) == []
