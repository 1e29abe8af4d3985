"""Refuses socket traffic to any address but loopback, before a packet can leave."""

# Standard library only: tests/support/subprocess_hooks/sitecustomize.py loads this file by path
# into every Python subprocess the tests start, before anything else is imported.

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Set (to a directory) by tests/conftest.py: subprocesses install the guard and write each
# refused address there, so a refusal that the code under test swallowed still fails the run.
VIOLATIONS_DIR_ENV = "CLOUDPROXY_TEST_LOOPBACK_GUARD_DIR"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

# The real functions, looked up at call time (tests swap in recorders to prove none is reached).
REAL: dict[str, Callable[..., Any]] = {}
violations: list[str] = []


class NonLoopbackTrafficError(RuntimeError):
    """A test tried to reach an address outside 127.0.0.0/8 and ::1 (not an OSError on purpose:
    code that handles network errors must not swallow it)."""


def is_loopback_host(host: object) -> bool:
    """True for loopback literals and the localhost names; False for anything else."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.split("%", 1)[0].strip("[]")
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False  # a name other than localhost would need DNS: never in tests
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check(family: int, address: object) -> None:
    """Raise NonLoopbackTrafficError unless ``address`` is loopback (or not an IP address)."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets, netlink: never leave the machine
    host = address[0] if isinstance(address, tuple) and address else address
    if not is_loopback_host(host):
        refuse(f"{host!r} (family {family})")


def refuse(what: str) -> None:
    message = f"tests may only talk to loopback, refused a connection to {what}"
    violations.append(message)
    directory = os.environ.get(VIOLATIONS_DIR_ENV)
    if directory and Path(directory).is_dir():
        with (Path(directory) / f"{os.getpid()}.txt").open("a") as f:
            f.write(message + "\n")
    raise NonLoopbackTrafficError(message)


def _connect(self: socket.socket, address: Any) -> None:
    check(self.family, address)
    REAL["connect"](self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    check(self.family, address)
    result: int = REAL["connect_ex"](self, address)
    return result


def _sendto(self: socket.socket, data: Any, *args: Any) -> int:
    if args:  # sendto(data, address) or sendto(data, flags, address)
        check(self.family, args[-1])
    sent: int = REAL["sendto"](self, data, *args)
    return sent


def _sendmsg(self: socket.socket, *args: Any) -> int:
    if len(args) >= 4 and args[3] is not None:  # sendmsg(buffers, ancdata, flags, address)
        check(self.family, args[3])
    sent: int = REAL["sendmsg"](self, *args)
    return sent


def _create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
    # Checked before getaddrinfo: a non-loopback name is refused without a DNS query.
    if not is_loopback_host(address[0]):
        refuse(repr(address[0]))
    sock: socket.socket = REAL["create_connection"](address, *args, **kwargs)
    return sock


_METHODS: dict[str, Callable[..., Any]] = {
    "connect": _connect,
    "connect_ex": _connect_ex,
    "sendto": _sendto,
    "sendmsg": _sendmsg,
}


def install() -> None:
    """Guard socket.socket and socket.create_connection in this process (idempotent)."""
    if REAL:
        return
    for name, guarded in _METHODS.items():
        REAL[name] = getattr(socket.socket, name)
        setattr(socket.socket, name, guarded)
    REAL["create_connection"] = socket.create_connection
    socket.create_connection = _create_connection  # type: ignore[assignment]


def uninstall() -> None:
    for name in _METHODS:
        setattr(socket.socket, name, REAL.pop(name))
    socket.create_connection = REAL.pop("create_connection")


def installed() -> bool:
    return socket.socket.connect is _connect
