"""The fixed, documented exit codes of every cloudproxy command."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # everything asked was done
    FAILURE = 1  # nothing could be done (every instance failed, a provider call failed, ...)
    USAGE = 2  # bad command line: unknown option, invalid value, unknown instance or address
    PARTIAL = 3  # some instances failed, the others were reconciled
    CONFIG = 4  # invalid configuration (the message names the setting)
    LOCKED = 5  # another cloudproxy run holds the state lock
    DEGRADED = 6  # the run did what it could, but held back: a cap (MAX_SCALING, ...) was reached


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 failure, 2 usage error, 3 partial (some instance failed), "
    "4 configuration error, 5 another run holds the lock, 6 degraded (a cap such as "
    "MAX_CREATES_PER_RUN or MAX_SCALING held back creates)."
)
