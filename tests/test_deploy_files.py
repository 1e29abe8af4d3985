"""The deploy/ examples (cron, systemd, Kubernetes) say what the README says and run as written."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from cloudproxy_cli.config import SecretStr, load_config
from tests.support.cli import COMMAND, Cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SERVICE = DEPLOY / "systemd" / "cloudproxy.service"
TIMER = DEPLOY / "systemd" / "cloudproxy.timer"
CRONTAB = DEPLOY / "cron" / "cloudproxy.crontab"
MANIFEST = DEPLOY / "kubernetes" / "cronjob.yaml"


def manifest_docs() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one document of each kind"
    return by_kind


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def pod_spec(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dict(docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod_spec(docs)["containers"]
    return dict(only)


def kubernetes_argv(docs: dict[str, dict[str, Any]]) -> list[str]:
    c = container(docs)
    return [*c["command"], *c["args"]]


def cron_argv() -> list[str]:
    lines = [
        line
        for line in CRONTAB.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    (entry,) = lines
    fields = entry.split(None, 5)
    assert fields[:5] == ["*"] * 5, "every minute"
    command = fields[5].split("exec ", 1)[1].split(">>", 1)[0]
    return shlex.split(command)


def systemd_argv() -> list[str]:
    return shlex.split(unit(SERVICE)["Service"]["ExecStart"])


def test_the_cronjob_runs_one_reconcile_at_a_time_every_minute() -> None:
    spec = manifest_docs()["CronJob"]["spec"]
    assert spec["schedule"] == "* * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert isinstance(spec["startingDeadlineSeconds"], int) and spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["backoffLimit"] == 0


def test_the_state_file_is_on_the_persistent_volume_claim() -> None:
    docs = manifest_docs()
    argv = kubernetes_argv(docs)
    assert argv[-1] == "reconcile" and "--quiet" in argv
    state_dir = PurePosixPath(option(argv, "--state-file")).parent
    c = container(docs)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    state_volume = volumes[mounts[str(state_dir)]]
    assert (
        state_volume["persistentVolumeClaim"]["claimName"]
        == (docs["PersistentVolumeClaim"]["metadata"]["name"])
    )
    config_volume = volumes[mounts[str(PurePosixPath(option(argv, "--config")).parent)]]
    assert config_volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert PurePosixPath(option(argv, "--config")).name in docs["ConfigMap"]["data"]


def test_no_secret_value_is_inline_in_the_manifest(tmp_path: Path) -> None:
    docs = manifest_docs()
    assert "Secret" not in docs
    c = container(docs)
    assert "env" not in c, "settings come from the Secret (envFrom) and the ConfigMap only"
    assert [e["secretRef"]["name"] for e in c["envFrom"]] == ["cloudproxy-secrets"]
    # The ConfigMap's TOML is a valid configuration, and none of its secret settings is set.
    toml = tmp_path / "cloudproxy.toml"
    toml.write_text(docs["ConfigMap"]["data"]["cloudproxy.toml"], encoding="utf-8")
    settings = load_config(toml, {}).settings
    models = [settings, *(i for insts in settings.providers.values() for i in insts.values())]
    assert len(models) == 2
    for model in models:
        for name in type(model).model_fields:
            assert not isinstance(getattr(model, name), SecretStr), name


def test_the_service_is_a_oneshot_reconcile_as_its_own_user_on_its_state_directory() -> None:
    service = unit(SERVICE)["Service"]
    assert service["Type"] == "oneshot"
    assert service["User"] not in ("", "root")
    argv = systemd_argv()
    assert PurePosixPath(argv[0]).name == "cloudproxy"
    assert argv[-1] == "reconcile" and "--quiet" in argv
    state_dir = PurePosixPath("/var/lib") / service["StateDirectory"]
    assert PurePosixPath(option(argv, "--state-file")).parent == state_dir
    assert service["EnvironmentFile"].startswith("/etc/")


def test_the_timer_starts_the_service_every_minute_and_catches_up() -> None:
    timer = unit(TIMER)
    assert timer["Timer"]["Unit"] == SERVICE.name
    assert timer["Timer"].get("OnCalendar") == "minutely" or (
        timer["Timer"].get("OnUnitActiveSec") in ("60", "60s", "1min")
    )
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this checkout's command.
    exe = COMMAND[0]
    text = SERVICE.read_text(encoding="utf-8").replace(systemd_argv()[0], exe)
    (tmp_path / SERVICE.name).write_text(text, encoding="utf-8")
    shutil.copy(TIMER, tmp_path / TIMER.name)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / SERVICE.name), str(tmp_path / TIMER.name)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_the_crontab_runs_a_quiet_reconcile_every_minute_without_flock() -> None:
    argv = cron_argv()
    assert PurePosixPath(argv[0]).name == "cloudproxy"
    assert argv[-1] == "reconcile" and "--quiet" in argv
    assert "flock" not in CRONTAB.read_text(encoding="utf-8").split("#")[-1]


@pytest.mark.parametrize("source", ["cron", "systemd", "kubernetes"])
def test_the_command_line_is_accepted_by_the_real_command(source: str, tmp_path: Path) -> None:
    """The same global options, with the paths moved here and `config show` for `reconcile`."""
    argv = {"cron": cron_argv, "systemd": systemd_argv}.get(
        source, lambda: kubernetes_argv(manifest_docs())
    )()
    toml = tmp_path / "cloudproxy.toml"
    toml.write_text(manifest_docs()["ConfigMap"]["data"]["cloudproxy.toml"], encoding="utf-8")
    state = tmp_path / "state" / "state.json"
    args = argv[1:-1]
    args[args.index("--config") + 1] = str(toml)
    args[args.index("--state-file") + 1] = str(state)
    cli = Cli.make(tmp_path)
    done = cli.run(*args, "config", "show", "--json")
    assert done.returncode == 0, done.stderr
    assert str(toml) in done.stdout
