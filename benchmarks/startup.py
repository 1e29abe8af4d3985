"""Benchmark: start-up of `cloudproxy rolling status` against `import typer, rich.table`."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloudproxy_cli.core.state import InstanceSnapshot, InstanceState, State, encode_state

BASELINE = "import typer, rich.table"
# For reference only (not gated): the baseline exiting as cloudproxy does (cli.app.main freezes
# the garbage collector before exit, which skips the final collections over every object the
# imports made). The gated ratio includes that saving; this one shows the ratio without it.
BASELINE_FROZEN = "import typer, rich.table, gc; gc.freeze()"
# For reference only (not gated): the least any Typer app pays to run one command.
TYPER_APP = """
import typer, rich.table
app = typer.Typer()
@app.command()
def status(json: bool = False, provider: str | None = None) -> None: ...
@app.command()
def other() -> None: ...
app()
"""
# Measured 2026-12 (CPU, interleaved): Typer 0.29 coerces parameters through pydantic
# TypeAdapters, so that 2-option app cost 1.9x the baseline under 0.29 and 0.8x under 0.28
# (pinned <0.29); pydantic settings models cost another ~100 ms (import, schema building,
# plugin scan), so config.py validates with the standard library.
LABELS = {
    "status": "cloudproxy rolling status",
    "baseline": BASELINE.removeprefix("import "),
    "baseline_frozen": "(the same, exiting frozen)",
    "typer_app": "(a 2-option Typer command)",
}


def write_state(path: Path) -> None:
    """A small state file as a few runs of a three-proxy local fleet would leave it."""
    now = datetime.now(UTC)
    snap = InstanceSnapshot(
        last_update=now - timedelta(seconds=30),
        healthy_ips=("127.0.0.1:40001", "127.0.0.1:40002", "127.0.0.1:40003"),
        effective_min_available=2,
        min_scaling=3,
    )
    state = State(instances={"local/default": InstanceState(snapshot=snap)})
    path.write_text(json.dumps(encode_state(state)), encoding="utf-8")


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time of one run (CPU time varies less on a busy machine)."""
    cpu, start = cpu_of_children(), time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed, cpu_of_children() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (interleaved)")
    parser.add_argument("--max-ratio", type=float, default=1.5, help="fail above this ratio")
    args = parser.parse_args()

    exe = shutil.which("cloudproxy", path=str(Path(sys.executable).parent)) or "cloudproxy"
    with tempfile.TemporaryDirectory(prefix="cloudproxy-startup-") as tmp:
        state_file = Path(tmp) / "state.json"
        write_state(state_file)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CLOUDPROXY_", "ROLLING_"))
            and not k.endswith(("_ENABLED", "_MIN_SCALING"))
        }
        # The local provider only: no cloud settings, no config file from the caller.
        env |= {"LOCAL_ENABLED": "True", "HOME": tmp, "XDG_CONFIG_HOME": tmp}
        # Bytecode for every module, as `pip install` leaves it: with PYTHONDONTWRITEBYTECODE
        # (set on some machines) an editable checkout would compile its sources on every run.
        # The warm-up run below writes it here, for both commands alike.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        status = [exe, "--state-file", str(state_file), "rolling", "status"]
        commands = {
            "status": status,
            "baseline": [sys.executable, "-c", BASELINE],
            "baseline_frozen": [sys.executable, "-c", BASELINE_FROZEN],
            "typer_app": [sys.executable, "-c", TYPER_APP, "status"],
        }
        for argv in commands.values():
            timed(argv, env)  # warm the page cache and .pyc files before timing
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                runs[name].append(timed(argv, env))

    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    best = {k: min(w for w, _ in v) for k, v in runs.items()}
    for name, label in LABELS.items():
        print(
            f"{label:26} median wall {wall[name] * 1000:4.0f} ms (best {best[name] * 1000:4.0f}), "
            f"cpu {cpu[name] * 1000:4.0f} ms over {args.runs} runs"
        )
    ratio = wall["status"] / wall["baseline"]
    cpu_ratio = cpu["status"] / cpu["baseline"]
    best_ratio = best["status"] / best["baseline"]
    frozen_ratio = wall["status"] / wall["baseline_frozen"]
    print(
        f"ratio (median wall): {ratio:.2f} (max {args.max_ratio}); "
        f"best wall: {best_ratio:.2f}; median cpu: {cpu_ratio:.2f}; "
        f"against the baseline exiting frozen: {frozen_ratio:.2f}"
    )
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
