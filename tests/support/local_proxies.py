"""Test helpers for real proxy processes: stop them all and prove that none outlives a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cloudproxy_cli.adapters.local import LocalProvider
from cloudproxy_cli.adapters.local_proxy import MODULE
from cloudproxy_cli.core.errors import ProviderError
from tests.support.cli import Cli

# Generous: the processes normally go in milliseconds, but CI machines can be slow.
STOP_DEADLINE_S = 10.0
START_DEADLINE_S = 30.0


def proxy_processes(marker: str, module: str = MODULE) -> list[int]:
    """Live (non-zombie) processes of ``module`` whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        # A zombie's cmdline is empty, so it never matches: it has exited already.
        if module.encode() in argv and marker.encode() in argv:
            pids.append(int(entry.name))
    return pids


def wait_for_no_processes(marker: str, module: str = MODULE) -> list[int]:
    """Poll until no such process is left; return those still there at the deadline."""
    deadline = time.monotonic() + STOP_DEADLINE_S
    while (left := proxy_processes(marker, module)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def stop_local_proxies(directory: Path) -> None:
    """Delete every proxy of the inventory ``directory`` and assert that no process remains.

    Processes that survive anyway (or that no readable inventory entry names) are killed as a
    last resort, so a failing test still leaves the machine clean, and the assertion fails.
    """
    provider = LocalProvider(instance="cleanup", directory=directory, username=None, password=None)
    errors = []
    for path in sorted(directory.glob("local-*.json")):
        try:
            provider.delete_proxy(path.stem)
        except ProviderError as err:  # e.g. an entry a test corrupted on purpose
            errors.append(str(err))
    left = wait_for_no_processes(str(directory.absolute()))  # as the provider passes it
    for pid in left:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"proxy processes outlived the test: {left} (errors: {errors})"


@contextmanager
def local_sandbox(root: Path, **env: str) -> Iterator[Cli]:
    """A CLI sandbox whose local proxies are all stopped on exit."""
    sandbox = Cli.make(root, **env)
    try:
        yield sandbox
    finally:
        for inventory in sorted(sandbox.local_dir.glob("*")):
            stop_local_proxies(inventory)


@contextmanager
def local_proxies_cleaned_up(directory: Path) -> Iterator[Path]:
    """``directory`` for a LocalProvider; on exit, no proxy process of it may remain."""
    try:
        yield directory
    finally:
        stop_local_proxies(directory)


@contextmanager
def proxy_py_server(
    workdir: Path, *, username: str, password: str, host: str = "127.0.0.1", port: int = 0
) -> Iterator[int]:
    """A plain proxy.py process with basic auth on ``host`` (a loopback address) and ``port``
    (0: any free one); yields its port.

    Independent of LocalProvider, so the prober's tests do not rest on the provider's code.
    Credentials on the command line are fine here: they are throwaway test values.
    """
    port_file = workdir / "proxy.port"
    argv = [
        *(sys.executable, "-m", "proxy", "--hostname", host, "--port", str(port)),
        *("--port-file", str(port_file), "--basic-auth", f"{username}:{password}"),
        *("--num-acceptors", "1", "--log-level", "WARNING"),
        *("--data-dir", str(workdir / "proxypy"), "--cache-dir", str(workdir / "cache")),
    ]
    log = (workdir / "proxy.log").open("wb")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=workdir,
    )
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        # proxy.py writes the port file once it listens; a newline ends a complete write.
        while not (text := port_file.read_text() if port_file.exists() else "").endswith("\n"):
            assert proc.poll() is None, f"proxy.py exited: {(workdir / 'proxy.log').read_text()}"
            assert time.monotonic() < deadline, "proxy.py did not start"
            time.sleep(0.01)
        yield int(text.split()[0])
    finally:
        # The whole group: proxy.py forks an acceptor process. The leader is not reaped yet,
        # so the group id cannot have been reused.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_DEADLINE_S)
        log.close()
        assert not wait_for_no_processes(str(port_file), module="proxy")
