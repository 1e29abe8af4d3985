"""Benchmark: probe 80 real local proxies plus 20 black-holed loopback ports in one round."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from types import FrameType

from cloudproxy_cli.adapters.health import HttpProber
from cloudproxy_cli.adapters.local import LocalProvider
from cloudproxy_cli.adapters.local_proxy import MODULE
from cloudproxy_cli.core.model import ProbeTarget, Proxy

READY_DEADLINE_S = 180.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxies", type=int, default=80)
    parser.add_argument("--black-holes", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="timed probe rounds")
    args = parser.parse_args()

    # SIGTERM or a closed terminal unwinds like Ctrl-C, so the cleanup below always runs.
    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # also when started with SIGINT ignored (`cmd &`)

    with tempfile.TemporaryDirectory(prefix="cloudproxy-bench-") as tmp, ExitStack() as stack:
        directory = Path(tmp) / "local" / "bench"
        password = secrets.token_urlsafe(12)
        provider = LocalProvider(
            instance="bench", directory=directory, username="bench", password=password
        )
        stack.callback(cleanup, provider, directory)
        prober = stack.enter_context(
            HttpProber(username="bench", password=password, timeout_s=args.timeout)
        )
        holes = [
            stack.enter_context(black_hole()).getsockname()[1] for _ in range(args.black_holes)
        ]
        mem_before = mem_available_kib()

        start = time.monotonic()
        proxies = [provider.create_proxy() for _ in range(args.proxies)]
        created_s = time.monotonic() - start
        print(f"created {len(proxies)} proxy processes in {created_s:.2f}s")
        ready_s = wait_all_healthy(prober, proxies)
        print(
            f"all {len(proxies)} answering {ready_s:.2f}s after the last create "
            f"({created_s + ready_s:.2f}s after the first)"
        )
        report_memory(directory, len(proxies), mem_before)

        targets = [ProbeTarget(p.id, "127.0.0.1", port_of(p)) for p in proxies]
        targets += [ProbeTarget(f"hole-{i}", "127.0.0.1", port) for i, port in enumerate(holes)]
        for round_no in range(1, args.rounds + 1):
            start = time.monotonic()
            results = prober.probe(targets)
            wall = time.monotonic() - start
            healthy = sum(r.ok for r in results.values())
            good_s = [r.elapsed_s for pid, r in results.items() if r.ok]
            slowest_good = max(good_s, default=0.0)
            print(
                f"round {round_no}: {len(targets)} probes in {wall:.2f}s wall, "
                f"{healthy} healthy (expected {len(proxies)}), "
                f"slowest healthy probe {slowest_good:.3f}s, "
                f"black holes: {sorted({results[f'hole-{i}'].detail for i in range(len(holes))})}"
            )
    return 0


def black_hole() -> socket.socket:
    """A loopback port that completes the TCP handshake and then never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def port_of(proxy: Proxy) -> int:
    assert proxy.port is not None
    return proxy.port


def wait_all_healthy(prober: HttpProber, proxies: list[Proxy]) -> float:
    start = time.monotonic()
    waiting = {p.id: ProbeTarget(p.id, "127.0.0.1", port_of(p)) for p in proxies}
    while waiting:
        if time.monotonic() - start > READY_DEADLINE_S:
            raise RuntimeError(f"{len(waiting)} proxies never answered")
        results = prober.probe(list(waiting.values()))
        waiting = {pid: t for pid, t in waiting.items() if not results[pid].ok}
        if waiting:
            time.sleep(0.1)
    return time.monotonic() - start


def our_processes(directory: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if MODULE.encode() in argv and str(directory).encode() in argv:
                pids.append(int(entry.name))
    return pids


def rollup_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def report_memory(directory: Path, count: int, mem_before: int) -> None:
    pids = our_processes(directory)
    rss = [rollup_kib(pid, "Rss") for pid in pids]
    pss = [rollup_kib(pid, "Pss") for pid in pids]
    used = mem_before - mem_available_kib()
    print(
        f"{len(pids)} processes ({len(pids) / count:.0f} per proxy: proxy.py main + acceptor); "
        f"per process RSS median {statistics.median(rss) / 1024:.1f} MiB "
        f"(max {max(rss) / 1024:.1f}), PSS median {statistics.median(pss) / 1024:.1f} MiB; "
        f"per proxy PSS {sum(pss) / count / 1024:.1f} MiB; "
        f"MemAvailable dropped {used / 1024:.0f} MiB ({used / count / 1024:.1f} MiB per proxy)"
    )


def cleanup(provider: LocalProvider, directory: Path) -> None:
    start = time.monotonic()
    proxies = []
    try:
        proxies = provider.list_proxies()
        for proxy in proxies:
            provider.delete_proxy(proxy.id)
    finally:
        # Last resort, e.g. after Ctrl-C between a process start and its inventory entry.
        left = our_processes(directory)
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(
            f"deleted {len(proxies)} proxies in {time.monotonic() - start:.2f}s; "
            f"{len(left)} leftover processes killed",
            file=sys.stderr if left else sys.stdout,
        )


if __name__ == "__main__":
    sys.exit(main())
