"""Random command lines for every command, run in-process: a documented exit code, at most one
error line and no traceback, and nothing written by a command that failed to parse."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloudproxy_cli.core.state import RollingOverrides, State, encode_state
from tests.fuzz.support import (
    FUZZ,
    Reliability,
    assert_no_proxies,
    check_output,
    dumps,
    entries,
    run_cli,
    sandbox,
)

pytestmark = pytest.mark.fuzz

STATE_BYTES = dumps(encode_state(State(overrides=RollingOverrides(batch_size=3))))

junk = st.text(max_size=12)
numbers = st.one_of(
    st.integers(-(10**25), 10**25).map(str), st.sampled_from(["", "0", "-1", "1.5", "1e3", " 2"])
)
words = st.one_of(junk, numbers, st.sampled_from(["local", "default", "aws", "eu", "-", "--"]))

COMMANDS: dict[tuple[str, ...], list[str]] = {
    ("rolling", "set"): [
        "--batch-size",
        "--min-available",
        "--strategy",
        "--enable",
        "--disable",
        "replace",
        "surge",
        "SURGE",
        "--json",
    ],
    ("rolling", "status"): ["local", "default", "aws", "--json", "--all"],
    ("rolling", "reset"): ["--force"],
    ("destroy",): ["127.0.0.1", "127.0.0.1:8899", "local-00000000", "--json"],
    ("proxies",): ["--json", "--all"],
    ("config", "show"): ["--json", "--secrets"],
    ("reconcile",): ["--dry-run", "--provider", "--instance", "--json", "local", "default"],
    ("rolling",): ["help"],
    ("config",): ["help"],
    (): ["bogus", "--version"],
}
# Commands that never write the state file, whatever their arguments.
READ_ONLY = {
    ("rolling", "status"),
    ("destroy",),
    ("proxies",),
    ("config", "show"),
    ("config",),
    ("rolling",),
    (),
}
GLOBAL_OPTIONS = st.lists(
    st.sampled_from(["-v", "-q", "--verbose", "--quiet"])
    | st.tuples(st.just("--config"), junk | st.just("missing.toml")).map(list),
    max_size=2,
)
# Sometimes a broken setting too: the command must then fail as a config error (exit 4).
ENVS: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just(dict[str, str]()),
    st.dictionaries(
        st.sampled_from(
            ["ROLLING_BATCH_SIZE", "AGE_LIMIT", "LOCAL_MIN_SCALING", "CLOUDPROXY_CONFIG"]
        ),
        junk.filter(lambda s: "\x00" not in s),  # os.environ cannot hold NUL
        max_size=2,
    ),
)


@st.composite
def argvs(draw: st.DrawFn) -> tuple[tuple[str, ...], list[str]]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    tokens = draw(st.lists(st.sampled_from(COMMANDS[command]) | words, max_size=5))
    prefix: list[str] = []
    for option in draw(GLOBAL_OPTIONS):
        prefix += option if isinstance(option, list) else [option]
    if command == ("reconcile",) and "--dry-run" not in tokens:
        tokens.append("--dry-run")  # keep every fuzzed reconcile from acting (see below)
    return command, [*prefix, *command, *tokens]


@settings(FUZZ, max_examples=400)
@given(case=argvs(), env=ENVS)
@example(case=(("rolling", "set"), ["rolling", "set", "--batch-size", "9" * 30]), env={})
@example(case=(("rolling",), ["rolling"]), env={})
@example(case=(("reconcile",), ["reconcile", "--dry-run", "--provider", "aws"]), env={})
@example(case=(("destroy",), ["destroy", "\udcff"]), env={})
@example(case=(("rolling", "status"), ["--config", "\x00", "rolling", "status"]), env={})
def test_random_command_lines(
    case: tuple[tuple[str, ...], list[str]], env: dict[str, str], reliability: Reliability
) -> None:
    command, argv = case
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp), env) as box:
        box.state_file.write_bytes(STATE_BYTES)
        before = entries(box)
        result = run_cli(argv)
        check_output(result)
        # A command that failed on its input or config acted on nothing: the state file is
        # byte-identical (a reconcile that ran would have saved it), no proxy was started.
        if result.code in {2, 4} or command in READ_ONLY:
            assert entries(box) == before, result
        assert_no_proxies(box)
        reliability.record("cli/" + (" ".join(command) or "root"), f"exit-{result.code}")


@settings(FUZZ, max_examples=100)
@given(provider=words, instance=words | st.none())
def test_reconcile_filters_that_match_nothing_act_on_nothing(
    provider: str, instance: str | None, reliability: Reliability
) -> None:
    """A real (not dry) reconcile whose --provider/--instance match nothing changes nothing."""
    argv = ["reconcile", "--provider", provider]
    argv += [] if instance is None else ["--instance", instance]
    matches = provider == "local" and instance in {None, "default"}
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp)) as box:
        box.state_file.write_bytes(STATE_BYTES)
        before = entries(box)
        result = run_cli(argv)
        check_output(result)
        assert_no_proxies(box)
        if matches:
            assert result.code == 0, result
        else:
            assert result.code == 2 and entries(box) == before, result
        reliability.record("cli/reconcile-filter", f"exit-{result.code}")
