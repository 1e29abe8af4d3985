"""What every cloud adapter shares: marks and names, the call envelope, pages, guarded deletes."""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import secrets as _secrets
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from cloudproxy_cli.core.errors import ProviderError, RateLimitedError

log = logging.getLogger("cloudproxy")

T = TypeVar("T")
V = TypeVar("V")
C = TypeVar("C", bound=Hashable)

# --- marks and names ---------------------------------------------------------------------

# Every VM we create carries both marks; an adapter lists (and so can delete) only VMs that
# carry both, with the second naming its own instance.
TAG = "cloudproxy"
# The key of the second mark where marks are key=value (AWS tags, GCP and Hetzner labels).
INSTANCE_KEY = "cloudproxy-instance"
OPEN_IPV4 = "0.0.0.0/0"
OPEN_IPV6 = "::/0"
_NAME_SUFFIX_LEN = 8  # hex characters of randomness in a VM name


def instance_tag(instance: str) -> str:
    """``cloudproxy-<instance>``: the per-instance tag (DigitalOcean, Vultr, GCP network tag)."""
    return f"{TAG}-{instance}"


def firewall_name(instance: str) -> str:
    return instance_tag(instance)


def vm_name(instance: str, *, max_len: int | None = None) -> str:
    """``cloudproxy-<instance>-<8 hex>``, its instance part cut so it fits ``max_len``."""
    base = instance_tag(instance)
    if max_len is not None:
        base = base[: max_len - _NAME_SUFFIX_LEN - 1]
    return f"{base}-{_secrets.token_hex(_NAME_SUFFIX_LEN // 2)}"


def instance_labels(instance: str) -> dict[str, str]:
    """The key=value marks of a VM of ``instance``."""
    return {TAG: "true", INSTANCE_KEY: instance}


def owns_tags(tags: object, instance: str) -> bool:
    """Whether a plain tag list (DigitalOcean, Vultr) marks a VM of ``instance``."""
    return isinstance(tags, list) and TAG in tags and instance_tag(instance) in tags


def owns_labels(
    labels: Mapping[str, str] | None, instance: str, *, tag_value: str | None = None
) -> bool:
    """Whether key=value marks name ``instance`` (and ``TAG`` is ``tag_value`` if given)."""
    if not labels or TAG not in labels or labels.get(INSTANCE_KEY) != instance:
        return False
    return tag_value is None or labels.get(TAG) == tag_value


def allowed_cidrs(allowed_ip: str | None) -> tuple[str, ...]:
    """Who may reach the proxy port, the same for every provider: with ONLY_HOST_IP the one
    address ``allowed_ip`` (``/32``, or ``/128`` for an IPv6 one), else every IPv4 address.

    IPv6 is never opened to everyone: cloudproxy reports, probes and hands out only each VM's
    IPv4 address, so an open IPv6 rule would only expose the port on an address no client is
    told about (Hetzner gives every server one)."""
    if allowed_ip is None:
        return (OPEN_IPV4,)
    address = ipaddress.ip_address(allowed_ip)
    return (f"{address}/{address.max_prefixlen}",)


def canonical_cidr(text: object) -> str | None:
    """A CIDR as ``ipaddress`` writes it (a bare address is its /32 or /128); ``None`` if it
    is not one, so that a rule we cannot read counts as stale, never as ours."""
    try:
        return str(ipaddress.ip_network(str(text).strip(), strict=False))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """One thing a firewall lets in: ``protocol`` on ports ``low``..``high`` from ``cidr``."""

    protocol: str
    low: int
    high: int
    cidr: str


@dataclass(frozen=True, slots=True)
class FirewallRules:
    """What every firewall of ours must let in, and nothing more: TCP ``port`` from
    ``sources`` (``allowed_cidrs``). Adapters read their firewall's inbound rules as grants and
    repair it when they differ from ``grants``."""

    port: int
    sources: tuple[str, ...]

    @classmethod
    def for_proxy(cls, proxy: ProxySettings) -> FirewallRules:
        return cls(proxy.port, allowed_cidrs(proxy.allowed_ip))

    @property
    def grants(self) -> frozenset[Grant]:
        return frozenset(Grant("tcp", self.port, self.port, cidr) for cidr in self.sources)

    def holds(self, present: Iterable[Grant]) -> bool:
        """Whether ``present`` is exactly what we want (no grant missing, none stale)."""
        return frozenset(present) == self.grants


