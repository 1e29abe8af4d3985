"""The HTTP plumbing DigitalOcean's and Vultr's adapters share around requests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from cloudproxy_cli.adapters.common import (
    Envelope,
    HttpError,
    Retry,
    TransportError,
    classify_http,
    parse_retry_after,
)
from cloudproxy_cli.core.errors import ProviderError

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
    return HttpError(
        response.status_code,
        envelope.scrub(text),
        parse_retry_after(response.headers.get("Retry-After")),
    )


def _classify_unsafe(exc: Exception) -> Retry | None:
    """A POST is retried only when the API surely did not act on it (429). After a 5xx the
    VM may exist all the same (a ghost create): sending it again could make a second one,
    which the next run, seeing both, has to delete again."""
    if isinstance(exc, HttpError) and exc.status >= 500:
        return None
    return classify_http(exc)


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
                # requests' own messages quote the URL and more; a short one of ours suffices.
                retryable = method in IDEMPOTENT or isinstance(exc, requests.ConnectTimeout)
                raise TransportError(
                    f"cannot reach {self.host} ({type(exc).__name__})", retryable=retryable
                ) from None

        classify = classify_http if method in IDEMPOTENT else _classify_unsafe
        return self.envelope.call(what, once, classify=classify, translate=self._translate)

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
