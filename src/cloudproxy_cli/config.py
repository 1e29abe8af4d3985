"""Settings from the environment and a TOML file, validated, each value traceable to its source."""

import math
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Annotated, Any, ClassVar, NamedTuple, Self, dataclass_transform
from urllib.parse import urlsplit

import platformdirs

from cloudproxy_cli.core.errors import ConfigError, UsageError
from cloudproxy_cli.core.policy import RollingPolicy, Strategy

CONFIG_ENV_VAR = "CLOUDPROXY_CONFIG"
CONFIG_FILE_NAME = "cloudproxy.toml"
DEFAULT_INSTANCE = "default"
MASKED = "********"
UNSET = "(unset)"

# Instance names end up in cloud names, tags and labels: GCE names and Hetzner labels must end
# in a letter or digit, and `cloudproxy-<instance>-<8 hex>` must fit GCE's 63 characters.
_INSTANCE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
_FLAG_TRUE = frozenset({"true", "1", "yes"})
_FLAG_FALSE = frozenset({"false", "0", "no"})
_MAX_SHOWN_INPUT = 60


# --- secrets -----------------------------------------------------------------------------


class SecretStr:
    """A string that stays out of messages, ``repr`` and ``str`` (shown as ``**********``).

    Equal to (and hashed as) another ``SecretStr`` with the same value; ``get_secret_value()``
    is the one way to read it.
    """

    __slots__ = ("_secret_value",)

    def __init__(self, secret_value: str) -> None:
        if not isinstance(secret_value, str):
            raise TypeError("a SecretStr holds a str")
        self._secret_value = secret_value

    def get_secret_value(self) -> str:
        return self._secret_value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._secret_value == self._secret_value

    def __hash__(self) -> int:
        return hash(self._secret_value)

    def __len__(self) -> int:
        return len(self._secret_value)

    def __str__(self) -> str:
        return "**********" if self._secret_value else ""

    def __repr__(self) -> str:
        return f"SecretStr({str(self)!r})"


# --- value kinds -------------------------------------------------------------------------
#
# Every field of a settings model is declared as ``name: <kind> = default``, where the kind is
# ``Annotated[<Python type>, Kind(...)]``: mypy sees the type, the model reads the ``Kind``.
# Values arrive as env strings, TOML values or Python values. Each kind takes what the pydantic
# models took before (its lax mode: "5" and " 5 " for 5, 5.0 for 5, "1.5" for 1.5; booleans
# refused as numbers), except bytes and Decimal, which neither the environment nor TOML give.


class _Rejected(TypeError):
    """A value that is not of a field's kind: reported as "must be <expect>, got <shown>"."""

    def __init__(self, shown: object) -> None:
        super().__init__()
        self.shown = shown


# The records of this module are NamedTuples, not frozen dataclasses: a dataclass costs about
# 1 ms of every command's start-up to create (its methods are compiled then), a NamedTuple a
# fifth of that (issue 8.9, benchmarks/startup.py).
class Kind(NamedTuple):
    """What one kind of field accepts, in words, and how a raw value becomes its value.

    ``convert`` returns the value; it raises ``TypeError`` when the raw value is not of this
    kind (reported as ``must be <expect>``, as is a value outside the limits below) or
    ``ValueError`` whose text says exactly what is wrong.
    """

    expect: str  # "a non-negative integer": every failure but a ValueError is "must be ..."
    convert: Callable[[Any], object]
    optional: bool = False  # None and blank text ("FOO=", as docker-compose writes) mean unset
    minimum: int | None = None  # numbers: at least
    maximum: int | None = None  # numbers: at most
    above: int | None = None  # numbers: more than
    min_length: int = 0  # text and secrets: at least this many characters

    def parse(self, value: object) -> object:
        if self.optional and (value is None or (isinstance(value, str) and not value.strip())):
            return None
        try:
            parsed = self.convert(value)
        except _Rejected:
            raise
        except TypeError:
            raise _Rejected(value) from None
        if not self._within_limits(parsed):
            raise _Rejected(value)
        return parsed

    def _within_limits(self, value: object) -> bool:
        if isinstance(value, SecretStr | str):
            return len(value) >= self.min_length
        if not isinstance(value, int | float):
            return True
        return (
            (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.above is None or value > self.above)
        )


# Unicode White_Space, as pydantic stripped it from numbers (str.strip() would also strip
# \x1c-\x1f, which it did not).
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    map(chr, range(0x2000, 0x200B))
)
# "5", "+5", "-0", "007", "1_000", "5.0": ASCII digits, underscores between them, ".0" allowed.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9](?:_?[0-9])*(?:\.0+)?")
_INT64 = 2**63  # an integral float beyond int64 is refused, as pydantic did


def _flag(value: object) -> bool:
    # Pydantic's lax bool also took "on", "t", "y", ...: a typo there would silently flip a
    # switch, so only the spellings the spec documents are accepted.
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _FLAG_TRUE:
            return True
        if word in _FLAG_FALSE:
            return False
    raise _Rejected(value)


