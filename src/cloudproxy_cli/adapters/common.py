"""What every cloud adapter shares: the proxy settings it deploys, names, and bounded retries."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from cloudproxy_cli.core.errors import ProviderError

log = logging.getLogger("cloudproxy")

T = TypeVar("T")

# Every VM we create carries both marks; an adapter lists (and so can delete) only VMs that
# carry both, with the second naming its own instance.
TAG = "cloudproxy"


def instance_tag(instance: str) -> str:
    """``cloudproxy-<instance>``: the per-instance tag (DigitalOcean, Vultr, GCP network tag)."""
    return f"{TAG}-{instance}"


def firewall_name(instance: str) -> str:
    return f"cloudproxy-{instance}"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the user data deploys on each VM: tinyproxy on ``port`` with basic auth
    (``username``/``password``; both ``None`` only with ALLOW_OPEN_PROXY) and, with
    ONLY_HOST_IP, access limited to ``allowed_ip``. Validated before any adapter sees it."""

    port: int
    username: str | None
    password: str | None
    allowed_ip: str | None = None


MAX_MESSAGE = 200  # characters of an API's own error text kept in our one-line messages


def one_line(text: str, secrets: Iterable[str | None] = (), limit: int = MAX_MESSAGE) -> str:
    """``text`` as one short line with every secret replaced by ``***``.

    Secrets go before the cut: a secret cut in half would slip past the replacement.
    """
    line = " ".join(str(text).split())
    for secret in secrets:
        if secret:
            line = line.replace(secret, "***")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def utc_datetime(text: object) -> datetime:
    """An API's ISO 8601 timestamp as an aware UTC datetime (naive means UTC).

    Raises ``ValueError`` for anything that is not one."""
    when = datetime.fromisoformat(str(text))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


class HttpError(Exception):
    """An error answer of a REST API: its status, Retry-After and the API's own message."""

    def __init__(self, status: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class TransportError(Exception):
    """The API could not be reached or did not answer in time (no HTTP status)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def classify_http(exc: Exception) -> Retry | None:
    """429 and 5xx are worth retrying (after Retry-After); so is a transport error that could
    not have reached the server twice."""
    if isinstance(exc, HttpError) and (exc.status == 429 or exc.status >= 500):
        return Retry(exc.retry_after_s)
    if isinstance(exc, TransportError) and exc.retryable:
        return Retry()
    return None


@dataclass(frozen=True, slots=True)
class Retry:
    """A failure worth retrying; ``after_s`` is what the server asked for (Retry-After)."""

    after_s: float | None = None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    classify: Callable[[Exception], Retry | None],
    attempts: int = 4,
    base_delay_s: float = 0.5,
    max_delay_s: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry what ``classify`` says is transient (429, 5xx) after the server's
    Retry-After, or with exponential backoff without one, at most ``attempts`` times in all.
    A server that asks us to wait longer than ``max_delay_s`` is not waited for: the instance
    fails for this run and cron tries again next minute. Anything else raises at once."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            retry = classify(exc)
            if retry is None or attempt == attempts:
                raise
            if retry.after_s is not None:  # the server said when: do as it says
                if retry.after_s > max_delay_s:
                    raise
                delay = retry.after_s
            else:
                delay = min(base_delay_s * 2 ** (attempt - 1), max_delay_s)
            log.debug("%s: transient failure (%s); retry %d in %.1fs", what, exc, attempt, delay)
            sleep(delay)
    raise ProviderError(f"{what}: retries exhausted")  # pragma: no cover - loop always returns
