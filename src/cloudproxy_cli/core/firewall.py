"""When an instance's firewall is verified: each run that creates, else at least hourly."""

from __future__ import annotations

from datetime import datetime, timedelta

# A firewall deleted or changed in a console is noticed within this long even when the pool
# needs nothing new; a run that creates proxies always verifies it first.
CHECK_INTERVAL = timedelta(hours=1)


def firewall_check_due(
    checked_at: datetime | None,
    *,
    now: datetime,
    creating: bool,
    interval: timedelta = CHECK_INTERVAL,
) -> bool:
    """Whether this run must verify (and repair) the firewall.

    Always when it creates proxies (they must be behind the right rules from their first
    boot); otherwise when it was never checked or last checked ``interval`` ago or more. A
    ``checked_at`` in the future (a clock set back) is not trusted: the check is due.
    """
    if creating or checked_at is None:
        return True
    return not checked_at <= now < checked_at + interval