def _integer(value: object) -> int:
    """An int, an integral float, or text such as ``" 5 "``; never a boolean (TOML ``true``)."""
    if isinstance(value, bool):
        raise _Rejected(value)
    if isinstance(value, int):
        return int(value)  # an IntEnum member: its number
    if isinstance(value, float) and value.is_integer() and abs(value) < _INT64:
        return int(value)
    if isinstance(value, str):
        text = value.strip(_WHITESPACE)
        if _INTEGER_TEXT.fullmatch(text):
            try:
                return int(text.partition(".")[0])
            except ValueError:  # over 4,300 digits (sys.get_int_max_str_digits)
                pass
    raise _Rejected(value)


def _finite_number(value: object) -> float:
    """A finite float from an int, a float or text (``"1.5"``, ``" 2 "``, ``"1e3"``)."""
    try:
        number = float(_number_or_text(value))
    except (ValueError, OverflowError):  # not a number; an int beyond any float
        number = math.nan
    if not math.isfinite(number):  # inf and nan (also as text) are never a duration
        raise _Rejected(value)
    return number


def _number_or_text(value: object) -> float | str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip(_WHITESPACE)
        # ASCII only: float() would also take other scripts' digits and \x1c-\x1f padding.
        if text.isascii() and text == text.strip() and _underscores_allowed(text, value):
            return text.replace("_", "")
    raise _Rejected(value)


def _underscores_allowed(text: str, value: str) -> bool:
    # pydantic's rule for numbers with decimals: single underscores, none first or last, in
    # text without padding ("1_000.5", "1.5_e3", not " 1_000.5 ").
    return "_" not in text or (
        text == value and not text.startswith("_") and not text.endswith("_") and "__" not in text
    )


def _string(value: object) -> str:
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)  # a StrEnum member: its text
    raise _Rejected(value)  # a TOML number is not a string


def _secret(value: object) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(_string(value))


def _strategy(value: object) -> Strategy:
    if not isinstance(value, str):
        raise _Rejected(value)
    word = value.strip().lower()
    try:
        return Strategy(word)
    except ValueError:
        raise _Rejected(word) from None  # shown as compared: "got 'blue-green'"


def _http_url(value: object) -> str:
    url = _string(value)
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return url


def _ip_address(value: object) -> str:
    import ipaddress  # here: only HOST_IP needs it, not every start-up

    address = ipaddress.ip_address(_string(value).strip())
    # ipaddress takes any text after '%' as an IPv6 zone; a zone means nothing to a firewall.
    if getattr(address, "scope_id", None):
        raise ValueError("must be a plain IP address (no %zone)")
    return str(address)


Flag = Annotated[bool, Kind("true or false (also accepted: yes/no, 1/0)", _flag)]
NonNegativeInt = Annotated[int, Kind("a non-negative integer", _integer, minimum=0)]
OptionalNonNegativeInt = Annotated[
    int | None, Kind("a non-negative integer", _integer, optional=True, minimum=0)
]
PositiveInt = Annotated[int, Kind("a positive integer", _integer, minimum=1)]
Port = Annotated[int, Kind("a port number from 1 to 65535", _integer, minimum=1, maximum=65535)]
WholeSeconds = Annotated[int, Kind("a positive whole number of seconds", _integer, minimum=1)]
PositiveSeconds = Annotated[float, Kind("a positive number of seconds", _finite_number, above=0)]
NonNegativeSeconds = Annotated[
    float, Kind("a non-negative number of seconds", _finite_number, minimum=0)
]
Text = Annotated[str, Kind("a non-empty string", _string, min_length=1)]
OptionalText = Annotated[str | None, Kind("a string", _string, optional=True)]
OptionalSecret = Annotated[SecretStr | None, Kind("a string", _secret, optional=True)]
OptionalHttpUrl = Annotated[
    str | None, Kind("an http:// or https:// URL", _http_url, optional=True)
]
OptionalIp = Annotated[str | None, Kind("an IP address", _ip_address, optional=True)]
StrategyName = Annotated[
    Strategy, Kind("one of: " + ", ".join(s.value for s in Strategy), _strategy)
]


# --- models ------------------------------------------------------------------------------


class FieldInfo(NamedTuple):
    """One field of a settings model, as ``Model.model_fields`` lists it."""

    annotation: object  # the Python type, e.g. ``SecretStr | None``
    default: object
    kind: Kind


class Problem(NamedTuple):
    """Why one field's value was refused. ``got`` is the input as shown, ``None`` for a secret."""

    name: str  # the field's
    reason: str
    got: str | None

    def __str__(self) -> str:
        return self.reason if self.got is None else f"{self.reason}, got {self.got}"


