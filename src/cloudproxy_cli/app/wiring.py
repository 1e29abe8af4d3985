"""Turns settings and `rolling set` overrides into runnable instances (adapters imported lazily)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from cloudproxy_cli.config import (
    AwsSettings,
    DigitalOceanSettings,
    GcpSettings,
    HetznerSettings,
    InstanceSettings,
    LocalSettings,
    VultrSettings,
)
from cloudproxy_cli.core.errors import ConfigError, UsageError
from cloudproxy_cli.core.model import InstanceKey
from cloudproxy_cli.core.policy import (
    EffectiveRolling,
    InstancePolicy,
    RollingPolicy,
    rolling_in_force,
)
from cloudproxy_cli.core.state import RollingOverrides

if TYPE_CHECKING:
    from cloudproxy_cli.adapters.state_file import StateFile
    from cloudproxy_cli.app.service import InstanceRuntime
    from cloudproxy_cli.config import LoadedConfig, Settings
    from cloudproxy_cli.core.ports import Prober, Provider


class ProviderSpec(NamedTuple):
    """One provider: its settings model, what its log lines call a proxy, and its factory.

    ``factory`` is ``"module:function"``, imported only when an instance is built: its module
    imports the adapter, and the adapter its SDK. The function takes keyword arguments
    ``instance``, ``settings`` (a ``settings_model``) and ``proxy``, plus ``state_dir`` for a
    provider that is not ``remote``.
    """

    name: str
    settings_model: type[InstanceSettings]
    resource_noun: str
    factory: str
    remote: bool = True  # VMs elsewhere: user data to deploy, a health URL they can reach

    def load_factory(self) -> Callable[..., Provider]:
        module, _, function = self.factory.partition(":")
        made: Callable[..., Provider] = getattr(importlib.import_module(module), function)
        return made


_FACTORIES = "cloudproxy_cli.app.factories"

PROVIDERS: Mapping[str, ProviderSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ProviderSpec("local", LocalSettings, "proxy", f"{_FACTORIES}:local", remote=False),
            ProviderSpec(
                "digitalocean", DigitalOceanSettings, "droplet", f"{_FACTORIES}:digitalocean"
            ),
            ProviderSpec("aws", AwsSettings, "instance", f"{_FACTORIES}:aws"),
            ProviderSpec("gcp", GcpSettings, "instance", f"{_FACTORIES}:gcp"),
            ProviderSpec("hetzner", HetznerSettings, "server", f"{_FACTORIES}:hetzner"),
            ProviderSpec("vultr", VultrSettings, "instance", f"{_FACTORIES}:vultr"),
        )
    }
)

# What the spec's log lines call one proxy of each provider.
RESOURCE_NOUNS: Mapping[str, str] = MappingProxyType(
    {name: spec.resource_noun for name, spec in PROVIDERS.items()}
)


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def effective_rolling(loaded: LoadedConfig, overrides: RollingOverrides) -> EffectiveRolling:
    return rolling_in_force(loaded.settings.rolling_policy(), loaded.sources, overrides)


def instance_policy(
    settings: Settings, provider: str, inst: InstanceSettings, rolling: RollingPolicy
) -> InstancePolicy:
    return InstancePolicy(
        rolling=rolling,
        min_scaling=inst.min_scaling,
        max_scaling=inst.max_scaling,
        max_creates_per_run=settings.max_creates_per_run,
        age_limit=timedelta(seconds=settings.age_limit) if settings.age_limit else None,
        pending_timeout=timedelta(seconds=settings.pending_timeout),
        progress_deadline=timedelta(seconds=settings.rolling_progress_deadline),
        resource_noun=RESOURCE_NOUNS.get(provider, "proxy"),
    )


def provider_spec(provider: str) -> ProviderSpec:
    spec = PROVIDERS.get(provider)
    if spec is None:
        raise ConfigError(f"unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
    return spec


def make_provider(
    provider: str,
    instance: str,
    inst: InstanceSettings,
    settings: Settings,
    state_path: Path,
    environ: Mapping[str, str] | None = None,
) -> Provider:
    """The adapter for one instance. Each adapter module (and its SDK) is imported only here,
    and only for the instances that are enabled."""
    spec = provider_spec(provider)
    if not isinstance(inst, spec.settings_model):
        raise TypeError(f"{provider}/{instance}: settings are not {spec.settings_model.__name__}")
    from cloudproxy_cli.app import factories

    factory = spec.load_factory()
    extra: dict[str, Any]
    if spec.remote:
        proxy = factories.proxy_settings(settings)
        extra = {"environ": environ}
    else:
        proxy = factories.local_proxy_settings(settings)
        extra = {"state_dir": state_path.parent}
    return factory(instance=instance, settings=inst, proxy=proxy, **extra)


def select_instances(
    settings: Settings, provider: str | None, instance: str | None
) -> list[tuple[str, str, InstanceSettings]]:
    """The enabled instances, narrowed by ``--provider``/``--instance``."""
    enabled = settings.enabled_instances()
    if not enabled:
        raise ConfigError(
            "no provider instance is enabled: set LOCAL_ENABLED=True (or another "
            "{PROVIDER}_ENABLED), or enable one in the config file"
        )
    chosen = [
        (p, i, s)
        for p, i, s in enabled
        if (provider is None or p == provider) and (instance is None or i == instance)
    ]
    if not chosen:
        names = ", ".join(f"{p}/{i}" for p, i, _ in enabled)
        wanted = "/".join(x for x in (provider, instance) if x)
        raise UsageError(f"no enabled provider instance matches {wanted!r} (enabled: {names})")
    return chosen


def build_runtimes(
    loaded: LoadedConfig,
    overrides: RollingOverrides,
    state_path: Path,
    *,
    provider: str | None = None,
    instance: str | None = None,
) -> list[InstanceRuntime]:
    from cloudproxy_cli.app.service import InstanceRuntime  # the run's shell: not for status

    settings = loaded.settings
    rolling = effective_rolling(loaded, overrides).policy
    return [
        InstanceRuntime(
            key=InstanceKey(p, i),
            provider=make_provider(p, i, inst, settings, state_path),
            policy=instance_policy(settings, p, inst, rolling),
            proxy_port=settings.proxy_port,
        )
        for p, i, inst in select_instances(settings, provider, instance)
    ]


def make_prober(settings: Settings, providers: set[str]) -> Prober:
    """The health prober for a run over ``providers``.

    Without HEALTH_CHECK_URL the prober serves its own origin on 127.0.0.1, which only proxies
    on this machine can reach: a cloud VM would fail every probe, so that is refused up front.
    """
    from cloudproxy_cli.adapters.health import HttpProber

    remote = sorted(p for p in providers if provider_spec(p).remote)
    if remote and settings.health_check_url is None:
        raise ConfigError(
            f"HEALTH_CHECK_URL: required when a cloud provider is enabled ({', '.join(remote)}): "
            "the built-in origin on 127.0.0.1 is reachable only by local proxies"
        )
    username, password = settings.proxy_credentials()
    return HttpProber(
        username=username,
        password=password,
        timeout_s=settings.health_check_timeout,
        url=settings.health_check_url,
    )


if TYPE_CHECKING:
    from collections.abc import Mapping

    from cloudproxy_cli.adapters.state_file import StateFile


def make_state_store(cli_value: Path | None, environ: Mapping[str, str]) -> StateFile:
    """The state file: ``--state-file``, else ``$CLOUDPROXY_STATE_FILE``, else the default."""
    from cloudproxy_cli.adapters.state_file import StateFile

    return StateFile.resolve(cli_value, environ)
