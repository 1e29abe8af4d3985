"""Bounded retries with Retry-After, shared by every cloud adapter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloudproxy_cli.adapters.common import (
    Retry,
    call_with_retries,
    one_line,
    parse_retry_after,
    utc_datetime,
)


class Transient(Exception):
    def __init__(self, after: float | None = None) -> None:
        super().__init__("503")
        self.after = after


def classify(exc: Exception) -> Retry | None:
    return Retry(exc.after) if isinstance(exc, Transient) else None


def flaky(failures: list[Exception]):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    return fn, calls


def test_retries_transient_failures_then_succeeds_with_backoff() -> None:
    slept: list[float] = []
    fn, calls = flaky([Transient(), Transient()])
    assert call_with_retries(fn, what="x", classify=classify, sleep=slept.append) == "ok"
    assert len(calls) == 3
    assert slept == [0.5, 1.0]


def test_retry_after_is_honoured_exactly() -> None:
    slept: list[float] = []
    fn, _ = flaky([Transient(after=3), Transient(after=0)])
    call_with_retries(fn, what="x", classify=classify, sleep=slept.append)
    assert slept == [3, 0]


def test_gives_up_after_the_bound() -> None:
    slept: list[float] = []
    fn, calls = flaky([Transient() for _ in range(10)])
    with pytest.raises(Transient):
        call_with_retries(fn, what="x", classify=classify, attempts=4, sleep=slept.append)
    assert len(calls) == 4 and len(slept) == 3


def test_a_long_retry_after_is_not_waited_for() -> None:
    slept: list[float] = []
    fn, calls = flaky([Transient(after=3600)])
    with pytest.raises(Transient):
        call_with_retries(fn, what="x", classify=classify, sleep=slept.append)
    assert slept == [] and len(calls) == 1


def test_other_errors_are_not_retried() -> None:
    fn, calls = flaky([ValueError("401")])
    with pytest.raises(ValueError, match="401"):
        call_with_retries(fn, what="x", classify=classify, sleep=lambda _s: None)
    assert len(calls) == 1


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_one_line_removes_secrets_before_cutting() -> None:
    secret = "tok-1234567890"
    text = "x" * 195 + secret + "\n tail"
    line = one_line(text, (secret, None))
    assert "\n" not in line and len(line) <= 200
    assert "tok-" not in line, "a secret cut in half must not leak its start"
    assert one_line("a\n  b", ()) == "a b"


def test_utc_datetime() -> None:
    assert utc_datetime("2026-01-01T01:00:00+01:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert utc_datetime("2026-01-01T00:00:00Z").tzinfo == UTC
    assert utc_datetime("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="Invalid isoformat"):
        utc_datetime(None)