class SettingsError(ValueError):
    """Values a settings model refused; the message never shows a secret."""

    def __init__(self, model: str, problems: list[Problem]) -> None:
        super().__init__(f"{model}: " + "; ".join(f"{p.name}: {p}" for p in problems))
        self.problems = tuple(problems)


@dataclass_transform(kw_only_default=True, frozen_default=True)
class _Model:
    """A frozen settings model: built from keyword arguments (or ``model_validate(mapping)``),
    every value checked by its field's ``Kind``, defaults included; unknown names are refused.
    Equal and hashed by value; ``repr`` and ``str`` mask secrets."""

    model_fields: ClassVar[dict[str, FieldInfo]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.model_fields = _fields_of(cls)

    def __init__(self, **values: object) -> None:
        self.__dict__.update(self._validated(values))

    @classmethod
    def model_validate(cls, data: Mapping[str, object]) -> Self:
        return cls(**data)

    def model_copy(self, *, update: Mapping[str, object] | None = None) -> Self:
        """A copy with some values replaced, NOT checked (as pydantic's ``model_copy``)."""
        unknown = sorted(set(update or {}) - set(self.model_fields))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(unknown)}")
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__, **(update or {}))
        return copied

    @classmethod
    def _validated(cls, values: Mapping[str, object]) -> dict[str, object]:
        fields = cls.model_fields
        parsed: dict[str, object] = {}
        problems: list[Problem] = []
        for name, info in fields.items():
            raw = values.get(name, info.default)
            try:
                parsed[name] = info.kind.parse(raw)
            except _Rejected as exc:
                problems.append(_problem(name, info, f"must be {info.kind.expect}", exc.shown))
            except ValueError as exc:  # the kind's own words
                problems.append(_problem(name, info, _one_line(str(exc)), raw))
        for name, reason in cls._check_together(parsed):
            problems.append(
                _problem(name, fields[name], reason, values.get(name, fields[name].default))
            )
        order = {name: position for position, name in enumerate(fields)}
        problems.sort(key=lambda p: order[p.name])  # in field order, as pydantic had them
        problems += [
            Problem(name, "extra inputs are not permitted", _shown(values[name]))
            for name in values
            if name not in fields
        ]
        if problems:
            raise SettingsError(cls.__name__, problems)
        return parsed

    @classmethod
    def _check_together(cls, parsed: Mapping[str, object]) -> Iterator[tuple[str, str]]:
        """Problems of valid values taken together, as ``(field, reason)``; none here."""
        return iter(())

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Model):
            return NotImplemented
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields_text(', ')})"

    def __str__(self) -> str:
        return self._fields_text(" ")

    def _fields_text(self, separator: str) -> str:
        return separator.join(f"{name}={value!r}" for name, value in self.__dict__.items())


def _fields_of(cls: type[_Model]) -> dict[str, FieldInfo]:
    """``name -> FieldInfo`` from the class's annotations, base classes' fields first."""
    fields = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if typing.get_origin(hint) is ClassVar:
            continue
        kinds = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Kind)]
        if not kinds or not hasattr(cls, name):
            raise TypeError(
                f"{cls.__name__}.{name}: declare a setting as `{name}: <kind> = <default>`"
                " with a kind such as Text or OptionalSecret (config.py lists them)"
            )
        fields[name] = FieldInfo(typing.get_args(hint)[0], getattr(cls, name), kinds[-1])
    return fields


def _problem(name: str, info: FieldInfo, reason: str, value: object) -> Problem:
    return Problem(name, reason, None if is_secret(info) else _shown(value))


# --- provider instances ------------------------------------------------------------------


class InstanceSettings(_Model):
    """Settings of one provider instance. Adapters subclass it to add their own fields, each
    declared as ``name: <kind> = default`` with a kind from the table above.

    Every field is settable as ``{PROVIDER}[_{INSTANCE}]_{FIELD}`` in the environment and as
    ``[providers.<provider>.<instance>] <field> = ...`` in TOML; secrets must be ``SecretStr``.
    """

    enabled: Flag = False
    min_scaling: NonNegativeInt = 2
    max_scaling: OptionalNonNegativeInt = None
    api_endpoint: OptionalText = None

    @classmethod
    def _check_together(cls, parsed: Mapping[str, object]) -> Iterator[tuple[str, str]]:
        cap, minimum = parsed.get("max_scaling"), parsed.get("min_scaling")
        # min_scaling is absent when it was itself invalid
        if isinstance(cap, int) and isinstance(minimum, int) and cap < minimum:
            yield "max_scaling", f"must be >= min_scaling ({minimum})"


class LocalSettings(InstanceSettings):
    """Proxies run as processes on this machine: no cloud account needed."""

    boot_delay: NonNegativeSeconds = 0.0  # simulate a VM's boot time before the proxy answers


