"""Store URLs: one table from a URL scheme to the backend it builds, and the options every store takes.

``backend_from_url("redis://127.0.0.1:6379/0", StoreOptions())`` looks the scheme up in the table and calls the
factory registered for it. Built in: ``memory`` (:class:`MemoryBackend`), ``redis``, ``rediss``, ``unix``
(:class:`RedisBackend` over a bounded, blocking pool), ``redis+cluster`` and ``rediss+cluster`` (a Redis
Cluster found from the node in the URL). Third parties add theirs with :func:`register_scheme`.

A URL is checked when the backend is built, never at its first call: an unknown scheme, a missing host, a port
or database that is not a number, a database on a cluster URL or a query option redis-py would reject later
raise :class:`ConfigurationError` with the fix (the Redis checks are ``_redis_urls.check_redis_url``).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from ._backend import Backend
from ._errors import ConfigurationError
from ._options import StoreOptions

__all__ = ["BackendFactory", "StoreOptions", "backend_from_url", "register_scheme", "registered_schemes"]


BackendFactory = Callable[[str, StoreOptions], Backend]
"""Builds a backend from its URL and the options; raises :class:`ConfigurationError` for a URL it cannot use."""

_SCHEMES: dict[str, BackendFactory] = {}


def register_scheme(scheme: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Make ``Cache.from_url`` build ``factory(url, options)`` for URLs of ``scheme`` (e.g. ``"memcached"``).

    Registering a scheme that is taken raises :class:`ConfigurationError` unless ``replace=True``, so two
    libraries cannot silently take each other's scheme."""
    name = scheme.lower().removesuffix("://")
    if not name or not all(c.isalnum() or c in "+-." for c in name) or not name[0].isalpha():
        raise ConfigurationError(f"{scheme!r} is not a URL scheme (letters, digits, '+', '-', '.')")
    if name in _SCHEMES and not replace:
        raise ConfigurationError(f"URL scheme {name!r} is registered already; pass replace=True to replace it")
    _SCHEMES[name] = factory


def registered_schemes() -> tuple[str, ...]:
    """The schemes :func:`backend_from_url` knows, sorted."""
    return tuple(sorted(_SCHEMES))


def backend_from_url(url: str, options: StoreOptions, *, cluster: bool = False) -> Backend:
    """The backend ``url`` names, built with ``options``. ``cluster=True`` with a ``redis://`` (``rediss://``)
    URL means the Redis Cluster client, as ``redis+cluster://`` does."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a store URL is a str, got {type(url).__name__}")
    if "://" not in url:
        raise ConfigurationError(
            f"{url!r} is not a store URL: write scheme://..., e.g. redis://127.0.0.1:6379/0 or memory://"
        )
    scheme = urlsplit(url).scheme
    if cluster and not scheme.endswith("+cluster"):
        if f"{scheme}+cluster" not in _SCHEMES:
            raise ConfigurationError(
                f"cluster=True needs a redis:// or rediss:// URL, got {scheme}://; drop cluster=True or use "
                "redis+cluster://host:port"
            )
        scheme = f"{scheme}+cluster"
    factory = _SCHEMES.get(scheme)
    if factory is None:
        raise ConfigurationError(
            f"unknown store URL scheme {scheme!r} in {_redacted(url)!r}: use one of "
            f"{', '.join(s + '://' for s in registered_schemes())} (or register_scheme() your own)"
        )
    return factory(url, options)


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


# -- the built-in schemes -------------------------------------------------------------------------------------


def _memory(url: str, options: StoreOptions) -> Backend:
    from ._memory_backend import MemoryBackend

    parts = urlsplit(url)
    if parts.netloc or parts.path.strip("/") or parts.query:
        raise ConfigurationError(f"memory:// takes no host, path or options, got {url!r}: write memory://")
    return MemoryBackend()  # in-process: no budget to keep (a GuardedBackend can give it one)


def _redis(url: str, options: StoreOptions) -> Backend:
    from ._redis_backend import RedisBackend

    return RedisBackend.from_url(url, options=options)


def _redis_cluster(url: str, options: StoreOptions) -> Backend:
    from ._redis_backend import RedisBackend

    return RedisBackend.cluster_from_url(url, options=options)


for _scheme, _factory in (
    ("memory", _memory),
    ("redis", _redis),
    ("rediss", _redis),
    ("unix", _redis),
    ("redis+cluster", _redis_cluster),
    ("rediss+cluster", _redis_cluster),
):
    register_scheme(_scheme, _factory)
