"""Settings: one TOML file (``config/wallpaper.toml``) with ``WALLPAPER_...`` environment overrides.

Precedence, highest first: values passed in code, environment (``WALLPAPER_MONGO__DRIVER=pymongo``; nested with
``__``), the TOML file, the defaults below. A value that does not validate stops the start with
:class:`ConfigError`, whose message names the setting (``mongo.driver``) and its environment variable.
"""

from __future__ import annotations

import builtins
import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, get_origin

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

__all__ = [
    "DEFAULT_CONFIG",
    "AdminSettings",
    "CacheSettings",
    "ConfigError",
    "DownloadSettings",
    "EndpointCache",
    "LogSettings",
    "MongoSettings",
    "MySQLSettings",
    "RedisSettings",
    "ServerSettings",
    "Settings",
    "TracingSettings",
    "load_settings",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "wallpaper.toml"
ENV_PREFIX = "WALLPAPER_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    namespace: str = Field(default="wp", min_length=1, max_length=64)
    max_connections: int = Field(default=64, ge=1, le=4096)
    pool_timeout: float = Field(default=1.0, gt=0, le=30)
    timeout: float = Field(default=0.1, gt=0, le=10)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        # redis+cluster:// puts the cache on a Redis Cluster (found from that node).
        schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        if not value.startswith(schemes):
            raise ValueError("must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://")
        return value


class MongoSettings(_Section):
    uri: str = "mongodb://127.0.0.1:27017/"
    database: str = Field(default="wallpaper", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    driver: Literal["motor", "pymongo"] = "motor"
    max_pool_size: int = Field(default=32, ge=1, le=1000)
    min_pool_size: int = Field(default=0, ge=0, le=1000)
    server_selection_timeout_ms: int = Field(default=1500, ge=50, le=60_000)
    connect_timeout_ms: int = Field(default=1000, ge=50, le=60_000)
    socket_timeout_ms: int = Field(default=2000, ge=50, le=120_000)
    # The budget of one repository call, end to end (server selection, pool wait, connect, reply): pymongo's
    # client-side operation timeout (timeoutMS) and an asyncio timeout around the call.
    timeout_ms: int = Field(default=2000, ge=50, le=120_000)

    @field_validator("uri")
    @classmethod
    def _mongo_scheme(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value


class MySQLSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password: str = ""
    database: str = Field(default="wallpaper", pattern=r"^[A-Za-z0-9_]{1,64}$")
    pool_min: int = Field(default=1, ge=0, le=1000)
    pool_max: int = Field(default=10, ge=1, le=1000)
    connect_timeout: float = Field(default=1.0, gt=0, le=60)
    query_timeout: float = Field(default=2.0, gt=0, le=120)
    pool_acquire_timeout: float = Field(default=1.0, gt=0, le=60)


class EndpointCache(_Section):
    ttl: float = Field(gt=0, le=86_400)
    stale_ttl: float = Field(ge=0, le=86_400)


class CacheSettings(_Section):
    list: EndpointCache = EndpointCache(ttl=30, stale_ttl=300)
    detail: EndpointCache = EndpointCache(ttl=60, stale_ttl=600)
    categories: EndpointCache = EndpointCache(ttl=300, stale_ttl=3600)
    not_found_ttl: float = Field(default=10, gt=0, le=3600)
    # False: every read calls its loader (Mongo/MySQL) directly, Redis is not touched (a measurement setting).
    enabled: bool = True
    # The library's in-process tier (cachelayer.LocalCache) in front of Redis, for list/detail/categories.
    local: bool = False
    local_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    local_max_bytes: int = Field(default=64 * 2**20, ge=1024, le=2**34)
    local_max_staleness: float = Field(default=1.0, gt=0, le=3600)
    # zstd dictionary files (relative to the settings file): all read with, the first written with and served.
    dictionaries: builtins.list[str] = Field(default_factory=builtins.list, max_length=16)


class DownloadSettings(_Section):
    # Each process catches up Mongo counters that lag the MySQL events: at start-up, then every interval.
    reconcile_interval: float = Field(default=5.0, gt=0, le=3600)
    reconcile_batch: int = Field(default=1000, ge=1, le=100_000)
    # Events younger than this are left to the request that wrote them (a lower id may still be committing).
    reconcile_settle: float = Field(default=5.0, ge=0, le=3600)


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8888, ge=0, le=65535)
    processes: int = Field(default=1, ge=0, le=256)
    max_restarts: int = Field(default=100, ge=0)
    loop: Literal["asyncio", "uvloop"] = "asyncio"
    backlog: int = Field(default=4096, ge=1, le=65535)
    reuse_port: bool = True
    gzip: bool = True
    # Adds GET /_bench/ceiling (the list endpoint's bytes from memory: what Tornado alone serves). Benchmarks only.
    bench_routes: bool = False
    shutdown_timeout: float = Field(default=10, ge=0, le=300)
    # Seconds a cached read may wait for a load another request or worker runs (cachelayer.time_budget): then its
    # stale copy, else 503. Its own load is bounded by the stores' budgets (mongo.timeout_ms; MySQL's
    # pool_acquire_timeout + query_timeout, 3 s): above the longest of them, so that a load that fails reaches its
    # waiters before their budget ends.
    request_budget: float = Field(default=3.5, gt=0, le=120)
    # Peers (CIDR) whose X-Forwarded-For / X-Real-IP name the client; empty: the peer is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Seconds to receive a request's head, counting the idle wait between keep-alive requests (Tornado's
    # header timeout is its idle-connection timeout: the two cannot be set apart).
    header_timeout: float = Field(default=60, gt=0, le=3600)
    body_timeout: float = Field(default=10, gt=0, le=600)  # seconds to receive a request's whole body
    max_request_line: int = Field(default=8192, ge=256, le=1 << 20)  # longer: 414
    max_header_bytes: int = Field(default=32768, ge=1024, le=1 << 20)  # request line + headers; more: 431
    # A GET of a list page or a wallpaper is answered from the cache before Tornado builds a handler for it
    # (service/lane.py; the same bytes, more requests a second: docs/performance.md, "The cache lane"). Off: every
    # request through Tornado. Also read under its first name, local_lane (2026-12-06: local-tier hits only).
    lane: bool = Field(default=True, validation_alias=AliasChoices("lane", "local_lane"))

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(item.strip(), strict=False)) for item in value]


