"""Redis URLs checked when a backend is built: what redis-py would accept now and fail on at every call, or misread
(a port or database that is not a number, an option it does not know), is a :class:`ConfigurationError` here."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import redis
from redis.asyncio import RedisCluster
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    to_bool,
)
from redis.driver_info import DriverInfo

from ._errors import ConfigurationError

__all__ = ["check_redis_url", "driver_options"]

# Query options a URL may carry beyond redis-py's typed ones: plain strings for the connection. The pool's own
# (max_connections, timeout) are the cache's options instead: in a URL they would silently override them.
_STRING_OPTIONS: Final = frozenset({
    "client_name", "username", "password", "lib_name", "lib_version", "ssl_cert_reqs", "ssl_ca_certs",
    "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_ciphers",
})
_POOL_OPTIONS: Final = {"max_connections": "max_connections", "timeout": "pool_timeout"}
# What redis-py reads as the boolean it looks like ("off" it reads as True, so it is not here).
_BOOLEANS: Final = frozenset({"0", "1", "true", "false", "yes", "no", "t", "f", "y", "n"})


def _parameters(*callables: Callable[..., Any]) -> frozenset[str]:
    names: set[str] = set()
    for function in callables:
        names.update(inspect.signature(function).parameters)
    return frozenset(names)


def _init_parameters(cls: type) -> frozenset[str]:
    return _parameters(*(k.__init__ for k in cls.__mro__ if "__init__" in k.__dict__))  # type: ignore[misc]


def check_redis_url(url: str, *, cluster: bool = False) -> str:
    """The store ``url`` names (``host:port``, or a socket path), for messages and log lines; raises
    :class:`ConfigurationError` for a URL redis-py would accept now and fail on at every call, or misread."""
    parts = urlsplit(url)
    scheme = parts.scheme.removesuffix("+cluster")
    if scheme not in ("redis", "rediss", "unix") or (cluster and scheme == "unix"):
        wanted = "redis+cluster://, rediss+cluster://" if cluster else "redis://, rediss://, unix://"
        raise ConfigurationError(f"{parts.scheme}:// is not a Redis{' Cluster' if cluster else ''} URL: use {wanted}")
    query = parse_qs(parts.query, keep_blank_values=True)
    if scheme == "unix":
        if not parts.path.strip("/"):
            raise ConfigurationError(f"{url!r} names no socket: write unix:///path/to/redis.sock?db=0")
        store = parts.path
        connection_class: type = UnixDomainSocketConnection
    else:
        if not parts.hostname:
            raise ConfigurationError(f"{url!r} names no host: write {parts.scheme}://HOST:PORT/DB")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raw = parts.netloc.rsplit(":", 1)[-1]
            raise ConfigurationError(f"port {raw!r} in {url!r} is not a port number (1-65535), e.g. :6379")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # an IPv6 address
        store = f"{host}:{port or 6379}"
        connection_class = SSLConnection if scheme == "rediss" else Connection
        db_path = parts.path.strip("/")
        if db_path and not (db_path.isascii() and db_path.isdigit()):
            raise ConfigurationError(
                f"the path of {url!r} must be the database number (/0 to /15 on a default Redis), got /{db_path}"
            )
        if db_path and "db" in query:
            raise ConfigurationError(
                f"{url!r} names the database twice (/{db_path} and ?db=): keep one, e.g. {parts.scheme}://HOST:PORT/DB"
            )
        if cluster and db_path not in ("", "0"):
            raise ConfigurationError(
                f"{url!r}: a Redis Cluster has only database 0; remove /{db_path} (use a key namespace instead)"
            )
    allowed = (URL_QUERY_ARGUMENT_PARSERS.keys() | _STRING_OPTIONS) & _init_parameters(connection_class)
    if cluster:
        allowed &= _parameters(RedisCluster.__init__) - {"db"}
    for name, values in query.items():
        if name in _POOL_OPTIONS:
            raise ConfigurationError(
                f"{name}= in the URL would override the cache's own option: remove it from the URL and pass "
                f"{_POOL_OPTIONS[name]}= to Cache.from_url"
            )
        if name not in allowed:
            raise ConfigurationError(
                f"unknown option {name!r} in the URL {url.split('?', 1)[0]}?...: redis-py would fail on it at every "
                f"call; known: {', '.join(sorted(allowed))}"
            )
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parser is not None:
            value = values[0]
            # redis-py reads any word as a boolean ("maybe" is True): only its own spellings are accepted here.
            if parser is to_bool and value.lower() not in _BOOLEANS:
                raise ConfigurationError(
                    f"option {name}={value!r} in the URL is not a boolean: write one of {', '.join(sorted(_BOOLEANS))}"
                )
            try:
                parser(value)
            except (TypeError, ValueError):
                raise ConfigurationError(f"option {name}={value!r} in the URL is not valid") from None
    return store


@functools.cache
def _driver_info() -> DriverInfo:
    # The version the package states, not its metadata: redis-py's own default reads the installed distribution's
    # METADATA file (2.7 ms of CPU the first time in a process, importing the email parser; 0.5 ms after), and a
    # process builds its client at its first call, inside the first burst of requests it serves.
    return DriverInfo(lib_version=redis.__version__)


def driver_options(url: str) -> dict[str, Any]:
    """``driver_info`` for the clients ``url`` makes (unless the URL names its own ``lib_name`` or
    ``lib_version``, which redis-py reads only without it). Without it redis-py builds one for every new
    connection, reading its own version from the installed package's metadata each time (0.5 ms, 2.7 ms the
    first time in a process: ``time.process_time`` around ``redis.utils.get_lib_version``); this one says the
    same in ``CLIENT SETINFO`` and costs nothing."""
    query = parse_qs(urlsplit(url).query)
    if "lib_name" in query or "lib_version" in query:
        return {}
    return {"driver_info": _driver_info()}
