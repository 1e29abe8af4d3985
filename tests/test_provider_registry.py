"""The provider registry: one table of providers, and adapters that see only plain values."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cloudproxy_cli.adapters as adapters_package
from cloudproxy_cli.adapters.digitalocean import DigitalOceanProvider
from cloudproxy_cli.adapters.local import LocalProvider
from cloudproxy_cli.app.wiring import PROVIDERS, RESOURCE_NOUNS, make_provider, provider_spec
from cloudproxy_cli.config import (
    PROVIDER_SETTINGS,
    DigitalOceanSettings,
    LocalSettings,
    SecretStr,
    Settings,
)
from cloudproxy_cli.core.errors import ConfigError

ADAPTERS = Path(adapters_package.__file__).parent
# Every module a cloud adapter is made of (local.py starts its proxies with the environment).
PLAIN_VALUE_MODULES = (
    "common.py",
    "rest.py",
    "user_data.py",
    "digitalocean.py",
    "aws.py",
    "gcp.py",
    "hetzner.py",
    "vultr.py",
)
CREDENTIALS = Settings(proxy_username="user", proxy_password=SecretStr("pass-word"))


def test_the_registry_knows_every_configurable_provider_with_its_settings_model() -> None:
    assert {name: spec.settings_model for name, spec in PROVIDERS.items()} == PROVIDER_SETTINGS
    assert all(name == spec.name for name, spec in PROVIDERS.items())


def test_resource_nouns_come_from_the_registry() -> None:
    assert dict(RESOURCE_NOUNS) == {name: spec.resource_noun for name, spec in PROVIDERS.items()}
    assert RESOURCE_NOUNS["digitalocean"] == "droplet"
    assert RESOURCE_NOUNS["hetzner"] == "server"
    assert RESOURCE_NOUNS["local"] == "proxy"


@pytest.mark.parametrize("name", sorted(PROVIDER_SETTINGS))
def test_every_factory_path_names_a_function(name: str) -> None:
    assert callable(PROVIDERS[name].load_factory())


def test_only_local_is_not_remote() -> None:
    assert [name for name, spec in PROVIDERS.items() if not spec.remote] == ["local"]


def test_an_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown provider 'ovh' \(known: local, "):
        provider_spec("ovh")


def test_make_provider_reads_the_sdk_variable_from_the_environ_it_is_given(
    tmp_path: Path,
) -> None:
    settings = DigitalOceanSettings(enabled=True, access_token=SecretStr("t0ken"))
    endpoint = "http://127.0.0.1:9/v2/"
    provider = make_provider(
        "digitalocean",
        "default",
        settings,
        CREDENTIALS,
        tmp_path / "state.json",
        environ={"DIGITALOCEAN_END_POINT": endpoint},
    )
    assert isinstance(provider, DigitalOceanProvider)
    assert provider.endpoint == endpoint


def test_make_provider_puts_the_local_inventory_beside_the_state_file(tmp_path: Path) -> None:
    provider = make_provider(
        "local", "eu", LocalSettings(enabled=True), CREDENTIALS, tmp_path / "state.json"
    )
    assert isinstance(provider, LocalProvider)
    assert provider.list_proxies() == []
    # Made by the first create, not by building or listing (reads never write).
    assert not (tmp_path / "local").exists()
    provider.create_proxy()
    try:
        assert [p.name for p in (tmp_path / "local" / "eu").glob("*.json")] != []
    finally:
        for proxy in provider.list_proxies():
            provider.delete_proxy(proxy.id)


def test_make_provider_refuses_another_providers_settings(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not DigitalOceanSettings"):
        make_provider(
            "digitalocean", "default", LocalSettings(), CREDENTIALS, tmp_path / "state.json"
        )


def _imports_and_attributes(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: set[str] = set()
    attributes: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            attributes.add(f"{node.value.id}.{node.attr}")
    return modules, attributes


@pytest.mark.parametrize("module", PLAIN_VALUE_MODULES)
def test_cloud_adapters_neither_import_the_settings_nor_read_the_environment(module: str) -> None:
    modules, attributes = _imports_and_attributes(ADAPTERS / module)
    assert "cloudproxy_cli.config" not in modules
    assert not {"os.environ", "os.getenv"} & attributes