class DigitalOceanSettings(InstanceSettings):
    """DigitalOcean droplets (python-digitalocean). The library itself honours
    ``DIGITALOCEAN_END_POINT``; ``api_endpoint`` overrides it per instance."""

    access_token: OptionalSecret = None
    region: Text = "lon1"
    size: Text = "s-1vcpu-1gb"
    image: Text = "ubuntu-24-04-x64"


class AwsSettings(InstanceSettings):
    """AWS EC2 instances (boto3). boto3 itself honours ``AWS_ENDPOINT_URL``; ``api_endpoint``
    overrides it per instance. Without keys, the default instance uses boto3's credential chain."""

    access_key_id: OptionalSecret = None
    secret_access_key: OptionalSecret = None
    region: Text = "us-east-1"
    size: Text = "t3.micro"
    ami: OptionalText = None  # None: the current Ubuntu LTS image of the region
    spot: Flag = False


class GcpSettings(InstanceSettings):
    """Google Compute Engine VMs (google-cloud-compute)."""

    project: OptionalText = None
    zone: Text = "us-central1-a"
    size: Text = "e2-micro"
    image_project: Text = "ubuntu-os-cloud"
    image_family: Text = "ubuntu-2404-lts-amd64"
    service_account_key: OptionalSecret = None  # the key's JSON text
    sa_json: OptionalText = None  # or a path to the key file
    spot: Flag = False


class HetznerSettings(InstanceSettings):
    """Hetzner Cloud servers (hcloud)."""

    access_token: OptionalSecret = None
    location: Text = "nbg1"
    size: Text = "cx23"  # a current type; the reference's cx21 is long deprecated
    image: Text = "ubuntu-24.04"


class VultrSettings(InstanceSettings):
    """Vultr instances (its v2 REST API through requests)."""

    api_token: OptionalSecret = None
    region: Text = "ewr"
    plan: Text = "vc2-1c-1gb"
    os_id: NonNegativeInt = 2284  # Ubuntu 24.04 LTS x64


PROVIDER_SETTINGS: dict[str, type[InstanceSettings]] = {
    "local": LocalSettings,
    "digitalocean": DigitalOceanSettings,
    "aws": AwsSettings,
    "gcp": GcpSettings,
    "hetzner": HetznerSettings,
    "vultr": VultrSettings,
}


# --- global settings ---------------------------------------------------------------------


def _providers(value: object) -> dict[str, dict[str, InstanceSettings]]:
    """``{provider: {instance: settings}}``; a plain table becomes ``InstanceSettings``."""
    if not isinstance(value, Mapping):
        raise _Rejected(value)
    providers: dict[str, dict[str, InstanceSettings]] = {}
    for provider, instances in value.items():
        if not isinstance(provider, str) or not isinstance(instances, Mapping):
            raise _Rejected(value)
        providers[provider] = {}
        for name, inst in instances.items():
            if not isinstance(name, str) or not isinstance(inst, InstanceSettings | Mapping):
                raise _Rejected(value)
            providers[provider][name] = (
                inst
                if isinstance(inst, InstanceSettings)
                else InstanceSettings.model_validate(inst)
            )
    return providers


Providers = Annotated[
    dict[str, dict[str, InstanceSettings]],
    Kind("a table of [providers.<provider>.<instance>] tables", _providers),
]


class Settings(_Model):
    """Every setting of one run. Build it with ``load_config``; ``Settings()`` is all defaults."""

    # Not read from the environment by itself: load_config reads the sources (the environment
    # must be the mapping the caller passed, provider env names need longest-suffix matching
    # over open-ended instance names, every value keeps its origin).

    age_limit: NonNegativeInt = 0
    rolling_deployment: Flag = False
    rolling_min_available: NonNegativeInt = 3
    rolling_batch_size: PositiveInt = 2
    rolling_strategy: StrategyName = Strategy.REPLACE
    # Creates one run may make per instance; None: ROLLING_BATCH_SIZE + the MIN_SCALING deficit.
    max_creates_per_run: OptionalNonNegativeInt = None
    proxy_username: OptionalText = None
    proxy_password: OptionalSecret = None
    proxy_port: Port = 8899
    health_check_url: OptionalHttpUrl = None  # None: the prober serves its own origin locally
    health_check_timeout: PositiveSeconds = 5.0
    pending_timeout: WholeSeconds = 600
    stale_after: WholeSeconds = 300  # rolling status warns when the last run is older
    rolling_progress_deadline: WholeSeconds = 1800  # no recycle completed for this long: stalled
    only_host_ip: Flag = False
    host_ip: OptionalIp = None  # this host's public IP: required with ONLY_HOST_IP
    allow_open_proxy: Flag = False
    # reconcile writes its Prometheus metrics here after every real run (None: no metrics);
    # a relative path is relative to the working directory, as --metrics-file's is.
    metrics_file: OptionalText = None
    providers: Providers = {}  # noqa: RUF012 (never shared: each instance gets its own copy)

    def rolling_policy(self) -> RollingPolicy:
        return RollingPolicy(
            enabled=self.rolling_deployment,
            min_available=self.rolling_min_available,
            batch_size=self.rolling_batch_size,
            strategy=self.rolling_strategy,
        )

    def proxy_credentials(self) -> tuple[str | None, str | None]:
        """``(PROXY_USERNAME, PROXY_PASSWORD)``: both set or both unset, else ``ConfigError``."""
        username = self.proxy_username
        password = self.proxy_password.get_secret_value() if self.proxy_password else None
        if (username is None) != (password is None):
            missing = "PROXY_PASSWORD" if password is None else "PROXY_USERNAME"
            raise ConfigError(f"{missing}: PROXY_USERNAME and PROXY_PASSWORD must be set together")
        return username, password

    def enabled_instances(self) -> list[tuple[str, str, InstanceSettings]]:
        """Enabled instances as ``(provider, instance, settings)``, sorted by provider, instance."""
        return [
            (provider, name, inst)
            for provider, instances in sorted(self.providers.items())
            for name, inst in sorted(instances.items())
            if inst.enabled
        ]


