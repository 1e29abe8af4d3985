"""`cloudproxy config show`: every effective setting and where it came from."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from cloudproxy_cli.cli.context import options, warn
from cloudproxy_cli.cli.results.config import ConfigResult, SettingRow

if TYPE_CHECKING:
    from cloudproxy_cli.config import LoadedConfig
    from cloudproxy_cli.core.state import RollingOverrides

config_app = typer.Typer(
    help="Inspect the configuration.",
    epilog="Example: cloudproxy config show",
    no_args_is_help=True,
)

# `rolling set` knob -> the setting it overrides.
_OVERRIDDEN = {
    "enabled": "rolling_deployment",
    "min_available": "rolling_min_available",
    "batch_size": "rolling_batch_size",
    "strategy": "rolling_strategy",
}


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> ConfigResult:
    """Print every effective setting and where it came from; secrets are masked.

    A value changed by `rolling set` shows that value, with "rolling set" as its source.

    Example: [bold]cloudproxy --config cloudproxy.toml.example config show[/bold]
    """
    from cloudproxy_cli.config import describe

    opts = options(ctx)
    loaded = opts.load_config()
    store = opts.store()
    state = store.load()
    warn(state.warning)
    rows = [
        SettingRow(r.name, r.value, r.source, _typed(loaded, r.name, r.value))
        for r in describe(loaded)
    ]
    rows = _with_overrides(rows, state.state.overrides)
    rows.append(SettingRow("state_file", str(store.path), store.source, str(store.path)))
    config_file = str(loaded.file) if loaded.file else None
    rows.append(SettingRow("config_file", config_file or "(none)", "resolved", config_file))
    return ConfigResult(rows, as_json=as_json)


def _with_overrides(rows: list[SettingRow], overrides: RollingOverrides) -> list[SettingRow]:
    """The values `rolling set` put in force instead of env, file or default."""
    by_setting = {
        setting: getattr(overrides, knob)
        for knob, setting in _OVERRIDDEN.items()
        if getattr(overrides, knob) is not None
    }
    out = []
    for row in rows:
        value = by_setting.get(row.name)
        if value is None:
            out.append(row)
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out.append(SettingRow(row.name, text, "rolling set", value))
    return out


def _typed(loaded: LoadedConfig, name: str, text: str) -> object:
    """A setting's value for JSON: ints, floats and bools as such, unset as null; secrets (and
    anything else) as the text ``describe`` shows."""
    from cloudproxy_cli.config import MASKED, UNSET

    if text in (MASKED, UNSET):
        return None if text == UNSET else MASKED
    value: object = loaded.settings
    if name.startswith("providers."):
        _, provider, instance, name = name.split(".", 3)
        value = loaded.settings.providers[provider][instance]
    value = getattr(value, name, text)
    if isinstance(value, Enum):
        return value.value
    return value if isinstance(value, bool | int | float) else text
