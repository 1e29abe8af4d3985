"""Tests for loading, merging, validating and describing the configuration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import pytest

from cloudproxy_cli.config import (
    GLOBAL_SETTINGS,
    MASKED,
    PROVIDER_SETTINGS,
    UNSET,
    AwsSettings,
    ConfigRow,
    InstanceSettings,
    Kind,
    LoadedConfig,
    LocalSettings,
    OptionalSecret,
    OptionalText,
    SecretStr,
    Settings,
    describe,
    enabled_instances,
    env_name,
    find_config_file,
    instance_settings,
    load_config,
)
from cloudproxy_cli.core.errors import ConfigError, UsageError
from cloudproxy_cli.core.policy import RollingPolicy, Strategy
from tests.support.cli import run_python

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "cloudproxy.toml.example"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see a cloudproxy.toml in the real cwd or the real user config dir."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    return tmp_path / "user-config"


def load(
    environ: dict[str, str] | None = None,
    config_path: Path | None = None,
    *,
    user_dir: Path | None = None,
    registry: dict[str, type[InstanceSettings]] | None = None,
) -> LoadedConfig:
    return load_config(
        config_path,
        environ or {},
        user_config_dir=user_dir or Path("/nonexistent-cloudproxy-user-dir"),
        registry=registry,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(
    environ: dict[str, str] | None = None,
    config_path: Path | None = None,
    *,
    registry: dict[str, type[InstanceSettings]] | None = None,
) -> str:
    with pytest.raises(ConfigError) as info:
        load(environ, config_path, registry=registry)
    message = str(info.value)
    assert "\n" not in message
    assert "validation error" not in message  # no pydantic dump
    return message


# --- defaults and precedence ---------------------------------------------------------------


def test_defaults_without_env_or_file() -> None:
    loaded = load()
    s = loaded.settings
    assert loaded.file is None
    assert (s.age_limit, s.rolling_deployment, s.rolling_min_available, s.rolling_batch_size) == (
        0,
        False,
        3,
        2,
    )
    assert s.rolling_strategy is Strategy.REPLACE
    assert s.proxy_username is None
    assert s.proxy_password is None
    assert s.proxy_port == 8899
    assert s.health_check_url is None
    assert s.health_check_timeout == 5.0
    assert s.pending_timeout == 600
    assert s.only_host_ip is False
    assert s.allow_open_proxy is False
    assert s.providers == {}
    assert enabled_instances(s) == []
    assert loaded.sources == dict.fromkeys(GLOBAL_SETTINGS, "default")
    assert s.rolling_policy() == RollingPolicy()


def test_settings_constructor_ignores_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGE_LIMIT", "77")
    assert Settings().age_limit == 0
    assert load().settings.age_limit == 0  # only the mapping passed in counts


def test_file_beats_default_and_env_beats_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        "age_limit = 100\nrolling_batch_size = 3\n"
        "[providers.local.default]\nenabled = true\nmin_scaling = 4\n",
    )
    loaded = load({"AGE_LIMIT": "200", "LOCAL_MIN_SCALING": "6"}, path)
    s = loaded.settings
    assert s.age_limit == 200
    assert s.rolling_batch_size == 3
    assert s.rolling_min_available == 3
    local = s.providers["local"]["default"]
    assert (local.enabled, local.min_scaling) == (True, 6)
    assert loaded.sources["age_limit"] == "env AGE_LIMIT"
    assert loaded.sources["rolling_batch_size"] == f"file {path}"
    assert loaded.sources["rolling_min_available"] == "default"
    assert loaded.sources["providers.local.default.enabled"] == f"file {path}"
    assert loaded.sources["providers.local.default.min_scaling"] == "env LOCAL_MIN_SCALING"
    assert loaded.sources["providers.local.default.boot_delay"] == "default"


def test_all_global_settings_from_env() -> None:
    s = load(
        {
            "AGE_LIMIT": "3600",
            "ROLLING_DEPLOYMENT": "True",
            "ROLLING_MIN_AVAILABLE": "0",
            "ROLLING_BATCH_SIZE": "5",
            "ROLLING_STRATEGY": "Surge",
            "PROXY_USERNAME": "user",
            "PROXY_PASSWORD": "pw",
            "PROXY_PORT": "3128",
            "HEALTH_CHECK_URL": "https://example.com/ip",
            "HEALTH_CHECK_TIMEOUT": "2.5",
            "PENDING_TIMEOUT": "300",
            "ONLY_HOST_IP": "yes",
            "ALLOW_OPEN_PROXY": "1",
        }
    ).settings
    assert s.age_limit == 3600
    assert s.rolling_policy() == RollingPolicy(True, 0, 5, Strategy.SURGE)
    assert s.proxy_username == "user"
    assert s.proxy_password is not None
    assert s.proxy_password.get_secret_value() == "pw"
    assert s.proxy_port == 3128
    assert s.health_check_url == "https://example.com/ip"
    assert s.health_check_timeout == 2.5
    assert s.pending_timeout == 300
    assert s.only_host_ip is True
    assert s.allow_open_proxy is True


def test_blank_optional_env_means_unset() -> None:
    loaded = load({"PROXY_PASSWORD": "", "HEALTH_CHECK_URL": " "})
    assert loaded.settings.proxy_password is None
    assert loaded.settings.health_check_url is None
    assert loaded.sources["proxy_password"] == "env PROXY_PASSWORD"


# --- strict booleans and invalid values ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("True", True),
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        ("False", False),
        ("false", False),
        ("0", False),
        ("no", False),
        ("NO", False),
    ],
)
def test_boolean_spellings_accepted(text: str, expected: bool) -> None:
    assert load({"ROLLING_DEPLOYMENT": text}).settings.rolling_deployment is expected


@pytest.mark.parametrize("text", ["maybe", "on", "off", "2", "t", "y", "", "-1"])
def test_boolean_other_spellings_rejected(text: str) -> None:
    message = config_error({"ROLLING_DEPLOYMENT": text})
    assert message.startswith("ROLLING_DEPLOYMENT: must be true or false")
    assert message.endswith(f"got {text!r}")


def test_boolean_in_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'rolling_deployment = true\nonly_host_ip = "no"\n')
    s = load(config_path=path).settings
    assert s.rolling_deployment is True
    assert s.only_host_ip is False
    bad = write(tmp_path / "bad.toml", "[providers.local.default]\nenabled = 1\n")
    message = config_error(config_path=bad)
    assert message.startswith(f"{bad}: providers.local.default.enabled: must be true or false")


def test_batch_size_zero_rejected() -> None:
    assert config_error({"ROLLING_BATCH_SIZE": "0"}) == (
        "ROLLING_BATCH_SIZE: must be a positive integer, got '0'"
    )


def test_min_available_negative_rejected() -> None:
    assert config_error({"ROLLING_MIN_AVAILABLE": "-1"}) == (
        "ROLLING_MIN_AVAILABLE: must be a non-negative integer, got '-1'"
    )


def test_toml_value_error_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "cloudproxy.toml", "[providers.local.default]\nmin_scaling = -2\n")
    assert config_error(config_path=path) == (
        f"{path}: providers.local.default.min_scaling: must be a non-negative integer, got -2"
    )


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"AGE_LIMIT": "1h"}, "AGE_LIMIT: must be a non-negative integer, got '1h'"),
        ({"PROXY_PORT": "70000"}, "PROXY_PORT: must be a port number from 1 to 65535, got '70000'"),
        ({"PROXY_PORT": "0"}, "PROXY_PORT: must be a port number from 1 to 65535, got '0'"),
        ({"ROLLING_STRATEGY": "blue-green"}, "ROLLING_STRATEGY: must be one of: replace, surge"),
        ({"HEALTH_CHECK_URL": "ftp://x"}, "HEALTH_CHECK_URL: must be an http:// or https:// URL"),
        ({"HEALTH_CHECK_URL": "example.com"}, "HEALTH_CHECK_URL: must be an http:// or https://"),
        ({"HEALTH_CHECK_TIMEOUT": "0"}, "HEALTH_CHECK_TIMEOUT: must be a positive number of"),
        ({"HEALTH_CHECK_TIMEOUT": "nan"}, "HEALTH_CHECK_TIMEOUT: must be a positive number of"),
        ({"PENDING_TIMEOUT": "0"}, "PENDING_TIMEOUT: must be a positive whole number of seconds"),
        ({"LOCAL_BOOT_DELAY": "-1"}, "LOCAL_BOOT_DELAY: must be a non-negative number of seconds"),
        ({"LOCAL_ENABLED": "on"}, "LOCAL_ENABLED: must be true or false"),
    ],
)
def test_invalid_values_name_the_env_var(environ: dict[str, str], expected: str) -> None:
    assert config_error(environ).startswith(expected)


def test_toml_boolean_is_not_a_number(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "age_limit = true\n")
    assert config_error(config_path=path) == (
        f"{path}: age_limit: must be a non-negative integer, got True"
    )


def test_max_scaling_below_min_scaling_rejected() -> None:
    message = config_error({"LOCAL_MIN_SCALING": "4", "LOCAL_MAX_SCALING": "3"})
    assert message == "LOCAL_MAX_SCALING: must be >= min_scaling (4), got '3'"
    s = load({"LOCAL_MIN_SCALING": "4", "LOCAL_MAX_SCALING": "4"}).settings
    assert s.providers["local"]["default"].max_scaling == 4


def test_several_errors_reported_on_one_line() -> None:
    message = config_error({"ROLLING_BATCH_SIZE": "0", "AGE_LIMIT": "-5"})
    assert "ROLLING_BATCH_SIZE: must be a positive integer" in message
    assert "AGE_LIMIT: must be a non-negative integer" in message


# --- providers from the environment ---------------------------------------------------------


def test_default_and_named_instances_from_env() -> None:
    loaded = load(
        {
            "DIGITALOCEAN_ENABLED": "true",
            "DIGITALOCEAN_MIN_SCALING": "5",
            "DIGITALOCEAN_MAX_SCALING": "8",
            "DIGITALOCEAN_SECONDACCOUNT_MIN_SCALING": "1",
            "LOCAL_BOOT_DELAY": "0.5",
        }
    )
    providers = loaded.settings.providers
    assert set(providers) == {"digitalocean", "local"}
    assert set(providers["digitalocean"]) == {"default", "secondaccount"}
    default = providers["digitalocean"]["default"]
    assert (default.enabled, default.min_scaling, default.max_scaling) == (True, 5, 8)
    second = providers["digitalocean"]["secondaccount"]
    assert (second.enabled, second.min_scaling) == (False, 1)  # exists, but not enabled
    local = providers["local"]["default"]
    assert isinstance(local, LocalSettings)
    assert local.boot_delay == 0.5
    assert local.enabled is False
    assert [(p, i) for p, i, _ in enabled_instances(loaded.settings)] == [
        ("digitalocean", "default")
    ]
    assert (
        loaded.sources["providers.digitalocean.secondaccount.min_scaling"]
        == "env DIGITALOCEAN_SECONDACCOUNT_MIN_SCALING"
    )


def test_explicit_default_instance_in_env() -> None:
    s = load({"HETZNER_DEFAULT_MIN_SCALING": "7"}).settings
    assert s.providers["hetzner"]["default"].min_scaling == 7
    agreeing = {"HETZNER_MIN_SCALING": "7", "HETZNER_DEFAULT_MIN_SCALING": "7"}
    assert load(agreeing).settings.providers["hetzner"]["default"].min_scaling == 7
    message = config_error({"HETZNER_MIN_SCALING": "1", "HETZNER_DEFAULT_MIN_SCALING": "7"})
    assert "HETZNER_DEFAULT_MIN_SCALING" in message
    assert "HETZNER_MIN_SCALING" in message


def test_unrelated_env_vars_ignored() -> None:
    loaded = load(
        {
            "AWS_PROFILE": "work",
            "AWS_DEFAULT_OUTPUT": "json",
            "GCP_CREDENTIALS_FILE": "p",
            "VULTR": "x",
            "LOCAL_": "x",
            "HOME": "/root",
            "PATH": "/bin",
            "DIGITALOCEAN_END_POINT": "http://127.0.0.1/v2/",
        }
    )
    assert loaded.settings.providers == {}
    assert loaded.warnings == ()


def test_env_var_with_invalid_instance_name_is_ignored_with_warning() -> None:
    loaded = load({"AWS_XRAY_SDK_ENABLED": "true", "LOCAL_SECOND_ACCOUNT_MIN_SCALING": "2"})
    assert loaded.settings.providers == {}
    assert len(loaded.warnings) == 2
    assert any("LOCAL_SECOND_ACCOUNT_MIN_SCALING" in w for w in loaded.warnings)


class _TokenSettings(InstanceSettings):
    """A throwaway provider with multi-word and secret settings, as adapters will add."""

    token: OptionalText = None
    access_token: OptionalSecret = None
    # A kind of its own: a secret of at least 8 characters (SecretStr refuses a non-string).
    pin: Annotated[
        SecretStr | None,
        Kind("a PIN of 8 characters or more", SecretStr, optional=True, min_length=8),
    ] = None


TOKEN_REGISTRY: dict[str, type[InstanceSettings]] = {"x": _TokenSettings, **PROVIDER_SETTINGS}


def test_longest_setting_suffix_decides_the_instance() -> None:
    loaded = load(
        {
            "X_ACCESS_TOKEN": "t-default",
            "X_EU_ACCESS_TOKEN": "t-eu",
            "X_EU_TOKEN": "plain-eu",
            "X_US-WEST_MIN_SCALING": "4",
        },
        registry=TOKEN_REGISTRY,
    )
    x = loaded.settings.providers["x"]
    assert set(x) == {"default", "eu", "us-west"}  # no instance "access" appeared
    default, eu = x["default"], x["eu"]
    assert isinstance(default, _TokenSettings)
    assert isinstance(eu, _TokenSettings)
    assert default.access_token is not None
    assert default.access_token.get_secret_value() == "t-default"
    assert default.token is None
    assert eu.access_token is not None
    assert eu.access_token.get_secret_value() == "t-eu"
    assert eu.token == "plain-eu"
    assert x["us-west"].min_scaling == 4
    assert "x" not in PROVIDER_SETTINGS


def test_new_field_in_a_provider_model_is_settable_by_env_and_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[providers.x.eu]\ntoken = "from-file"\n')
    loaded = load({"X_TOKEN": "from-env"}, path, registry=TOKEN_REGISTRY)
    assert getattr(loaded.settings.providers["x"]["default"], "token", None) == "from-env"
    assert getattr(loaded.settings.providers["x"]["eu"], "token", None) == "from-file"


def test_env_name_helper() -> None:
    assert env_name("digitalocean", "default", "access_token") == "DIGITALOCEAN_ACCESS_TOKEN"
    assert env_name("digitalocean", "eu", "access_token") == "DIGITALOCEAN_EU_ACCESS_TOKEN"


# --- providers from TOML -------------------------------------------------------------------


def test_provider_tables_in_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        "[providers.local.default]\nenabled = true\nmin_scaling = 3\nboot_delay = 1.5\n"
        "[providers.digitalocean.secondaccount]\nenabled = true\nmin_scaling = 1\n"
        'max_scaling = 2\napi_endpoint = "http://127.0.0.1:9/v2/"\n'
        "[providers.aws.spare]\n",
    )
    loaded = load(config_path=path)
    s = loaded.settings
    local = s.providers["local"]["default"]
    assert isinstance(local, LocalSettings)
    assert (local.enabled, local.min_scaling, local.boot_delay) == (True, 3, 1.5)
    second = s.providers["digitalocean"]["secondaccount"]
    assert (second.min_scaling, second.max_scaling) == (1, 2)
    assert second.api_endpoint == "http://127.0.0.1:9/v2/"
    assert s.providers["aws"]["spare"].enabled is False  # an empty table is a disabled instance
    assert [(p, i) for p, i, _ in enabled_instances(s)] == [
        ("digitalocean", "secondaccount"),
        ("local", "default"),
    ]
    assert instance_settings(loaded, "local", "default") is local
    with pytest.raises(UsageError, match="aws/default"):
        instance_settings(loaded, "aws", "default")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[providers.local.default]\nboot_dealy = 1\n",
            "providers.local.default.boot_dealy: unknown setting",
        ),
        ("[providers.linode.default]\nenabled = true\n", "providers.linode: unknown provider"),
        ("age_limt = 5\n", "age_limt: unknown setting"),
        ("[rolling]\nenabled = true\n", "rolling: unknown setting"),
        ("[providers.local]\nenabled = true\n", "providers.local.enabled: expected a table"),
        ("[providers.local.Second_Account]\n", "providers.local.Second_Account: instance names"),
        ("providers = 3\n", "providers: must be a table"),
    ],
)
def test_toml_structure_errors(tmp_path: Path, toml: str, expected: str) -> None:
    path = write(tmp_path / "c.toml", toml)
    assert config_error(config_path=path).startswith(f"{path}: {expected}")


def test_invalid_toml_syntax_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "age_limit = = 3\n")
    message = config_error(config_path=path)
    assert message.startswith(f"{path}: invalid TOML")


# --- which file ----------------------------------------------------------------------------


def test_file_resolution_order(tmp_path: Path, user_dir: Path) -> None:
    cwd = Path.cwd()
    explicit = write(tmp_path / "explicit.toml", "age_limit = 1\n")
    from_env = write(tmp_path / "from-env.toml", "age_limit = 2\n")
    local = write(cwd / "cloudproxy.toml", "age_limit = 3\n")
    per_user = write(user_dir / "cloudproxy.toml", "age_limit = 4\n")
    environ = {"CLOUDPROXY_CONFIG": str(from_env)}

    def age(environ: dict[str, str], config_path: Path | None = None) -> int:
        return load(environ, config_path, user_dir=user_dir).settings.age_limit

    assert age(environ, explicit) == 1
    assert age(environ) == 2
    assert age({}) == 3
    local.unlink()
    assert age({}) == 4
    per_user.unlink()
    assert age({}) == 0
    assert find_config_file(None, {}, user_config_dir=user_dir) is None


def test_file_found_in_cwd_is_recorded_as_absolute(user_dir: Path) -> None:
    write(Path.cwd() / "cloudproxy.toml", "age_limit = 3\n")
    loaded = load(user_dir=user_dir)
    assert loaded.file == Path.cwd() / "cloudproxy.toml"
    assert loaded.sources["age_limit"] == f"file {Path.cwd() / 'cloudproxy.toml'}"


def test_relative_config_path_is_made_absolute() -> None:
    write(Path.cwd() / "rel.toml", "age_limit = 9\n")
    loaded = load(config_path=Path("rel.toml"))
    assert loaded.file == Path.cwd() / "rel.toml"
    assert loaded.settings.age_limit == 9


def test_user_config_dir_defaults_to_platformdirs(tmp_path: Path) -> None:
    # XDG_CONFIG_HOME is pointed at tmp_path/xdg by the autouse fixture (platformdirs honours it
    # on Linux only, hence the skip elsewhere).
    import platformdirs

    expected = Path(platformdirs.user_config_dir("cloudproxy"))
    if not expected.is_relative_to(tmp_path):
        pytest.skip("platformdirs ignores XDG_CONFIG_HOME on this platform")
    write(expected / "cloudproxy.toml", "age_limit = 11\n")
    assert load_config(None, {}).settings.age_limit == 11


def test_missing_explicit_files_are_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    write(Path.cwd() / "cloudproxy.toml", "age_limit = 3\n")  # must not be used as a fallback
    assert config_error(config_path=missing) == f"--config: config file {missing} does not exist"
    message = config_error({"CLOUDPROXY_CONFIG": str(missing)})
    assert message == f"CLOUDPROXY_CONFIG: config file {missing} does not exist"
    assert config_error(config_path=tmp_path).startswith(f"--config: {tmp_path} is not a file")


# --- describe and secrets ------------------------------------------------------------------


def test_describe_lists_every_setting_with_source(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[providers.local.default]\nenabled = true\n")
    loaded = load({"AGE_LIMIT": "60", "DIGITALOCEAN_EU_MIN_SCALING": "1"}, path)
    rows = describe(loaded)
    assert [r.name for r in rows] == [
        *GLOBAL_SETTINGS,
        "providers.digitalocean.eu.enabled",
        "providers.digitalocean.eu.min_scaling",
        "providers.digitalocean.eu.max_scaling",
        "providers.digitalocean.eu.api_endpoint",
        "providers.digitalocean.eu.access_token",
        "providers.digitalocean.eu.region",
        "providers.digitalocean.eu.size",
        "providers.digitalocean.eu.image",
        "providers.local.default.enabled",
        "providers.local.default.min_scaling",
        "providers.local.default.max_scaling",
        "providers.local.default.api_endpoint",
        "providers.local.default.boot_delay",
    ]
    by_name = {r.name: r for r in rows}
    assert by_name["age_limit"] == ConfigRow("age_limit", "60", "env AGE_LIMIT")
    assert by_name["rolling_deployment"] == ConfigRow("rolling_deployment", "false", "default")
    assert by_name["rolling_strategy"].value == "replace"
    assert by_name["proxy_password"] == ConfigRow("proxy_password", UNSET, "default")
    assert by_name["health_check_url"].value == UNSET
    assert by_name["providers.local.default.enabled"] == ConfigRow(
        "providers.local.default.enabled", "true", f"file {path}"
    )
    assert by_name["providers.digitalocean.eu.min_scaling"].source == (
        "env DIGITALOCEAN_EU_MIN_SCALING"
    )
    assert by_name["providers.local.default.max_scaling"].value == UNSET
    assert {r.name for r in rows} == set(loaded.sources)


def test_secrets_are_masked_in_describe() -> None:
    loaded = load(
        {"PROXY_PASSWORD": "hunter2-pw", "X_EU_ACCESS_TOKEN": "tok-123456"},
        registry=TOKEN_REGISTRY,
    )
    rows = {r.name: r for r in describe(loaded)}
    assert rows["proxy_password"] == ConfigRow("proxy_password", MASKED, "env PROXY_PASSWORD")
    assert rows["providers.x.eu.access_token"].value == MASKED
    assert rows["providers.x.eu.pin"].value == UNSET
    assert rows["providers.x.eu.token"].value == UNSET
    dumped = repr(describe(loaded))
    assert "hunter2" not in dumped
    assert "tok-123456" not in dumped


def test_secrets_never_in_error_messages(tmp_path: Path) -> None:
    message = config_error({"X_PIN": "sesame1"}, registry=TOKEN_REGISTRY)
    assert message.startswith("X_PIN: ")
    assert "sesame1" not in message
    typo = write(tmp_path / "typo.toml", 'proxy_pasword = "hunter2-pw"\n')
    assert "hunter2" not in config_error(config_path=typo)
    wrong_type = write(tmp_path / "type.toml", 'proxy_password = ["hunter2-pw"]\n')
    message = config_error(config_path=wrong_type)
    assert message.startswith(f"{wrong_type}: proxy_password: must be a string")
    assert "hunter2" not in message
    broken = write(tmp_path / "broken.toml", 'proxy_password = "hunter2-pw\n')
    message = config_error(config_path=broken)
    assert "invalid TOML" in message
    assert "hunter2" not in message
    conflict = {"X_ACCESS_TOKEN": "tok-aaaa", "X_DEFAULT_ACCESS_TOKEN": "tok-bbbb"}
    message = config_error(conflict, registry=TOKEN_REGISTRY)
    assert "tok-" not in message


# --- the example file -----------------------------------------------------------------------


def test_example_file_runs_the_local_provider() -> None:
    loaded = load(config_path=EXAMPLE)
    s = loaded.settings
    assert [(p, i) for p, i, _ in enabled_instances(s)] == [("local", "default")]
    local = instance_settings(loaded, "local", "default")
    assert isinstance(local, LocalSettings)
    assert (local.min_scaling, local.boot_delay) == (3, 0.0)
    assert s.rolling_policy() == RollingPolicy(True, 2, 1, Strategy.REPLACE)
    assert s.rolling_min_available < local.min_scaling
    assert s.age_limit == 600
    assert s.proxy_username == "cloudproxy"
    assert s.proxy_password is not None
    password = s.proxy_password.get_secret_value()
    assert password == "change-me"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", password)
    assert loaded.sources["rolling_deployment"] == f"file {EXAMPLE}"


def test_example_file_commented_sections_are_valid(tmp_path: Path) -> None:
    # Uncommenting the documented options must give a valid configuration.
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^# ((?:\[providers\.|[a-z_]+ = ).*)$", r"\1", text)
    assert uncommented != text
    path = write(tmp_path / "full.toml", uncommented)
    s = load(config_path=path).settings
    assert s.providers["digitalocean"]["secondaccount"].enabled is True
    assert s.providers["digitalocean"]["default"].min_scaling == 5
    assert s.health_check_url == "https://example.com/"


@pytest.mark.parametrize("name", ["eu-", "-eu", "a" * 41, "EU_X"])
def test_instance_names_that_clouds_would_refuse_are_rejected(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "c.toml", f'[providers.local."{name}"]\nenabled = true\n')
    with pytest.raises(ConfigError, match="instance names"):
        load({}, path)


def test_host_ip_with_a_zone_is_rejected() -> None:
    with pytest.raises(ConfigError, match="HOST_IP"):
        load({"HOST_IP": "fe80::1%$(reboot)"})
    assert load({"HOST_IP": "2001:db8::1"}).settings.host_ip == "2001:db8::1"


def test_boto3s_own_default_region_is_not_read_as_our_default_instances_region() -> None:
    # AWS_DEFAULT_REGION looks like "AWS_" + instance "default" + "REGION", but it is boto3's
    # variable: users often set it beside AWS_REGION, to another value.
    loaded = load({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"})
    aws = loaded.settings.providers["aws"]["default"]
    assert isinstance(aws, AwsSettings) and aws.region == "eu-west-1"
    assert loaded.sources["providers.aws.default.region"] == "env AWS_REGION"
    # The explicit default spelling still works for a setting boto3 does not own.
    loaded = load({"AWS_DEFAULT_MIN_SCALING": "4"})
    assert loaded.settings.providers["aws"]["default"].min_scaling == 4


# --- start-up cost -------------------------------------------------------------------------


def test_start_up_and_loading_a_config_import_no_pydantic(tmp_path: Path) -> None:
    # Issue 8.9: pydantic cost about 0.1 s of every command's start (import, model building,
    # plugin scan); the settings models are the standard library's now and must stay so.
    path = write(tmp_path / "c.toml", "age_limit = 60\n[providers.local.default]\nenabled = true\n")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import cloudproxy_cli.cli.app\n"
        "from cloudproxy_cli.config import describe, load_config\n"
        f"loaded = load_config(Path({str(path)!r}), {{'PROXY_PASSWORD': 'pw', 'AGE_LIMIT': '5'}},"
        f" user_config_dir=Path({str(tmp_path)!r}))\n"
        "assert loaded.settings.age_limit == 5 and describe(loaded)\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0].startswith('pydantic')))\n"
    )
    done = run_python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
