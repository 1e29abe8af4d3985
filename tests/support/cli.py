"""Runs `cloudproxy` in a sandbox: in-process through ``run(argv, environ)``, or as a process."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cloudproxy_cli.cli.app import run
from cloudproxy_cli.config import PROVIDER_SETTINGS

_script = Path(sys.executable).with_name("cloudproxy")
COMMAND = [str(_script)] if _script.exists() else [sys.executable, "-m", "cloudproxy_cli"]

_SETTING_PREFIXES = (
    *(f"{p.upper()}_" for p in PROVIDER_SETTINGS),
    "CLOUDPROXY_",
    "ROLLING_",
    "PROXY_",
    "HEALTH_CHECK_",
    "AGE_LIMIT",
    "PENDING_TIMEOUT",
    "STALE_AFTER",
    "ONLY_HOST_IP",
    "ALLOW_OPEN_PROXY",
    "METRICS_FILE",
    "NO_COLOR",
    # The console honours COLUMNS: the terminal running the tests must not change the output.
    "COLUMNS",
    "LINES",
)


class Outcome(Protocol):
    """What both runners report: a finished process, or an in-process run."""

    @property
    def returncode(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


@dataclass(frozen=True)
class Ran:
    """One in-process run: exit code, and stdout and stderr captured apart."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


@contextmanager
def _sandboxed(env: Mapping[str, str], cwd: Path) -> Iterator[None]:
    """For one run: exactly ``env`` as the process environment (adapters and platformdirs read
    os.environ too), ``cwd`` as the working directory; both, and the logger, restored after."""
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    logger = logging.getLogger("cloudproxy")
    saved_log = (logger.handlers[:], logger.level, logger.propagate)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        logger.handlers[:], logger.level, logger.propagate = saved_log


@dataclass
class Cli:
    """A sandbox: its own cwd, config and state directories, and its own environment."""

    root: Path
    env: dict[str, str]

    @classmethod
    def make(cls, root: Path, **env: str) -> Cli:
        base = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
        base.update(
            {
                "HOME": str(root / "home"),
                "XDG_CONFIG_HOME": str(root / "config"),
                "XDG_STATE_HOME": str(root / "state-home"),
                "CLOUDPROXY_STATE_FILE": str(root / "state" / "state.json"),
                "NO_COLOR": "1",
            }
        )
        base.update(env)
        (root / "work").mkdir(parents=True, exist_ok=True)
        return cls(root, base)

    @property
    def state_file(self) -> Path:
        return Path(self.env["CLOUDPROXY_STATE_FILE"])

    @property
    def local_dir(self) -> Path:
        return self.state_file.parent / "local"

    def run(self, *args: str, **env: str) -> Ran:
        """``cloudproxy ARGS`` in this process, through the console script's own ``run``."""
        environ = {**self.env, **env}
        out, err = io.StringIO(), io.StringIO()
        with _sandboxed(environ, self.root / "work"), redirect_stdout(out), redirect_stderr(err):
            code = run(list(args), environ)
        return Ran(list(args), code, out.getvalue(), err.getvalue())

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*COMMAND, *args],
            cwd=self.root / "work",
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_process(
        self, *args: str, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``cloudproxy ARGS`` as a real process (for locks, signals and import checks)."""
        return subprocess.run(
            [*COMMAND, *args],
            cwd=self.root / "work",
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str, **env: str) -> Any:
        result = self.run(*args, **env)
        assert result.returncode == 0, (result.returncode, result.stderr)
        return json.loads(result.stdout)

    def status_of(self, key: str, **env: str) -> dict[str, Any]:
        """One instance's entry of `rolling status --json`."""
        entry: dict[str, Any] = self.json("rolling", "status", "--json", **env)["status"][key]
        return entry


def run_python(
    code: str, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a fresh interpreter of this venv, bounded, output captured, never
    raising on a non-zero exit: what a command imports is only visible in a new process."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line_error(result: Outcome) -> str:
    """Asserts the failure was reported as exactly one line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("cloudproxy: error: "), lines[0]
    return lines[0]


def have_console_script() -> bool:
    return shutil.which("cloudproxy", path=str(Path(sys.executable).parent)) is not None
