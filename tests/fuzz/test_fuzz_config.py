"""Random environments and TOML documents: loading succeeds within the documented limits, or
raises one ConfigError line that names a setting and never shows a secret."""

from __future__ import annotations

import ipaddress
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloudproxy_cli.config import (
    _INSTANCE_NAME,
    GLOBAL_SETTINGS,
    PROVIDER_SETTINGS,
    LoadedConfig,
    SecretStr,
    Settings,
    is_secret,
    load_config,
)
from cloudproxy_cli.core.errors import ConfigError
from cloudproxy_cli.core.policy import Strategy
from tests.fuzz.support import FUZZ, Reliability

pytestmark = pytest.mark.fuzz

# Secrets are generated with this marker so a leak is recognisable in any message.
SECRET_MARK = "s3cr3t-"

SECRET_GLOBALS = {k for k in GLOBAL_SETTINGS if is_secret(Settings.model_fields[k])}

junk_text = st.text(max_size=30)
numbers_as_text = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["", " ", "0x10", "1e3", "1_000", "+5", " 7 ", "\uff19", "9" * 5000, "nan", "-0"]
    ),
)
flag_text = st.sampled_from(
    ["true", "false", "True", "FALSE", " yes ", "no", "1", "0", "on", "off", "t", "", "2"]
)
env_value = st.one_of(junk_text, numbers_as_text, flag_text, st.sampled_from([*Strategy]))
secret_value = junk_text.map(lambda s: SECRET_MARK + s)


def env_names() -> st.SearchStrategy[str]:
    """Global names, provider names for default and random instances, and near misses."""
    instance = st.one_of(
        st.just(""),
        st.just("DEFAULT_"),
        st.from_regex(r"[A-Z0-9]{1,6}_", fullmatch=True),
        st.text(max_size=6).map(lambda s: s + "_"),
    )
    provider = st.sampled_from(sorted(PROVIDER_SETTINGS))

    def provider_name(p: str, inst: str, key: str) -> str:
        return f"{p.upper()}_{inst}{key.upper()}"

    per_provider = st.builds(
        provider_name,
        provider,
        instance,
        st.sampled_from(sorted({k for m in PROVIDER_SETTINGS.values() for k in m.model_fields})),
    )
    return st.one_of(st.sampled_from([k.upper() for k in GLOBAL_SETTINGS]), per_provider)


def is_secret_env(name: str) -> bool:
    if name.lower() in SECRET_GLOBALS:
        return True
    return any(
        name.endswith(key.upper()) and is_secret(info)
        for model in PROVIDER_SETTINGS.values()
        for key, info in model.model_fields.items()
    )


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(env_names(), max_size=8, unique=True))
    return {n: draw(secret_value if is_secret_env(n) else env_value) for n in names}


def check_loaded(loaded: LoadedConfig) -> None:
    """The documented constraints of every setting that loaded."""
    s = loaded.settings
    assert s.age_limit >= 0 and s.rolling_min_available >= 0 and s.rolling_batch_size >= 1
    assert isinstance(s.rolling_strategy, Strategy)
    assert 1 <= s.proxy_port <= 65535
    assert math.isfinite(s.health_check_timeout) and s.health_check_timeout > 0
    assert type(s.pending_timeout) is int and s.pending_timeout > 0
    if s.host_ip is not None:
        ipaddress.ip_address(s.host_ip)
    for provider, instances in s.providers.items():
        assert provider in PROVIDER_SETTINGS
        for name, inst in instances.items():
            assert _INSTANCE_NAME.fullmatch(name)
            assert type(inst.min_scaling) is int and inst.min_scaling >= 0
            assert inst.max_scaling is None or inst.max_scaling >= inst.min_scaling
            for key, info in type(inst).model_fields.items():
                if is_secret(info):
                    assert getattr(inst, key) is None or isinstance(getattr(inst, key), SecretStr)


def check_error(err: ConfigError, named: list[str]) -> None:
    message = str(err)
    assert message and "\n" not in message and "\r" not in message, message
    assert SECRET_MARK not in message, message
    assert any(n in message for n in named), (message, named)