def port_range(text: object) -> tuple[int, int] | None:
    """``"8899"`` or ``"8000-9000"`` as (low, high); ``None`` for anything else."""
    low, _, high = str(text).strip().partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        return None
    return int(low), int(high or low)


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
MAX_ERROR = 1000  # characters of a whole error message (ours around the API's)


def one_line(text: str, secrets: Iterable[str | None] = (), limit: int = MAX_MESSAGE) -> str:
    """``text`` as one short line with every secret replaced by ``***``.

    Secrets go before the cut: a secret cut in half would slip past the replacement. A secret
    spanning lines (a PEM key) is matched in its one-line form, as the text is.
    """
    line = " ".join(str(text).split())
    for secret in secrets:
        if secret:
            line = line.replace(" ".join(secret.split()), "***")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def utc_datetime(text: object) -> datetime:
    """An API's ISO 8601 timestamp as an aware UTC datetime (naive means UTC).

    Raises ``ValueError`` for anything that is not one."""
    when = datetime.fromisoformat(str(text))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


class HttpError(Exception):
    """An error answer of a REST API: its status, the wait it asked for (and the header that
    asked: ``wait_source``) and the API's own message."""

    def __init__(
        self,
        status: int,
        message: str,
        retry_after_s: float | None,
        wait_source: str = "Retry-After",
    ) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s
        self.wait_source = wait_source


class TransportError(Exception):
    """The API could not be reached or did not answer in time (no HTTP status)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def classify_http(exc: Exception) -> Retry | None:
    """429 and 5xx are worth retrying (after Retry-After); so is a transport error that could
    not have reached the server twice."""
    if isinstance(exc, HttpError) and (exc.status == 429 or exc.status >= 500):
        return Retry(exc.retry_after_s, rate_limited=exc.status == 429, source=exc.wait_source)
    if isinstance(exc, TransportError) and exc.retryable:
        return Retry()
    return None


@dataclass(frozen=True, slots=True)
class Retry:
    """A failure worth retrying; ``after_s`` is what the server asked for (Retry-After), and
    ``source`` the header that said so; ``rate_limited``: the API refused for our rate."""

    after_s: float | None = None
    rate_limited: bool = False
    source: str = "Retry-After"


def rate_limit_wait(
    headers: Mapping[str, str], *, now: datetime | None = None
) -> tuple[float | None, str]:
    """How long a 429's headers ask us to wait, and which header said so: ``Retry-After``,
    else DigitalOcean's ``ratelimit-reset`` (epoch seconds) when ``ratelimit-remaining`` is 0."""
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    if retry_after is not None:
        return retry_after, "Retry-After"
    reset = (headers.get("ratelimit-reset") or "").strip()
    if reset.isdigit() and (headers.get("ratelimit-remaining") or "0").strip() == "0":
        current = (now or datetime.now(UTC)).timestamp()
        return max(0.0, int(reset) - current), "DigitalOcean ratelimit-reset"
    return None, "Retry-After"