GLOBAL_SETTINGS: tuple[str, ...] = tuple(n for n in Settings.model_fields if n != "providers")
_GLOBAL_ENV_NAMES = [*(key.upper() for key in GLOBAL_SETTINGS), CONFIG_ENV_VAR]


# --- results -----------------------------------------------------------------------------


class LoadedConfig(NamedTuple):
    """Validated settings, the file they came from, and each setting's source.

    ``sources`` maps a display key (``age_limit``, ``providers.local.default.min_scaling``) to
    ``"env NAME"``, ``"file PATH"`` or ``"default"``. ``warnings`` lists env vars that looked like
    provider settings but were ignored.
    """

    settings: Settings
    file: Path | None
    sources: dict[str, str]
    warnings: tuple[str, ...] = ()


class ConfigRow(NamedTuple):
    """One line of ``cloudproxy config show``. Secrets are already masked in ``value``."""

    name: str
    value: str
    source: str


class _Origin(NamedTuple):
    source: str  # for LoadedConfig.sources: "env AGE_LIMIT" / "file /abs/cloudproxy.toml"
    label: str  # how the user named it, for errors: "AGE_LIMIT" / "/abs/cloudproxy.toml: age_limit"


class _Raw:
    """Unvalidated values merged from the sources, lowest priority first."""

    __slots__ = ("errors", "global_values", "instances", "origins", "warnings")

    def __init__(self) -> None:
        self.global_values: dict[str, Any] = {}
        self.instances: dict[tuple[str, str], dict[str, object]] = {}
        self.origins: dict[str, _Origin] = {}
        self.errors: list[str] = []
        self.warnings: list[str] = []


# --- public functions --------------------------------------------------------------------


def find_config_file(
    config_path: Path | None,
    environ: Mapping[str, str],
    *,
    user_config_dir: Path | None = None,
) -> Path | None:
    """The TOML file to read: ``--config``, else ``$CLOUDPROXY_CONFIG``, else
    ``./cloudproxy.toml``, else ``<user config dir>/cloudproxy.toml``, else ``None``.

    A file named by ``--config`` or ``$CLOUDPROXY_CONFIG`` must exist (``ConfigError``).
    """
    if config_path is not None:
        return _must_exist(config_path, "--config")
    named = environ.get(CONFIG_ENV_VAR, "")
    if named.strip():
        return _must_exist(Path(named), CONFIG_ENV_VAR)
    here = Path.cwd() / CONFIG_FILE_NAME
    if here.is_file():
        return here
    if user_config_dir is None:
        user_config_dir = Path(platformdirs.user_config_dir("cloudproxy"))
    per_user = user_config_dir / CONFIG_FILE_NAME
    return per_user if per_user.is_file() else None


def load_config(
    config_path: Path | None,
    environ: Mapping[str, str],
    *,
    user_config_dir: Path | None = None,
    registry: Mapping[str, type[InstanceSettings]] | None = None,
) -> LoadedConfig:
    """Read, merge (environment > file > defaults) and validate the configuration.

    Raises ``ConfigError`` with a one-line message naming each bad setting as the user wrote it;
    secret values never appear in it. ``registry`` defaults to ``PROVIDER_SETTINGS``.
    """
    registry = PROVIDER_SETTINGS if registry is None else registry
    path = find_config_file(config_path, environ, user_config_dir=user_config_dir)
    raw = _Raw()
    if path is not None:
        path = path.absolute()
        _read_file(path, _parse_toml(path), registry, raw)
    _read_env(environ, registry, raw)
    raw.warnings.extend(unknown_env_warnings(environ, registry))

    instances: dict[str, dict[str, InstanceSettings]] = {}
    for (provider, name), values in sorted(raw.instances.items()):
        model = registry[provider]
        prefix = f"providers.{provider}.{name}."
        try:
            instances.setdefault(provider, {})[name] = model.model_validate(values)
        except SettingsError as exc:
            raw.errors.extend(_explain(exc, prefix, raw.origins))
    try:
        settings = Settings(**raw.global_values, providers=instances)
    except SettingsError as exc:
        raw.errors.extend(_explain(exc, "", raw.origins))
    if raw.errors:
        raise ConfigError("; ".join(raw.errors))

    sources = {key: _source_of(key, raw.origins) for key in GLOBAL_SETTINGS}
    for provider, name, inst in _all_instances(settings):
        for key in type(inst).model_fields:
            display = f"providers.{provider}.{name}.{key}"
            sources[display] = _source_of(display, raw.origins)
    return LoadedConfig(settings, path, sources, tuple(raw.warnings))


