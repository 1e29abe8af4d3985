"""The HTTP plumbing DigitalOcean's and Vultr's adapters share around requests."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
import urllib3.exceptions

from cloudproxy_cli.adapters.common import (
    Envelope,
    HttpError,
    TransportError,
    classify_http,
    owns_tags,
    parse_retry_after,
    rate_limit_wait,
)
from cloudproxy_cli.core.errors import ProviderError, RateLimitedError

log = logging.getLogger("cloudproxy")

T = TypeVar("T")

TIMEOUT_S = (10.0, 60.0)  # (connect, read): a hung API must fail the run, not stall it
# Methods a lost answer makes safe to send again: the same GET or DELETE twice does no harm.
IDEMPOTENT = frozenset({"GET", "DELETE"})
AUTH_STATUSES = frozenset({401, 403})


def http_error(response: requests.Response, field: str, envelope: Envelope) -> HttpError:
    """An error answer as ``HttpError``: the API's ``{field: "..."}`` text (else the reason
    phrase) scrubbed, and its Retry-After."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get(field) if isinstance(body, dict) else None
    text = message if isinstance(message, str) else response.reason or ""
    if response.status_code == 429:
        wait, source = rate_limit_wait(response.headers)
        return HttpError(response.status_code, envelope.scrub(text), wait, source)
    return HttpError(
        response.status_code,
        envelope.scrub(text),
        parse_retry_after(response.headers.get("Retry-After")),
    )


def never_sent(exc: requests.RequestException) -> bool:
    """Whether the request cannot have reached the server: no connection was ever made (refused,
    unresolvable, connect timeout). A read timeout or a connection dropped after sending may
    have been acted on."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError) or isinstance(exc, requests.ReadTimeout):
        return False
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    # NewConnectionError (refused, DNS) derives from ConnectTimeoutError.
    return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)


@dataclass(frozen=True, slots=True)
class Named:
    """How to find the VM a create made in a list answer: its list (``key``), the field
    (``field``) holding the unique ``name``, and the instance whose tags it must carry."""

    key: str  # "droplets"
    field: str  # "name"
    name: str
    instance: str

    def pick(self, answer: object, envelope: Envelope, what: str) -> dict[str, Any] | None:
        """The one item of ``answer`` with that name and both tags, else ``None``."""
        items = answer.get(self.key) if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise envelope.error(f"{what}: the answer has no {self.key!r} list")
        for item in items:
            if (
                isinstance(item, dict)
                and item.get(self.field) == self.name
                and owns_tags(item.get("tags"), self.instance)
            ):
                return item
        return None


@dataclass(frozen=True, slots=True)
class RestCalls:
    """Calls to one REST API host through requests: retried on 429/5xx (and on transport
    errors that cannot have reached the server twice), 401/403 told apart by ``auth_error``."""

    envelope: Envelope
    host: str  # for messages: "cannot reach <host>"
    auth_error: Callable[[str, HttpError], ProviderError]

    def request(self, what: str, method: str, fn: Callable[[], T]) -> T:
        """``fn`` (which raises ``HttpError`` for an error answer) with retries. Raises
        ``HttpError`` for an error answer other than 401/403, ``ProviderError`` otherwise."""

        def once() -> T:
            try:
                return fn()
            except requests.RequestException as exc:
                retryable = method in IDEMPOTENT or never_sent(exc)
                raise self._transport(exc, retryable=retryable) from None

        return self.envelope.call(what, once, classify=classify_http, translate=self._translate)

    def create(self, what: str, send: Callable[[], T], find: Callable[[], T | None]) -> T:
        """A create through an API without idempotency keys (``send``, which raises ``HttpError``
        for an error answer), made at most once.

        It is sent again at once only where the server cannot have acted: a 429 or a connection
        never made. After an answer that may hide a VM made anyway (a 5xx, a read timeout, a
        connection dropped after sending), ``find`` looks it up by its unique name first (it
        returns it, or ``None``; it raises as ``send`` does) and only if it is not there is the
        create sent again. Raises as ``request``."""
        lost: list[str] = []  # why earlier attempts' answers may hide a VM
        looking = [False]  # whether the last failure was the look-up's

        def once() -> T:
            looking[0] = bool(lost)
            try:
                if lost:
                    found = find()
                    if found is not None:
                        log.info(
                            "%s: %s: found what an earlier attempt made (its answer was lost: %s)",
                            self.envelope.key, what, lost[-1],
                        )  # fmt: skip
                        return found
                    lost.clear()  # not made: a new attempt is as safe as the first
                    looking[0] = False
                return send()
            except HttpError as exc:
                if exc.status >= 500 and not looking[0]:
                    lost.append(f"HTTP {exc.status}")
                raise
            except requests.RequestException as exc:
                if not never_sent(exc) and not looking[0]:
                    lost.append(type(exc).__name__)
                # Retryable either way: a resend is preceded by the look-up above.
                raise self._transport(exc, retryable=True) from None

        try:
            return self.envelope.call(what, once, classify=classify_http, translate=self._translate)
        except (HttpError, ProviderError) as exc:
            if not (looking[0] and lost) or isinstance(exc, RateLimitedError):
                raise
            shown = (
                exc
                if isinstance(exc, HttpError)
                else str(exc).removeprefix(f"{self.envelope.key}: ")
            )
            raise self.envelope.error(
                f"{what}: its answer was lost ({lost[-1]}) and the look-up for what it made "
                f"failed ({shown}); the next run adopts it if it was made"
            ) from None

    def call(self, what: str, method: str, fn: Callable[[], T]) -> T:
        """``request``, with every error answer a one-line ``ProviderError``."""
        try:
            return self.request(what, method, fn)
        except HttpError as exc:
            raise self.error(what, exc) from None

    def item_or_none(
        self, what: str, request: Callable[[], object], key: str
    ) -> dict[str, Any] | None:
        """The ``key`` object of a read's answer (``{}`` if it names none); ``None`` on 404.
        ``request`` raises ``HttpError`` for an error answer, as ``request`` does."""
        try:
            answer = request()
        except HttpError as exc:
            if exc.status == 404:
                return None  # already gone
            raise self.error(what, exc) from None
        item = answer.get(key) if isinstance(answer, dict) else None
        return item if isinstance(item, dict) else {}

    def delete(self, what: str, request: Callable[[], object]) -> None:
        """A delete; a 404 (already gone) is what it wanted."""
        try:
            request()
        except HttpError as exc:
            if exc.status != 404:
                raise self.error(what, exc) from None

    def _transport(self, exc: requests.RequestException, *, retryable: bool) -> TransportError:
        # requests' own messages quote the URL and more; a short one of ours suffices.
        return TransportError(
            f"cannot reach {self.host} ({type(exc).__name__})", retryable=retryable
        )

    def error(self, what: str, exc: HttpError) -> ProviderError:
        if exc.status in AUTH_STATUSES:
            return self.auth_error(what, exc)
        return self.envelope.error(f"{what} failed: {exc}")

    def _translate(self, what: str, exc: Exception) -> Exception | None:
        if isinstance(exc, HttpError):
            return self.auth_error(what, exc) if exc.status in AUTH_STATUSES else exc
        if isinstance(exc, TransportError):
            return self.envelope.error(f"{what} failed: {exc}")
        return None