def try_load(
    config: Path | None, env: dict[str, str], named: list[str], reliability: Reliability, fault: str
) -> None:
    """Load; either the result meets the constraints or the ConfigError names a setting."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            loaded = load_config(config, env, user_config_dir=Path(tmp))
        except ConfigError as err:
            check_error(err, named)
            reliability.record(fault, "config-error")
            return
    check_loaded(loaded)
    reliability.record(fault, "loaded")


@settings(FUZZ, max_examples=300)
@given(env=environments())
@example(env={"ROLLING_BATCH_SIZE": "9" * 5000})
@example(env={"HEALTH_CHECK_TIMEOUT": "nan", "PROXY_PASSWORD": SECRET_MARK + "x"})
@example(env={"LOCAL_MIN_SCALING": "3", "LOCAL_MAX_SCALING": "2"})
def test_random_environment_loads_or_names_the_setting(
    env: dict[str, str], reliability: Reliability
) -> None:
    try_load(None, env, list(env), reliability, "config/env")


@settings(FUZZ, max_examples=1000)
@given(
    name=st.sampled_from(["AGE_LIMIT", "ROLLING_MIN_AVAILABLE", "LOCAL_MIN_SCALING"]),
    value=st.integers(-(10**6), 10**6),
)
def test_counts_load_exactly_when_non_negative(
    name: str, value: int, reliability: Reliability
) -> None:
    """An oracle for the integer settings: accepted iff >= 0, and then loaded as given."""
    env = {name: str(value), "LOCAL_ENABLED": "true"}
    if value < 0:
        with pytest.raises(ConfigError) as raised:
            load_config(None, env, user_config_dir=Path("/nonexistent-cloudproxy"))
        check_error(raised.value, [name])
        reliability.record("config/env-count", "config-error")
        return
    loaded = load_config(None, env, user_config_dir=Path("/nonexistent-cloudproxy"))
    s = loaded.settings
    got = {
        "AGE_LIMIT": s.age_limit,
        "ROLLING_MIN_AVAILABLE": s.rolling_min_available,
        "LOCAL_MIN_SCALING": s.providers["local"]["default"].min_scaling,
    }[name]
    assert got == value
    reliability.record("config/env-count", "loaded")


# --- TOML ---------------------------------------------------------------------------------

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20),
    st.sampled_from(["replace", "surge", "127.0.0.1", "http://127.0.0.1:1/", ""]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def toml_key(key: str) -> str:
    return json.dumps(key)  # a TOML basic string: JSON escapes are valid TOML escapes


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def known_keys() -> list[str]:
    return sorted({k for m in PROVIDER_SETTINGS.values() for k in m.model_fields})


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    globals_ = draw(
        st.dictionaries(
            st.sampled_from(list(GLOBAL_SETTINGS)) | st.text(min_size=1, max_size=8),
            toml_values,
            max_size=5,
        )
    )
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in globals_.items()]
    tables = draw(
        st.lists(
            st.tuples(
                st.sampled_from(sorted(PROVIDER_SETTINGS)) | st.text(min_size=1, max_size=6),
                st.sampled_from(["default", "eu", "Bad_Name", "-x", "a" * 41])
                | st.text(min_size=1, max_size=6),
                st.dictionaries(
                    st.sampled_from(known_keys()) | st.text(min_size=1, max_size=8),
                    toml_values,
                    max_size=4,
                ),
            ),
            max_size=3,
            unique_by=lambda t: (t[0], t[1]),
        )
    )
    for provider, instance, table in tables:
        lines.append(f"[providers.{toml_key(provider)}.{toml_key(instance)}]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def load_file(data: bytes, reliability: Reliability, fault: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cloudproxy.toml"
        path.write_bytes(data)
        # Every message about a file names the file.
        try_load(path, {}, [str(path)], reliability, fault)


@settings(FUZZ, max_examples=200)
@given(doc=toml_documents())
@example(doc="age_limit = inf\nrolling_batch_size = 1e400\nproxy_port = 99999999999999999999\n")
@example(doc="proxy_password = {a = 1}\n[providers.local.default]\nmin_scaling = -1\n")
@example(doc="providers = 3\n")
@example(doc="[providers.local]\nmin_scaling = 1\n")
def test_random_toml_loads_or_names_the_setting(doc: str, reliability: Reliability) -> None:
    load_file(doc.encode(), reliability, "config/toml")


@settings(FUZZ, max_examples=150)
@given(
    doc=toml_documents(),
    cut=st.integers(0, 10_000),
    junk=st.binary(max_size=8),
)
@example(doc="age_limit = 1\n", cut=3, junk=b"\xff\xfe")
@example(doc="a = 1\n", cut=0, junk=b"\x00")
def test_broken_toml_bytes_are_a_config_error(
    doc: str, cut: int, junk: bytes, reliability: Reliability
) -> None:
    """Truncated documents with junk bytes spliced in (invalid UTF-8, NUL, half a key)."""
    data = doc.encode()
    cut %= len(data) + 1
    load_file(data[:cut] + junk + data[cut:], reliability, "config/toml-bytes")
