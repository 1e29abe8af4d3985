"""Config honesty: near-miss names get a warning, `config show` tells the truth, JSON is typed."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import Cli, one_line_error

CREDS = {"PROXY_USERNAME": "tester", "PROXY_PASSWORD": "s3cret-Pa55"}
LOCAL = {"LOCAL_ENABLED": "True", "LOCAL_MIN_SCALING": "2", **CREDS}
MARK = "v4lue-never-shown"


# --- unknown environment variables --------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "meant"),
    [
        ("LOCAL_MIN_SCALNG", "LOCAL_MIN_SCALING"),
        ("ROLLING_BATCHSIZE", "ROLLING_BATCH_SIZE"),
        ("DIGITALOCAEN_ENABLED", "DIGITALOCEAN_ENABLED"),  # the prefix itself misspelt
        ("DIGITAL_OCEAN_ACCESS_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"),
        ("LOCAL_EU_MIN_SCALNG", "LOCAL_EU_MIN_SCALING"),  # an instance form
        ("HEALTHCHECK_URL", "HEALTH_CHECK_URL"),
        ("AWS_SPOTT", "AWS_SPOT"),
        ("HETZNER_ACCES_TOKEN", "HETZNER_ACCESS_TOKEN"),
        ("VULTR_API_KEY", "VULTR_API_TOKEN"),
    ],
)
def test_a_near_miss_variable_is_warned_about_with_a_suggestion(
    cli: Cli, var: str, meant: str
) -> None:
    result = cli.run("config", "show", **LOCAL, **{var: MARK})
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.endswith(f"ignored {var}: not a cloudproxy setting; did you mean {meant}?")
    assert MARK not in result.stdout + result.stderr


def test_an_unknown_variable_under_our_own_prefix_lists_the_known_names(cli: Cli) -> None:
    result = cli.run("rolling", "status", **LOCAL, ROLLING_FROBNICATE=MARK)
    assert result.returncode == 0
    assert "ignored ROLLING_FROBNICATE: not a cloudproxy setting; known: ROLLING_DEPLOYMENT" in (
        result.stderr
    )
    assert MARK not in result.stdout + result.stderr


BOTO3_AND_FRIENDS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": MARK,
    "AWS_SESSION_TOKEN": MARK,
    "AWS_SECURITY_TOKEN": MARK,
    "AWS_PROFILE": "work",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:9",
    "AWS_CA_BUNDLE": "/etc/ssl/cert.pem",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_RETRY_MODE": "standard",
    "AWS_MAX_ATTEMPTS": "3",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ROLE_ARN": "arn:aws:iam::1:role/x",
    "AWS_WEB_IDENTITY_TOKEN_FILE": "/dev/null",
    "DIGITALOCEAN_END_POINT": "http://127.0.0.1:9",
    # Other programs' variables that merely start like a provider.
    "LOCALE_ARCHIVE": "/usr/lib/locale/locale-archive",
    "LOCAL_USER_ID": "1000",
}


def test_boto3_and_other_tools_variables_are_never_warned_about(cli: Cli) -> None:
    result = cli.run("config", "show", **LOCAL, **BOTO3_AND_FRIENDS)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert MARK not in result.stdout


def test_an_unknown_toml_key_is_an_error_with_a_suggestion(cli: Cli) -> None:
    config = cli.root / "work" / "cloudproxy.toml"
    config.write_text("rolling_batchsize = 3\n[providers.local.default]\nmin_scalng = 1\n")
    result = cli.run("config", "show", **LOCAL)
    assert result.returncode == 4
    line = one_line_error(result)
    assert "rolling_batchsize: unknown setting (did you mean rolling_batch_size?" in line
    assert "providers.local.default.min_scalng: unknown setting (did you mean min_scaling?" in line


# --- config show ---------------------------------------------------------------------------------


def settings(cli: Cli, **env: str) -> dict[str, dict[str, object]]:
    doc = cli.json("config", "show", "--json", **env)
    assert doc["schema_version"] == 1
    return {r["name"]: r for r in doc["settings"]}


def test_config_show_json_values_are_typed(cli: Cli) -> None:
    rows = settings(cli, **LOCAL, AGE_LIMIT="120", ROLLING_DEPLOYMENT="yes")
    values = {name: row["value"] for name, row in rows.items()}
    assert values["age_limit"] == 120
    assert values["rolling_deployment"] is True
    assert values["only_host_ip"] is False
    assert values["health_check_timeout"] == 5.0
    assert values["proxy_port"] == 8899
    assert values["rolling_strategy"] == "replace"
    assert values["proxy_username"] == "tester"
    assert values["proxy_password"] == "********"
    assert values["host_ip"] is None
    assert values["providers.local.default.enabled"] is True
    assert values["providers.local.default.min_scaling"] == 2
    assert values["state_file"] == str(cli.state_file)
    assert values["config_file"] is None


def test_config_show_names_rolling_set_as_the_source_with_the_value_in_force(cli: Cli) -> None:
    env = {**LOCAL, "ROLLING_BATCH_SIZE": "7"}
    assert cli.run("rolling", "set", "--batch-size", "3", "--enable", **env).returncode == 0
    rows = settings(cli, **env)
    assert rows["rolling_batch_size"] == {
        "name": "rolling_batch_size", "value": 3, "source": "rolling set",
    }  # fmt: skip
    assert rows["rolling_deployment"]["value"] is True
    assert rows["rolling_deployment"]["source"] == "rolling set"
    assert rows["rolling_strategy"]["source"] == "default"
    text = cli.run("config", "show", **env).stdout
    (line,) = [ln for ln in text.splitlines() if "rolling_batch_size" in ln]
    assert line.replace("│", " ").split() == ["rolling_batch_size", "3", "rolling", "set"], line
    assert cli.run("rolling", "reset", **env).returncode == 0
    assert settings(cli, **env)["rolling_batch_size"]["source"] == "env ROLLING_BATCH_SIZE"


# --- rolling set ---------------------------------------------------------------------------------


def test_rolling_set_warns_when_min_available_will_be_lowered(cli: Cli) -> None:
    env = {**LOCAL, "LOCAL_EU_ENABLED": "True", "LOCAL_EU_MIN_SCALING": "9"}
    result = cli.run("rolling", "set", "--min-available", "5", "--json", **env)
    assert result.returncode == 0, result.stderr
    expected = (
        "min-available 5 is not below MIN_SCALING 2 of local/default: "
        "it recycles keeping 1 available (MIN_SCALING - 1)"
    )
    assert json.loads(result.stdout)["warnings"] == [expected]  # not local/eu: 5 < 9
    assert result.stderr.splitlines()[-1].endswith(expected)
    quiet = cli.run("rolling", "set", "--min-available", "1", **env)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_rolling_set_refuses_enable_and_disable_together(cli: Cli) -> None:
    assert cli.run("rolling", "set", "--disable", **LOCAL).returncode == 0
    before = cli.state_file.read_bytes()
    for order in (["--enable", "--disable"], ["--disable", "--enable"]):
        result = cli.run("rolling", "set", *order, **LOCAL)
        assert result.returncode == 2
        assert "--enable and --disable" in one_line_error(result)
        assert cli.state_file.read_bytes() == before


# --- JSON everywhere -----------------------------------------------------------------------------


def test_every_command_prints_json_with_a_schema_version(cli: Cli) -> None:
    commands = [
        ["reconcile", "--dry-run", "--json"],
        ["reconcile", "--json"],
        ["rolling", "status", "--json"],
        ["rolling", "set", "--batch-size", "3", "--json"],
        ["rolling", "reset", "--json"],
        ["proxies", "--json"],
        ["config", "show", "--json"],
    ]
    for argv in commands:
        doc = cli.json(*argv, **LOCAL)
        assert doc["schema_version"] == 1, argv
    assert (
        cli.json("rolling", "set", "--batch-size", "3", "--json", **LOCAL)["config"]["sources"][
            "batch_size"
        ]
        == "rolling set"
    )
    address = cli.json("proxies", "--json", **LOCAL)["proxies"][0]["address"]
    doc = cli.json("destroy", address, "--json", **LOCAL)
    assert doc["schema_version"] == 1
    assert doc["destroyed"]["address"] == address
    assert doc["destroyed"]["instance"] == "local/default"
