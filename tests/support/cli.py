"""Runs the real `cloudproxy` console script in a subprocess with a clean, isolated environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    "ONLY_HOST_IP",
    "ALLOW_OPEN_PROXY",
    "NO_COLOR",
)


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

    # No timeout parameter: every other keyword is an environment variable (typed **env: str).
    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, *args],
            cwd=self.root / "work",
            env={**self.env, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def json(self, *args: str, **env: str) -> Any:
        result = self.run(*args, **env)
        assert result.returncode == 0, (result.returncode, result.stderr)
        return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts the failure was reported as exactly one line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("cloudproxy: error: "), lines[0]
    return lines[0]


def have_console_script() -> bool:
    return shutil.which("cloudproxy", path=str(Path(sys.executable).parent)) is not None
