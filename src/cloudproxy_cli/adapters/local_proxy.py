"""Entry point of one local proxy process: wait out the boot delay, then run proxy.py."""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

MODULE = "cloudproxy_cli.adapters.local_proxy"
# Credentials travel in the environment, never in argv, where `ps` would show them.
USERNAME_ENV = "CLOUDPROXY_LOCAL_PROXY_USERNAME"
PASSWORD_ENV = "CLOUDPROXY_LOCAL_PROXY_PASSWORD"  # noqa: S105 - a variable name

_PR_SET_PDEATHSIG = 1
# How long the creator has to record a new process in the inventory, and how often the process
# looks: a process the inventory does not list (its creator was killed between starting it and
# recording it, or the entry was removed) could never be deleted, so it stops by itself.
ORPHAN_GRACE_S = 10.0
CHECK_INTERVAL_S = 2.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    # --id and --state-dir name this process's inventory entry; being in /proc/<pid>/cmdline,
    # they are also how the provider (and the tests) recognise its processes.
    parser.add_argument("--id", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--boot-delay", type=float, default=0.0)
    parser.add_argument(
        "--reserved-fd",
        type=int,
        default=None,
        help="a socket bound (not listening) to the port, held until proxy.py binds it itself",
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--orphan-grace", type=float, default=ORPHAN_GRACE_S)
    parser.add_argument("--check-interval", type=float, default=CHECK_INTERVAL_S)
    return parser.parse_args(argv)


def _die_with(leader: int) -> None:
    """Runs in each child proxy.py forks: die when ``leader`` (this process) dies, even by SIGKILL.

    Without it, SIGKILL of this process would orphan proxy.py's acceptor process, which holds
    the listening socket and would keep serving forever.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The leader may have died between fork and prctl; then the signal will never come.
    if os.getppid() != leader:
        os._exit(1)


def _on_stop_signal(_signum: int, _frame: FrameType | None) -> None:
    _exit_now()


def _exit_now() -> NoReturn:
    # proxy.py's own handler joins its acceptor, which polls a flag once a second; killing the
    # acceptor directly makes delete_proxy take milliseconds instead of up to a second.
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=2.0)
    os._exit(0)


def _handle_stop_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_stop_signal)


def _proxy_opts(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """proxy.py flags: one acceptor with its executor thread in the same process, no plugins."""
    data_dir = args.state_dir / "proxypy"
    input_args = [
        "--hostname",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--num-acceptors",
        "1",
        "--num-workers",
        "1",
        "--threadless",
        "--local-executor",
        "1",
        "--log-level",
        args.log_level,
        # proxy.py creates these directories on start; keep them out of ~/.proxy.
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(data_dir / "cache"),
    ]
    opts: dict[str, Any] = {}
    username = os.environ.pop(USERNAME_ENV, None)
    password = os.environ.pop(PASSWORD_ENV, None)
    if username is not None and password is not None:
        opts["basic_auth"] = f"{username}:{password}"
    return input_args, opts


def _listed(args: argparse.Namespace) -> bool:
    """Whether the inventory still records this very process."""
    path = args.state_dir / f"{args.id}.json"
    try:
        return bool(json.loads(path.read_text(encoding="utf-8"))["pid"] == os.getpid())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _wait_while_listed(args: argparse.Namespace, started: float, seconds: float) -> None:
    """Wait ``seconds`` (may be infinite); exit early once the inventory stops listing us."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, args.check_interval))
        if time.monotonic() - started >= args.orphan_grace and not _listed(args):
            print(f"{args.id}: not in the inventory {args.state_dir}: exiting", file=sys.stderr)
            _exit_now()


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = _parse_args(argv)
    input_args, opts = _proxy_opts(args)
    reserved = None if args.reserved_fd is None else socket.socket(fileno=args.reserved_fd)
    # The simulated VM boot: the port refuses connections until it is over.
    _wait_while_listed(args, started, args.boot_delay)

    # Imported late: the import is most of the start-up cost and is useless during the delay.
    import proxy

    # Children share this cmdline, which is what makes them recognisable as ours; fork keeps it.
    multiprocessing.set_start_method("fork", force=True)
    leader = os.getpid()
    os.register_at_fork(after_in_child=lambda: _die_with(leader))
    server = proxy.Proxy(input_args, **opts)
    _handle_stop_signals()
    if reserved is not None:
        reserved.close()  # proxy.py binds the port itself (with SO_REUSEADDR) right away
    server.setup()
    # setup() installed proxy.py's handlers, whose exit waits up to a second for the acceptor.
    _handle_stop_signals()
    _wait_while_listed(args, started, math.inf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