class AdminSettings(_Section):
    """The admin listener: /metrics, /readyz. Loopback by default: what it tells is for operators, not clients."""

    host: str = "127.0.0.1"
    port: int = Field(default=9888, ge=0, le=65535)
    # Forked workers keep their figures here (prometheus_client's multiprocess files) so that any worker answers a
    # scrape for all. Empty: a fresh directory under the system's temporary one, removed when the service exits.
    metrics_dir: str = ""


class TracingSettings(_Section):
    """Traces through the service (service/tracing.py): off by default."""

    enabled: bool = False
    # An OTLP/HTTP collector's traces endpoint (an OpenTelemetry Collector, Jaeger, Tempo, ...).
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    # Of the requests that arrive without a sampling decision (no traceparent); a caller's decision always wins.
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    service_name: str = Field(default="wallpaper", min_length=1, max_length=100)
    export_timeout: float = Field(default=5.0, gt=0, le=60)  # seconds for one batch to reach the collector


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    sink: Literal["stdout", "stderr", "logstash", "none"] = "stdout"
    # auto: one readable line per event when the sink is a terminal, JSON otherwise; or always one of them.
    format: Literal["auto", "json", "text"] = "auto"
    access_log: bool = True
    logstash_host: str = "127.0.0.1"
    logstash_port: int = Field(default=5959, ge=1, le=65535)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    redis: RedisSettings = RedisSettings()
    mongo: MongoSettings = MongoSettings()
    mysql: MySQLSettings = MySQLSettings()
    cache: CacheSettings = CacheSettings()
    downloads: DownloadSettings = DownloadSettings()
    server: ServerSettings = ServerSettings()
    admin: AdminSettings = AdminSettings()
    tracing: TracingSettings = TracingSettings()
    log: LogSettings = LogSettings()

    # The TOML file read by the next instantiation (set by load_settings; None: no file).
    _toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part) for part in loc).upper()


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (default: ``$WALLPAPER_CONFIG`` or ``config/wallpaper.toml``), apply the environment and
    ``overrides`` (section dicts: ``mongo={"driver": "pymongo"}``). Raises :class:`ConfigError`."""
    if path is None:
        env_path = os.environ.get("WALLPAPER_CONFIG")
        path = Path(env_path) if env_path else DEFAULT_CONFIG
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)  # a clear message for a syntax error, before pydantic reads it
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    Settings._toml_file = path
    try:
        settings = Settings(**overrides)
    except SettingsError as exc:  # an environment variable pydantic-settings could not even parse
        raise ConfigError(_environment_problem(exc)) from exc
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            name = ".".join(str(part) for part in loc)
            problems.append(f"setting {name!r} (env {_env_name(loc)}): {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid configuration in {path}: " + "; ".join(problems)) from exc
    finally:
        Settings._toml_file = None
    if settings.mysql.pool_min > settings.mysql.pool_max:
        env = _env_name(("mysql", "pool_min"))
        raise ConfigError(f"setting 'mysql.pool_min' (env {env}) must not exceed mysql.pool_max")
    if settings.mongo.min_pool_size > settings.mongo.max_pool_size:
        env = _env_name(("mongo", "min_pool_size"))
        raise ConfigError(f"setting 'mongo.min_pool_size' (env {env}) must not exceed mongo.max_pool_size")
    if settings.admin.port != 0 and settings.admin.port == settings.server.port:
        env = _env_name(("admin", "port"))
        raise ConfigError(f"setting 'admin.port' (env {env}) must differ from server.port ({settings.server.port})")
    return _with_dictionaries(settings, path)


def _with_dictionaries(settings: Settings, path: Path) -> Settings:
    """``cache.dictionaries`` resolved against the settings file's directory, each one checked now: a missing or
    unusable file stops the start naming the setting, not the first request."""
    from cachelayer import DictionaryRegistry

    resolved: builtins.list[str] = []
    for index, name in enumerate(settings.cache.dictionaries):
        file = Path(name) if Path(name).is_absolute() else (path.parent / name).resolve()
        try:
            DictionaryRegistry().add(file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"setting 'cache.dictionaries' (env {ENV_PREFIX}CACHE__DICTIONARIES), entry {index}: {file}: {exc}"
            ) from exc
        resolved.append(str(file))
    if not resolved:
        return settings
    return settings.model_copy(update={"cache": settings.cache.model_copy(update={"dictionaries": resolved})})


def _example(section: str, field: str) -> str:
    if (section, field) == ("server", "trusted_proxies"):
        return '["10.0.0.0/8", "192.168.0.0/16"]'
    return '["first", "second"]'


def _environment_problem(exc: SettingsError) -> str:
    """Which ``WALLPAPER_*`` variable pydantic-settings could not read, and how to write it: a list or table
    setting is JSON in the environment (``WALLPAPER_SERVER__TRUSTED_PROXIES='["10.0.0.0/8"]'``)."""
    for name, value in sorted(os.environ.items()):
        if not name.upper().startswith(ENV_PREFIX.upper()) or "__" not in name:
            continue
        section, _, field = name[len(ENV_PREFIX) :].lower().partition("__")
        section_field = Settings.model_fields.get(section)
        model = None if section_field is None else section_field.annotation
        target = getattr(model, "model_fields", {}).get(field)
        if target is None or get_origin(target.annotation) not in (list, dict, set, tuple, frozenset):
            continue
        try:
            json.loads(value)
        except ValueError:
            return (
                f"setting '{section}.{field}' (env {name}): {value!r} is not JSON; a list setting is written as JSON "
                f"in the environment, e.g. {name}='{_example(section, field)}'"
            )
    return f"the environment could not be read ({ENV_PREFIX}* variables): {exc}"
