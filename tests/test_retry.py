"""What every cloud adapter shares: bounded retries, the call envelope, pages, guarded deletes."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

import pytest

from cloudproxy_cli.adapters.common import (
    Envelope,
    Retry,
    allowed_cidrs,
    call_with_retries,
    guarded_delete,
    one_line,
    owns_labels,
    owns_tags,
    paginate,
    parse_retry_after,
    utc_datetime,
    vm_name,
)
from cloudproxy_cli.core.errors import ProviderError, RateLimitedError


@pytest.fixture(autouse=True)
def _cloudproxy_logs_reach_caplog() -> Iterator[None]:
    # The CLI's log set-up (run by another test in the same worker) gives "cloudproxy" a level
    # and stops it propagating; caplog listens at the root.
    logger = logging.getLogger("cloudproxy")
    saved = logger.level, logger.propagate
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


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
    with pytest.raises(RateLimitedError, match=r"^x: the API asks to wait until \d\d:\d\d:\d\dZ"):
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


def test_one_line_removes_a_secret_that_spans_lines() -> None:
    pem = "-----BEGIN-----\nAAAA\nBBBB\n-----END-----"
    assert one_line(f"bad key {pem}!", (pem,)) == "bad key ***!"


# --- the envelope ------------------------------------------------------------------------

ENV = Envelope("demo/eu", ("s3cret",), sleep=lambda _s: None)


class ApiFailure(Exception):
    pass


def test_the_envelope_makes_an_api_failure_one_scrubbed_unchained_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fn, calls = flaky([Transient(), ApiFailure("denied for s3cret\nsee logs")])

    def translate(what: str, exc: Exception) -> Exception | None:
        return ENV.error(f"{what} failed: {exc}") if isinstance(exc, ApiFailure) else None

    with pytest.raises(ProviderError) as info:
        ENV.call("list", fn, classify=classify, translate=translate)
    assert str(info.value) == "demo/eu: list failed: denied for *** see logs"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert len(calls) == 2


def test_the_envelope_scrubs_the_failures_it_logs_while_retrying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    class Echo(Transient):
        def __str__(self) -> str:
            return "busy, s3cret"

    fn, _ = flaky([Echo()])
    assert ENV.call("list", fn, classify=classify, translate=lambda _w, _e: None) == "ok"
    assert "transient failure (busy, ***)" in caplog.text and "s3cret" not in caplog.text


def test_the_envelope_leaves_what_translate_does_not_know_alone() -> None:
    fn, _ = flaky([KeyError("bug")])
    with pytest.raises(KeyError):
        ENV.call("list", fn, classify=classify, translate=lambda _w, _e: None)


# --- pagination --------------------------------------------------------------------------


def pages(
    tokens: list[str | None],
) -> tuple[list[str | None], Callable[[str | None], tuple[Iterable[int], str | None]]]:
    asked: list[str | None] = []

    def fetch(token: str | None) -> tuple[Iterable[int], str | None]:
        asked.append(token)
        return [len(asked)], tokens[len(asked) - 1]

    return asked, fetch


def test_paginate_follows_tokens_to_the_last_page() -> None:
    asked, fetch = pages(["a", "b", None])
    assert list(paginate(fetch, fail=ENV.error, what="list")) == [1, 2, 3]
    assert asked == [None, "a", "b"]


def test_paginate_refuses_a_token_it_has_seen() -> None:
    _, fetch = pages(["a", "b", "a", None])
    with pytest.raises(ProviderError, match=r"^demo/eu: list: the API's next page repeats"):
        list(paginate(fetch, fail=ENV.error, what="list"))


def test_paginate_stops_an_endless_list_at_its_bound() -> None:
    asked, fetch = pages([f"t{i}" for i in range(100)])
    with pytest.raises(ProviderError, match=r"^demo/eu: list: more than 5 pages$"):
        list(paginate(fetch, fail=ENV.error, what="list", max_pages=5))
    assert len(asked) == 5


# --- guarded delete ----------------------------------------------------------------------


def run_delete(
    proxy_id: str, owned: set[str], vm: dict[str, str] | None
) -> tuple[list[str], list[object]]:
    reads: list[str] = []
    deleted: list[object] = []

    def read() -> dict[str, str] | None:
        reads.append(proxy_id)
        return vm

    guarded_delete(
        proxy_id,
        owned=owned,
        read=read,
        owns=lambda found: owns_labels(found, "eu"),
        delete=deleted.append,
        key="demo/eu",
        noun="vm",
    )
    return reads, deleted


def test_guarded_delete_deletes_a_listed_vm_without_reading_it() -> None:
    owned = {"1"}
    assert run_delete("1", owned, None) == ([], [None])
    assert owned == set()


def test_guarded_delete_reads_an_unknown_vm_and_deletes_it_if_ours() -> None:
    vm = {"cloudproxy": "true", "cloudproxy-instance": "eu"}
    assert run_delete("2", set(), vm) == (["2"], [vm])


def test_guarded_delete_leaves_a_vm_of_another_instance_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vm = {"cloudproxy": "true", "cloudproxy-instance": "us"}
    assert run_delete("3", set(), vm) == (["3"], [])
    assert "demo/eu: vm 3 lacks this instance's tags or labels; not deleting it" in caplog.text


def test_guarded_delete_of_a_vm_already_gone_does_nothing() -> None:
    assert run_delete("4", set(), None) == (["4"], [])


# --- marks, names, CIDRs -----------------------------------------------------------------


def test_ownership_needs_both_marks() -> None:
    assert owns_tags(["cloudproxy", "cloudproxy-eu"], "eu")
    assert not owns_tags(["cloudproxy-eu"], "eu")
    assert not owns_tags(["cloudproxy", "cloudproxy-us"], "eu")
    assert not owns_tags(None, "eu")
    assert owns_labels({"cloudproxy": "", "cloudproxy-instance": "eu"}, "eu")
    assert not owns_labels({"cloudproxy": "", "cloudproxy-instance": "eu"}, "eu", tag_value="true")
    assert not owns_labels({"cloudproxy-instance": "eu"}, "eu")
    assert not owns_labels(None, "eu")


def test_vm_names_carry_the_instance_and_fit_the_limit() -> None:
    assert re.fullmatch(r"cloudproxy-eu-[0-9a-f]{8}", vm_name("eu"))
    long = vm_name("x" * 60, max_len=63)
    assert len(long) == 63 and re.fullmatch(r"cloudproxy-x+-[0-9a-f]{8}", long)
    assert vm_name("eu") != vm_name("eu")


def test_allowed_cidrs() -> None:
    # IPv6 is never opened to all, for every provider alike (README: rules every adapter shares).
    assert allowed_cidrs(None) == ("0.0.0.0/0",)
    assert allowed_cidrs("203.0.113.7") == ("203.0.113.7/32",)
    assert allowed_cidrs("2001:db8::1") == ("2001:db8::1/128",)