def describe(loaded: LoadedConfig) -> list[ConfigRow]:
    """Every global setting, then every configured instance's fields (sorted), secrets masked."""
    settings = loaded.settings
    rows = [
        _row(key, getattr(settings, key), Settings.model_fields[key], loaded.sources)
        for key in GLOBAL_SETTINGS
    ]
    for provider, name, inst in _all_instances(settings):
        for key, info in type(inst).model_fields.items():
            display = f"providers.{provider}.{name}.{key}"
            rows.append(_row(display, getattr(inst, key), info, loaded.sources))
    return rows


def enabled_instances(settings: Settings) -> list[tuple[str, str, InstanceSettings]]:
    """Enabled instances as ``(provider, instance, settings)``, sorted by provider, instance."""
    return settings.enabled_instances()


def instance_settings(loaded: LoadedConfig, provider: str, instance: str) -> InstanceSettings:
    """The settings of one configured instance (enabled or not); ``UsageError`` if none."""
    found = loaded.settings.providers.get(provider, {}).get(instance)
    if found is None:
        configured = ", ".join(f"{p}/{i}" for p, i, _ in _all_instances(loaded.settings))
        raise UsageError(
            f"no provider instance {provider}/{instance} is configured"
            f" (configured: {configured or 'none'})"
        )
    return found


def env_name(provider: str, instance: str, setting: str) -> str:
    """The environment variable that sets ``setting`` of one instance, e.g. ``AWS_EU_REGION``."""
    middle = "" if instance == DEFAULT_INSTANCE else f"{instance.upper()}_"
    return f"{provider.upper()}_{middle}{setting.upper()}"


def is_secret(info: FieldInfo) -> bool:
    """Whether a field holds a secret, judged by its type (``SecretStr``)."""
    return any(
        isinstance(t, type) and issubclass(t, SecretStr) for t in _walk_annotation(info.annotation)
    )


# --- reading the sources -----------------------------------------------------------------


def _must_exist(path: Path, how: str) -> Path:
    if not path.exists():
        raise ConfigError(f"{how}: config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{how}: {path} is not a file")
    return path


def _parse_toml(path: Path) -> dict[str, Any]:
    import tomllib  # here: only a run with a config file parses TOML

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give the position, never the offending text, so no secret leaks.
        raise ConfigError(f"{path}: invalid TOML: {_one_line(str(exc))}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _read_file(
    path: Path, data: dict[str, Any], registry: Mapping[str, type[InstanceSettings]], raw: _Raw
) -> None:
    def fail(key: str, problem: str) -> None:
        raw.errors.append(f"{path}: {key}: {problem}")

    def note(key: str) -> _Origin:
        return _Origin(f"file {path}", f"{path}: {key}")

    for key, value in data.items():
        if key in GLOBAL_SETTINGS:
            raw.global_values[key] = value
            raw.origins[key] = note(key)
        elif key != "providers":
            fail(key, _unknown_key(key, [*GLOBAL_SETTINGS, "providers"]))
    providers = data.get("providers", {})
    if not isinstance(providers, dict):
        fail("providers", "must be a table of [providers.<provider>.<instance>] tables")
        return
    for provider, instances in providers.items():
        where = f"providers.{provider}"
        if provider not in registry:
            fail(where, _unknown_key(provider, sorted(registry), "provider"))
            continue
        if not isinstance(instances, dict):
            fail(where, f"must be a table of [{where}.<instance>] tables")
            continue
        known = registry[provider].model_fields
        for name, table in instances.items():
            where = f"providers.{provider}.{name}"
            if not isinstance(table, dict):
                hint = f"put settings under [providers.{provider}.default]"
                fail(where, f"expected a table [{where}]; {hint}")
                continue
            if not _INSTANCE_NAME.fullmatch(name):
                fail(
                    where,
                    "instance names use a-z, 0-9 and '-' (not first or last), 40 at most",
                )
                continue
            values = raw.instances.setdefault((provider, name), {})
            for key, value in table.items():
                if key not in known:
                    fail(f"{where}.{key}", _unknown_key(key, list(known)))
                    continue
                values[key] = value
                raw.origins[f"{where}.{key}"] = note(f"{where}.{key}")


