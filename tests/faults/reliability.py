"""One JSON line per fault case in ``$CLOUDPROXY_RELIABILITY_LOG``, for docs/reliability.md."""

from __future__ import annotations

import json
import os
from typing import Literal

LOG_ENV = "CLOUDPROXY_RELIABILITY_LOG"

# recovered: the fleet converged and every invariant held; refused: the run stopped with a
# clean error (nothing lost, nothing unaccounted), then the fleet converged once the fault went.
Outcome = Literal["recovered", "refused cleanly, then recovered", "failed"]


def record(suite: str, fault_class: str, outcome: Outcome, **detail: str | int) -> None:
    """Append one case; a no-op unless the log is asked for. One ``write`` of one line with
    O_APPEND, so the lines of parallel test workers never interleave."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = json.dumps({"suite": suite, "fault_class": fault_class, "outcome": outcome, **detail})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
