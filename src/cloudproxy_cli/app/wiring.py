"""Turns settings and `rolling set` overrides into runnable instances (adapters imported lazily)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cloudproxy_cli.app.service import InstanceRuntime
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
    from cloudproxy_cli.config import InstanceSettings, LoadedConfig, Settings
    from cloudproxy_cli.core.ports import Prober, Provider

# What the spec's log lines call one proxy of each provider.
RESOURCE_NOUNS = {
    "digitalocean": "droplet",
    "aws": "instance",
    "gcp": "instance",
    "hetzner": "server",
    "vultr": "instance",
    "local": "proxy",
}


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
        age_limit=timedelta(seconds=settings.age_limit) if settings.age_limit else None,
        pending_timeout=timedelta(seconds=settings.pending_timeout),
        progress_deadline=timedelta(seconds=settings.rolling_progress_deadline),
        resource_noun=RESOURCE_NOUNS.get(provider, "proxy"),
    )


def make_provider(
    provider: str, instance: str, inst: InstanceSettings, settings: Settings, state_path: Path
) -> Provider:
    """The adapter for one instance. Each adapter module (and its SDK) is imported only here."""
    if provider == "local":
        from cloudproxy_cli.adapters.local import LocalProvider
        from cloudproxy_cli.config import LocalSettings

        assert isinstance(inst, LocalSettings)
        username, password = settings.proxy_credentials()
        return LocalProvider(
            instance=instance,
            # The local inventory lives beside the state file, one directory per instance.
            directory=state_path.parent / "local" / instance,
            username=username,
            password=password,
            boot_delay_s=inst.boot_delay,
        )
    # A cloud adapter module exposes ``from_settings(instance, settings, proxy)``; importing it
    # (and so its SDK) happens only for the instances that are enabled.
    from cloudproxy_cli.adapters.user_data import proxy_settings

    module = importlib.import_module(f"cloudproxy_cli.adapters.{provider}")
    factory: Callable[..., Provider] = module.from_settings
    return factory(instance=instance, settings=inst, proxy=proxy_settings(settings))


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

    remote = sorted(providers - {"local"})
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
