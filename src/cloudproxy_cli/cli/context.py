"""What every command shares: the global options, the environment, and the config and state."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import typer

if TYPE_CHECKING:
    from cloudproxy_cli.adapters.state_file import StateFile
    from cloudproxy_cli.config import LoadedConfig

log = logging.getLogger("cloudproxy")


def path_option(text: str) -> Path:
    """Parser of the file options (--config, --state-file, --metrics-file): a directory or a
    NUL byte is a usage error before anything runs. (Typer's own path type stats the path
    without catching the ValueError that a NUL byte raises: an internal error.)"""
    if "\x00" in text:
        raise typer.BadParameter("a path cannot contain a NUL byte")
    path = Path(text)
    if path.is_dir():
        raise typer.BadParameter(f"{text} is a directory, not a file")
    return path


class Options(NamedTuple):
    """The root options, and the environment this invocation reads its settings from."""

    config: Path | None
    state_file: Path | None
    environ: Mapping[str, str]
    quiet: bool = False  # -q: only warnings and errors on stderr; nothing when nothing changed

    def load_config(self) -> LoadedConfig:
        from cloudproxy_cli.config import load_config

        loaded = load_config(self.config, self.environ)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        return loaded

    def store(self) -> StateFile:
        from cloudproxy_cli.app.wiring import make_state_store

        return make_state_store(self.state_file, self.environ)


def options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


def now() -> datetime:
    return datetime.now(UTC)


def warn(message: str | None) -> None:
    if message:
        log.warning("%s", message)


def error(message: str) -> None:
    """The one-line error every command reports on stderr (whatever the error: no traceback)."""
    sys.stderr.write(f"cloudproxy: error: {' '.join(message.split())}\n")