def _read_env(
    environ: Mapping[str, str], registry: Mapping[str, type[InstanceSettings]], raw: _Raw
) -> None:
    for key in GLOBAL_SETTINGS:
        var = key.upper()
        if var in environ:
            raw.global_values[key] = environ[var]
            raw.origins[key] = _Origin(f"env {var}", var)

    # Longest provider prefix first, so a provider named like another's prefix still wins.
    prefixes = sorted(((p.upper() + "_", p) for p in registry), key=lambda t: -len(t[0]))
    # Longest setting first: the instance is whatever precedes the longest matching suffix.
    settings = {p: sorted(m.model_fields, key=len, reverse=True) for p, m in registry.items()}
    for var in sorted(environ):
        match = next(((pre, p) for pre, p in prefixes if var.startswith(pre)), None)
        if match is None:
            continue
        prefix, provider = match
        found = _split_setting(var[len(prefix) :], settings[provider])
        if found is None:
            continue  # AWS_PROFILE and friends: not ours
        instance, key = found
        if var in FOREIGN_ENV_VARS and var != f"{prefix}{key.upper()}":
            # AWS_DEFAULT_REGION is boto3's own variable, not our default instance's region
            # spelled out (AWS_REGION is): reading it too would make two of them conflict.
            continue
        if not _INSTANCE_NAME.fullmatch(instance):
            raw.warnings.append(
                f"ignored {var}: {instance!r} is not a valid instance name"
                " (use letters and digits only in environment variable names)"
            )
            continue
        display = f"providers.{provider}.{instance}.{key}"
        values = raw.instances.setdefault((provider, instance), {})
        earlier = raw.origins.get(display)
        same_source = earlier is not None and earlier.source.startswith("env ")
        if earlier is not None and same_source and values[key] != environ[var]:
            # FOO_MIN_SCALING and FOO_DEFAULT_MIN_SCALING name the same setting.
            raw.errors.append(f"{earlier.label} and {var} set the same setting to different values")
            continue
        values[key] = environ[var]
        raw.origins[display] = _Origin(f"env {var}", var)


def _split_setting(rest: str, settings: list[str]) -> tuple[str, str] | None:
    """``"EU_ACCESS_TOKEN"`` -> ``("eu", "access_token")``; ``"MIN_SCALING"`` -> default."""
    for key in settings:
        suffix = key.upper()
        if rest == suffix:
            return DEFAULT_INSTANCE, key
        if rest.endswith("_" + suffix) and len(rest) > len(suffix) + 1:
            return rest[: -len(suffix) - 1].lower(), key
    return None


# --- names that are almost ours ----------------------------------------------------------

# Other tools' variables that share a provider prefix: never warned about. boto3 and the AWS
# CLI read many more AWS_* variables than can be listed, so any other AWS_* name is warned
# about only when it is close to one of ours (a likely typo).
FOREIGN_ENV_VARS = frozenset(
    {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
        "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
        "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_STS_REGIONAL_ENDPOINTS", "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT", "AWS_DEFAULT_OUTPUT", "AWS_PAGER",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_METADATA_SERVICE_TIMEOUT",
        "AWS_METADATA_SERVICE_NUM_ATTEMPTS",
        "DIGITALOCEAN_END_POINT",  # python-digitalocean's own endpoint override
    }
)  # fmt: skip
FOREIGN_ENV_PREFIXES = (
    "AWS_ENDPOINT_URL_", "AWS_EC2_METADATA_", "AWS_CONTAINER_", "AWS_LAMBDA_", "AWS_SDK_",
    "AWS_CLI_",
)  # fmt: skip
_ALWAYS_OURS = ("ROLLING_", "PROXY_", "HEALTH_CHECK_")  # warned about even with no close match
_CLOSE = 0.8


def unknown_env_warnings(
    environ: Mapping[str, str], registry: Mapping[str, type[InstanceSettings]] | None = None
) -> list[str]:
    """Warnings for variables that look like settings but are not, with a "did you mean".

    Covers the global settings' prefixes (``ROLLING_``, ``PROXY_``, ``HEALTH_CHECK_``), names
    close to a global setting, and provider prefixes (``LOCAL_``, ``AWS_``, ...), themselves
    matched fuzzily (``DIGITALOCAEN_ENABLED``). Names only: a value is never shown.
    """
    registry = PROVIDER_SETTINGS if registry is None else registry
    found = []
    for var in sorted(environ):
        if var != var.upper() or var in FOREIGN_ENV_VARS or var.startswith(FOREIGN_ENV_PREFIXES):
            continue
        warning = _global_lookalike(var) or _provider_lookalike(var, registry)
        if warning is not None:
            found.append(warning)
    return found


