"""A subprocess for tests/test_state_file.py: holds the state lock, or saves states in a loop.

Usage:
    state_file_worker.py hold PATH            take the lock, print "locked", hold it until stdin
                                              closes (or the process is killed)
    state_file_worker.py churn PATH RECORDS   forever: save a state of RECORDS records (under the
                                              lock) whose generation number is its batch_size,
                                              then print "saved <generation>"
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloudproxy_cli.adapters.state_file import StateFile
from cloudproxy_cli.core.state import InstanceState, ProxyRecord, RollingOverrides, State


def big_state(records: int) -> State:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    recs = {
        f"proxy-{i:06d}": ProxyRecord(
            proxy_id=f"proxy-{i:06d}",
            first_seen_at=base + timedelta(seconds=i),
            established=i % 2 == 0,
            consecutive_failures=i % 5,
            last_healthy_at=base + timedelta(seconds=2 * i),
        )
        for i in range(records)
    }
    return State(instances={"do/default": InstanceState(records=recs)})


def hold(path: Path) -> None:
    with StateFile(path).lock():
        print("locked", flush=True)
        sys.stdin.read()  # the test closes our stdin to let go


def churn(path: Path, records: int) -> None:
    state_file = StateFile(path)
    # Built once: the loop should spend its time in save(), where a kill is interesting.
    base = big_state(records)
    generation = 0
    while True:
        generation += 1
        with state_file.lock():
            state_file.save(base._replace(overrides=RollingOverrides(batch_size=generation)))
        print(f"saved {generation}", flush=True)


def main(argv: list[str]) -> int:
    match argv:
        case ["hold", path]:
            hold(Path(path))
        case ["churn", path, records]:
            churn(Path(path), int(records))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