def _until(after_s: float) -> str:
    """``HH:MM:SSZ``, ``after_s`` from now (UTC)."""
    return (datetime.now(UTC) + timedelta(seconds=after_s)).strftime("%H:%M:%SZ")


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
    secrets: Iterable[str | None] = (),
) -> T:
    """Call ``fn``; retry what ``classify`` says is transient (429, 5xx) after the server's
    Retry-After, or with exponential backoff without one, at most ``attempts`` times in all.
    A server that asks us to wait longer than ``max_delay_s`` is not waited for, and one still
    refusing for our rate at the last attempt is not tried again: either is a
    ``RateLimitedError`` (the instance makes no more calls this run; cron tries again next
    minute). Anything else raises at once. ``secrets`` are scrubbed from what this logs."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            retry = classify(exc)
            if retry is None:
                raise
            if retry.after_s is not None and retry.after_s > max_delay_s:
                raise _backed_off(what, retry) from None
            if attempt == attempts:
                if retry.rate_limited:
                    raise RateLimitedError(
                        f"{what}: rate limited (still refused after {attempts} attempts)"
                    ) from None
                raise
            delay = retry.after_s  # the server said when: do as it says
            if delay is None:
                delay = min(base_delay_s * 2 ** (attempt - 1), max_delay_s)
            shown = one_line(str(exc), secrets)
            log.debug("%s: transient failure (%s); retry %d in %.1fs", what, shown, attempt, delay)
            sleep(delay)
    raise ProviderError(f"{what}: retries exhausted")  # pragma: no cover - loop always returns


def _backed_off(what: str, retry: Retry) -> RateLimitedError:
    assert retry.after_s is not None
    until = _until(retry.after_s)
    if retry.rate_limited:
        return RateLimitedError(f"{what}: rate limited until {until} ({retry.source})")
    return RateLimitedError(f"{what}: the API asks to wait until {until} ({retry.source})")


# --- the call envelope -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """One instance's way of calling its API: bounded retries, and every failure a one-line
    ``ProviderError`` that starts with ``<provider>/<instance>`` and holds no secret."""

    key: str  # "digitalocean/eu"
    secrets: tuple[str, ...] = ()
    sleep: Callable[[float], None] = time.sleep

    def scrub(self, text: object, limit: int = MAX_MESSAGE) -> str:
        """An API's (or SDK's) own text as one short line without a secret."""
        return one_line(str(text), self.secrets, limit)

    def error(self, message: str) -> ProviderError:
        """``ProviderError("<key>: <message>")``, the whole message scrubbed."""
        return ProviderError(f"{self.key}: {one_line(message, self.secrets, MAX_ERROR)}")

    @contextmanager
    def reading(self, what: str) -> Iterator[None]:
        """Reading an API's answer (an SDK's parse of it, or our own): a field missing or of the
        wrong type or shape is a ``ProviderError``, never an ``AttributeError`` or ``KeyError``
        that would crash the whole run. The exception's text may quote the answer: not shown."""
        try:
            yield
        except (AttributeError, LookupError, TypeError, ValueError) as exc:
            raise self.error(
                f"{what}: unexpected answer from the API ({type(exc).__name__})"
            ) from None

    def call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        classify: Callable[[Exception], Retry | None],
        translate: Callable[[str, Exception], Exception | None],
    ) -> T:
        """``fn`` with bounded retries of what ``classify`` calls transient. A failure left is
        what ``translate`` makes of it (``None``: not an API failure, raised as it is), never
        chained to the SDK's exception, which may hold the request and its secrets."""
        try:
            return call_with_retries(
                fn, what=f"{self.key}: {what}", classify=classify, sleep=self.sleep,
                secrets=self.secrets,
            )  # fmt: skip
        except ProviderError:
            raise
        except Exception as exc:
            translated = translate(what, exc)
            if translated is None or translated is exc:
                raise
            if type(translated) is ProviderError:  # one last scrub, whatever was put in it
                translated = self.error(str(translated).removeprefix(f"{self.key}: "))
            raise translated from None


# --- pagination --------------------------------------------------------------------------

MAX_PAGES = 1000  # a next-page token that never ends is a broken API, not a huge account


def paginate(
    fetch: Callable[[C | None], tuple[Iterable[T], C | None]],
    *,
    fail: Callable[[str], ProviderError],
    what: str,
    max_pages: int = MAX_PAGES,
) -> Iterator[T]:
    """Every item of a paginated list: ``fetch(token)`` gives one page's items and the next
    page's token (``None``/empty on the last; ``None`` asks for the first). A token seen
    before, or more than ``max_pages`` pages, is a ``ProviderError``: a partial inventory
    would make the engine create proxies that already exist, an endless one hang the run."""
    token: C | None = None
    seen: set[C] = set()
    for _ in range(max_pages):
        items, token = fetch(token)
        yield from items
        if not token:
            return
        if token in seen:
            raise fail(f"{what}: the API's next page repeats an earlier one")
        seen.add(token)
    raise fail(f"{what}: more than {max_pages} pages")


# --- ownership-guarded delete ------------------------------------------------------------


def guarded_delete(
    proxy_id: str,
    *,
    owned: set[str],
    read: Callable[[], V | None],
    owns: Callable[[V], bool],
    delete: Callable[[V | None], object],
    key: str,
    noun: str,
) -> None:
    """Delete ``proxy_id`` only if it is this instance's.

    ``owned`` holds ids listed or created with both marks in this process: those are deleted
    at once (``delete(None)``). Any other is read first (``None``: already gone) and deleted
    (``delete(vm)``) only if ``owns`` it, since no cloud scopes a delete by tag."""
    found: V | None = None
    if proxy_id not in owned:
        found = read()
        if found is None:
            return
        if not owns(found):
            log.warning(
                "%s: %s %s lacks this instance's tags or labels; not deleting it",
                key, noun, proxy_id,
            )  # fmt: skip
            return
    delete(found)
    owned.discard(proxy_id)