def _closest(word: str, candidates: Iterable[str], cutoff: float = _CLOSE) -> str | None:
    """``difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)``, first dropping the
    candidates whose length alone keeps them below ``cutoff`` (difflib's own first test,
    ``real_quick_ratio``): the same answer, without difflib's work for every environment
    variable on every start-up (issue 8.9)."""
    n = len(word)
    near = [
        c for c in candidates if n + len(c) == 0 or 2.0 * min(n, len(c)) / (n + len(c)) >= cutoff
    ]
    if not near:
        return None
    import difflib  # here: most variables have no candidate near their length

    close = difflib.get_close_matches(word, near, n=1, cutoff=cutoff)
    return close[0] if close else None


def _unknown_key(key: str, known: list[str], what: str = "setting") -> str:
    close = _closest(key, known)
    hint = f"did you mean {close}? " if close else ""
    return f"unknown {what} ({hint}known: {', '.join(known)})"


def _ignored(var: str, suggestion: str | None, known: str = "") -> str:
    hint = f"did you mean {suggestion}?" if suggestion else f"known: {known}"
    return f"ignored {var}: not a cloudproxy setting; {hint}"


def _global_lookalike(var: str) -> str | None:
    names = _GLOBAL_ENV_NAMES
    if var in names:
        return None
    if var.startswith(_ALWAYS_OURS):
        family = [n for n in names if n.startswith(var.split("_", 1)[0] + "_")]
        return _ignored(var, _closest(var, names), ", ".join(family))
    # Beyond our own prefixes, only a near-exact name is taken as a typo of ours.
    close = _closest(var, names, cutoff=0.9)
    return _ignored(var, close) if close else None


def _provider_lookalike(var: str, registry: Mapping[str, type[InstanceSettings]]) -> str | None:
    parts = var.split("_")
    # The provider may be misspelt or split in two: DIGITALOCAEN_..., DIGITAL_OCEAN_...
    for taken in (1, 2):
        head, rest = "".join(parts[:taken]).lower(), "_".join(parts[taken:])
        if not rest:
            continue
        provider = head if head in registry else _closest(head, registry)
        if provider is None:
            continue
        exact = var.startswith(provider.upper() + "_")
        fields = sorted(registry[provider].model_fields, key=len, reverse=True)
        if exact and _split_setting(rest, fields) is not None:
            return None  # ours (load_config reads it, or warns about its instance name)
        suggestion = _closest_setting(provider, rest, fields)
        if suggestion is not None and suggestion != var:
            return _ignored(var, suggestion)
    return None


def _closest_setting(provider: str, rest: str, fields: list[str]) -> str | None:
    """The real variable nearest ``PROVIDER_REST``, keeping any instance part of ``rest``."""
    prefix = provider.upper() + "_"
    if _split_setting(rest, fields) is not None:
        return prefix + rest  # only the provider was misspelt
    names = [f.upper() for f in fields]
    words = rest.split("_")
    candidates = [prefix + n for n in names]
    # An instance name and a setting, the setting itself close: LOCAL_EU_MIN_SCALNG, but not
    # GCP_CREDENTIALS_FILE (instance "credentials", FILE ~ SIZE).
    for cut in range(1, len(words)):
        tail, instance = "_".join(words[cut:]), "_".join(words[:cut])
        close = _closest(tail, names)
        candidates += [f"{prefix}{instance}_{close}"] if close else []
    return _closest(prefix + rest, candidates)


# --- errors and display ------------------------------------------------------------------


def _explain(exc: SettingsError, prefix: str, origins: Mapping[str, _Origin]) -> list[str]:
    """Each problem as ``<setting as the user named it>: <reason>[, got <input>]``."""
    messages = []
    for problem in exc.problems:
        origin = origins.get(prefix + problem.name)
        label = origin.label if origin is not None else prefix + problem.name
        messages.append(f"{label}: {problem}")
    return messages


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_INPUT else text[: _MAX_SHOWN_INPUT - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _walk_annotation(hint: object) -> Iterator[object]:
    """The hint and everything nested in it, ``Annotated`` wrappers included."""
    yield hint
    for arg in typing.get_args(hint):
        yield from _walk_annotation(arg)


def _source_of(key: str, origins: Mapping[str, _Origin]) -> str:
    origin = origins.get(key)
    return origin.source if origin is not None else "default"


def _all_instances(settings: Settings) -> list[tuple[str, str, InstanceSettings]]:
    return [
        (provider, name, inst)
        for provider, instances in sorted(settings.providers.items())
        for name, inst in sorted(instances.items())
    ]


def _row(name: str, value: object, info: FieldInfo, sources: Mapping[str, str]) -> ConfigRow:
    return ConfigRow(name, _render(value, secret=is_secret(info)), sources.get(name, "default"))


def _render(value: object, *, secret: bool) -> str:
    if value is None:
        return UNSET
    if secret or isinstance(value, SecretStr):
        return MASKED
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Strategy):
        return value.value
    return str(value)
