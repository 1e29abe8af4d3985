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
    # reconcile: every instance reconciled, but a rollout is stalled, an instance has fewer
    # healthy (plus booting) proxies than the effective minimum, or a spending cap
    # (MAX_SCALING, MAX_CREATES_PER_RUN) held back creates. Failure (1) and partial (3)
    # take precedence over it.
    DEGRADED = 6
    INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report 128 + SIGINT
    # `reconcile --dry-run --detailed-exitcode` with a non-empty plan, like `terraform plan`.
    CHANGES_PENDING = 2


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 failure, 2 usage error, 3 partial (some instance failed), "
    "4 configuration error, 5 another run holds the lock, "
    "6 degraded (a rollout stalled, too few healthy proxies, or a spending cap held back "
    "creates), 130 interrupted. "
    "With reconcile --dry-run --detailed-exitcode: 0 no changes, 2 changes pending."
)
