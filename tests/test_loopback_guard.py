"""The suite's loopback guard refuses other addresses before any packet is sent."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support import loopback_guard
from tests.support.cli import run_python
from tests.support.loopback_guard import NonLoopbackTrafficError

# TEST-NET-1 (RFC 5737) and a private address: never reached, the recorders below prove it.
OUTSIDE = ["192.0.2.1", "10.0.0.1", "2001:db8::1", "example.com"]


@pytest.fixture
def real_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Replaces the real socket calls behind the guard with recorders: nothing leaves the host."""
    calls: list[tuple[str, Any]] = []
    assert loopback_guard.installed(), "the session guard is not installed"
    for name in ("connect", "connect_ex", "sendto", "create_connection"):

        def record(*args: Any, _name: str = name, **_: Any) -> int:
            calls.append((_name, args))
            return 0

        monkeypatch.setitem(loopback_guard.REAL, name, record)
    # The guard's own bookkeeping for these deliberate refusals is not a session failure.
    monkeypatch.setattr(loopback_guard, "violations", [])
    monkeypatch.delenv(loopback_guard.VIOLATIONS_DIR_ENV)
    return calls


@pytest.mark.parametrize("host", OUTSIDE)
def test_connect_outside_loopback_raises_before_the_real_connect(
    host: str, real_calls: list[tuple[str, Any]]
) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        with pytest.raises(NonLoopbackTrafficError, match="only talk to loopback"):
            s.connect((host, 80))
        with pytest.raises(NonLoopbackTrafficError):
            s.connect_ex((host, 80))
    with socket.socket(family, socket.SOCK_DGRAM) as u, pytest.raises(NonLoopbackTrafficError):
        u.sendto(b"x", (host, 53))
    with pytest.raises(NonLoopbackTrafficError):
        socket.create_connection((host, 80), timeout=1)
    assert real_calls == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_reaches_the_real_calls(host: str, real_calls: list[tuple[str, Any]]) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.connect((host, 80))
    socket.create_connection((host, 80))
    assert [name for name, _ in real_calls] == ["connect", "create_connection"]


def test_unix_sockets_are_allowed(tmp_path: Path) -> None:
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen(1)
        client.connect(path)
        assert client.getpeername() == path


def test_a_real_loopback_connection_still_works() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()[:2], timeout=5) as client,
    ):
        conn, _ = server.accept()
        with conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"


def test_python_subprocesses_get_the_guard_too(tmp_path: Path) -> None:
    # The child swaps the real connect for a stub first, and exits 3 if it has no guard at all:
    # whatever happens, it never sends a packet to 192.0.2.1.
    child = textwrap.dedent(
        """
        import socket, sys
        guard = sys.modules.get("_cloudproxy_loopback_guard")
        if guard is None or not guard.installed():
            sys.exit(3)
        guard.REAL["connect"] = lambda *a: sys.exit(4)
        try:
            socket.socket().connect(("192.0.2.1", 80))
        except guard.NonLoopbackTrafficError as e:
            print(e)
            sys.exit(0)
        sys.exit(5)
        """
    )
    env = {**os.environ, loopback_guard.VIOLATIONS_DIR_ENV: str(tmp_path)}
    done = run_python(child, env=env)
    assert done.returncode == 0, done.stderr
    assert "refused a connection to '192.0.2.1'" in done.stdout
    [record] = tmp_path.glob("*.txt")  # the refusal is recorded for the session check
    assert "192.0.2.1" in record.read_text()
