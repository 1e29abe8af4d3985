"""Help: a bare command group prints its help and exits 0; help into a closed pipe is quiet."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.cli import COMMAND, Cli

GROUPS = ["rolling", "config"]


@pytest.mark.parametrize("group", GROUPS)
def test_a_bare_group_prints_its_help_and_exits_0(cli: Cli, group: str) -> None:
    bare = cli.run(group)
    helped = cli.run(group, "--help")
    assert bare.returncode == 0, bare.stderr
    assert bare.stderr == ""
    assert f"Usage: cloudproxy {group}" in bare.stdout
    assert bare.stdout.rstrip() == helped.stdout.rstrip()


@pytest.mark.parametrize(
    "argv", [["--help"], ["rolling"], ["rolling", "status", "--help"]], ids=" ".join
)
def test_help_into_a_closed_pipe_exits_0_quietly(cli: Cli, argv: list[str]) -> None:
    # A real process: the pipe's reader is gone before the first byte (`| head -0`), so every
    # write fails with EPIPE, deterministically. Rich and Typer handle that themselves: exit 1.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*COMMAND, *argv],
            cwd=cli.root / "work",
            env=cli.env,
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")
