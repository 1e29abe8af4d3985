"""The fuzz suite's reliability log: per fault class, how many cases ran and how each ended.

Set ``CLOUDPROXY_RELIABILITY_LOG=/path/to/log.jsonl`` to collect it; when unset nothing is
written. Each fuzz test takes the ``reliability`` fixture and calls
``reliability.record(fault_class, outcome)`` once per Hypothesis example (outcomes are short
words such as ``loaded``, ``config-error``, ``exit-2``, ``recovered``, ``refused``). At the
end of the test one JSON line per (fault class, outcome) is appended::

    {"suite": "fuzz", "test": "tests/fuzz/test_fuzz_state.py::test_x",
     "fault_class": "state/truncated", "outcome": "recovered", "cases": 41}

Lines are appended with one ``write`` each, so parallel xdist workers can share the file.
scripts/reliability_table sums ``cases`` by suite, fault class and outcome.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fuzz.support import Reliability

LOG_ENV = "CLOUDPROXY_RELIABILITY_LOG"


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[Reliability]:
    recorder = Reliability()
    yield recorder
    # Every fuzz test runs at least one case: an empty log means the recording is broken.
    assert recorder.counts, "a fuzz test recorded no cases"
    path = os.environ.get(LOG_ENV, "").strip()
    if path:
        with open(path, "a", encoding="utf-8") as out:
            for line in recorder.lines(request.node.nodeid):
                out.write(line + "\n")
