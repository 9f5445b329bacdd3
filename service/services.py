"""What one process holds: the cache, the store clients and pools, the catalog, and its request count.

``Services.start()`` builds them (after the fork: ``runtime.py``), ``close()`` closes them in order. The handlers
reach every dependency through it; ``pool_stats()`` and ``in_flight`` feed ``/metrics`` (on the admin port), whose
figures ``metrics`` keeps (``exposition.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cachelayer import Cache, Codec, DictionaryRegistry, LocalCache, StoreConnectError

from .addresses import TrustedProxies
from .catalog import Catalog
from .config import Settings
from .downloads import Reconciler
from .exposition import Exposition, ProcessExposition
from .openapi import PREFIX
from .repositories import (
    MongoWallpaperRepository,
    MySQLRepository,
    close_client,
    create_client,
    create_pool,
    settle_late_calls,
)
from .representations import ServedDictionary
from .tracing import RequestTracing, start_tracing

__all__ = ["Services", "build_cache"]

log = logging.getLogger("wallpaper")


def _local_tier(settings: Settings) -> LocalCache | None:
    """The process's in-memory tier in front of Redis (``cache.local``), or None when it is off."""
    c = settings.cache
    if not (c.local and c.enabled):
        return None
    return LocalCache(max_entries=c.local_max_entries, max_bytes=c.local_max_bytes, max_staleness=c.local_max_staleness)


def _codec(settings: Settings) -> Codec:
    """The cache's codec: with ``cache.dictionaries``, every one read with and the first written with."""
    files = settings.cache.dictionaries
    if not files:
        return Codec()
    registry = DictionaryRegistry.from_files(files)
    return Codec(dictionaries=registry, dictionary_id=DictionaryRegistry.id_of(Path(files[0]).read_bytes()))


def build_cache(settings: Settings) -> Cache:
    """The cache the settings describe (not connected yet): ``Cache.disabled`` when ``cache.enabled`` is off."""
    r = settings.redis
    codec = _codec(settings)
    if not settings.cache.enabled:
        return Cache.disabled(namespace=r.namespace, codec=codec)
    return Cache.from_url(
        r.url,
        namespace=r.namespace,
        max_connections=r.max_connections,
        pool_timeout=r.pool_timeout,
        default_ttl=settings.cache.detail.ttl,
        stale_ttl=settings.cache.detail.stale_ttl,
        timeout=r.timeout,
        local=_local_tier(settings),
        codec=codec,
    )


class Services:
    """Everything one process holds: the cache, the store clients and pools, the catalog."""

    def __init__(
        self,
        settings: Settings,
        cache: Cache,
        mongo_client: Any,
        wallpapers: MongoWallpaperRepository,
        mysql: MySQLRepository,
        metrics: Exposition | None = None,
    ) -> None:
        self.settings = settings
        # A forked worker's figures go where every worker reads them (runtime.py); a lone process keeps its own.
        self.metrics: Exposition = metrics if metrics is not None else ProcessExposition()
        self.cache = cache
        self.mongo_client = mongo_client
        self.wallpapers = wallpapers
        self.mysql = mysql
        self.catalog = Catalog(cache, wallpapers, mysql, settings.cache)
        codec = cache.codec
        self.dictionary: ServedDictionary | None = None  # served to browsers, and dcz answers, when raw content
        if codec.dictionary_id is not None and codec.dictionaries.kind(codec.dictionary_id) == "raw":
            self.dictionary = ServedDictionary.of(codec.dictionaries, codec.dictionary_id, f"{PREFIX}/*")
        self.reconciler = Reconciler(self.catalog.downloads, settings.downloads)
        self.proxies = TrustedProxies(settings.server.trusted_proxies)
        self.stopping = False  # set at SIGTERM: /healthz and /readyz answer 503 so the balancer drains us
        # Each store's last readiness (wallpaper_store_ready): the watch's every few seconds, or a /readyz's.
        self.store_ready: dict[str, bool] = {}
        self._watch: asyncio.Task[None] | None = None
        self.tracing: RequestTracing | None = start_tracing(settings.tracing, cache)  # None: tracing is off
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closers: list[Callable[[], None]] = []

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer()`` first in :meth:`close` (the access-log writer flushes its last lines)."""
        self._closers.append(closer)

    @classmethod
    async def start(cls, settings: Settings, *, prepare: bool = True, metrics: Exposition | None = None) -> Services:
        """Build the clients (call after forking). ``prepare``: create indexes and migrate the schema; a store
        that does not answer then is logged and the process starts degraded (its endpoints answer 503).
        ``metrics``: where the process's figures are kept (default: its own registry)."""
        m, q = settings.mongo, settings.mysql
        cache = build_cache(settings)
        try:
            await cache.connect()  # open the pool now, so the first request pays nothing for it
        except StoreConnectError as exc:
            # Redis down (or misconfigured) at start: serve from the databases, failing open, until it answers.
            log.error("redis unusable at start-up (%s: %s); cache failing open", exc.store, exc.reason)
        mongo_client = create_client(
            m.driver,
            m.uri,
            max_pool_size=m.max_pool_size,
            min_pool_size=m.min_pool_size,
            server_selection_timeout_ms=m.server_selection_timeout_ms,
            connect_timeout_ms=m.connect_timeout_ms,
            socket_timeout_ms=m.socket_timeout_ms,
            timeout_ms=m.timeout_ms,
        )
        wallpapers = MongoWallpaperRepository(mongo_client, m.database, timeout=m.timeout_ms / 1000)
        pool_args: dict[str, Any] = {
            "host": q.host, "port": q.port, "user": q.user, "password": q.password, "database": q.database,
            "maxsize": q.pool_max, "connect_timeout": q.connect_timeout,
        }  # fmt: skip
        try:
            pool = await asyncio.wait_for(create_pool(minsize=q.pool_min, **pool_args), q.connect_timeout * 3)
        except Exception as exc:
            log.error("mysql unreachable at start-up; starting degraded: %r", exc)
            pool = await create_pool(minsize=0, ensure_database=False, **pool_args)
        mysql = MySQLRepository(pool, query_timeout=q.query_timeout, acquire_timeout=q.pool_acquire_timeout)
        services = cls(settings, cache, mongo_client, wallpapers, mysql, metrics)
        if prepare:
            await services.prepare()
        return services

    async def prepare(self) -> None:
        """Indexes for every query, the MySQL schema: idempotent; failures are logged, not raised."""
        try:
            await asyncio.wait_for(self.wallpapers.ensure_indexes(), 10)
        except Exception as exc:
            log.error("mongo: could not create indexes at start-up: %r", exc)
        try:
            applied = await asyncio.wait_for(self.mysql.migrate(), 15)
            if applied:
                log.info("mysql: applied schema migrations %s", applied)
        except Exception as exc:
            log.error("mysql: could not migrate the schema at start-up: %r", exc)

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """Each dependency: ``{"status": "ok" | "down", "latency_ms": float, "error"?: str}``, concurrently, each
        within 1 s."""

        async def check(probe: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
            started = time.perf_counter()
            result: dict[str, Any] = {"status": "ok"}
            try:
                async with asyncio.timeout(1.0):
                    if await probe() is False:
                        result = {"status": "down", "error": "no answer"}
            except Exception as exc:
                result = {"status": "down", "error": type(exc).__name__}
            result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
            return result

        redis_state, mongo_state, mysql_state = await asyncio.gather(
            check(self.cache.ping), check(self.wallpapers.ping), check(self.mysql.ping)
        )
        states = {"redis": redis_state, "mongo": mongo_state, "mysql": mysql_state}
        self.store_ready = {store: state["status"] == "ok" for store, state in states.items()}
        return states

    def watch_readiness(self, interval: float = 5.0) -> None:
        """Check the stores every ``interval`` seconds in the background, for ``wallpaper_store_ready``: a scrape
        reads the last result and never waits on a store."""

        async def watch() -> None:
            while True:
                await self.readiness()
                await asyncio.sleep(interval)

        self._watch = asyncio.create_task(watch(), name="wallpaper-readiness-watch")

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Each store's connection figures for ``wallpaper_pool_connections``. MySQL: its pool's own. Redis: the
        cache backend's ``stats()`` (in use, idle, queued callers and the limit of this process's pool; a Redis
        Cluster reports none: one pool per node). MongoDB: the configured ceiling, all its public interface tells."""
        redis: dict[str, int] = {"max": self.settings.redis.max_connections if self.settings.cache.enabled else 0}
        cache_stats = self.cache.backend.stats()
        for state in ("in_use", "idle", "queued", "max"):
            if (value := cache_stats.get(f"store_pool_{state}")) is not None:
                redis[state] = int(value)
        return {"mysql": self.mysql.pool_stats(), "redis": redis, "mongo": {"max": self.settings.mongo.max_pool_size}}

    def request_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Wait until no request is in flight, or ``grace`` seconds passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await self.reconciler.stop()
        for closer in self._closers:
            with contextlib.suppress(Exception):
                closer()
        self._closers.clear()
        await self.cache.aclose()
        await settle_late_calls(within_seconds=2.0)  # calls past their budget end by the drivers' own timeouts first
        await close_client(self.mongo_client)
        await self.mysql.close()
        self.metrics.close()  # after the cache: its last counts are in what a worker publishes on its way out
        if self.tracing is not None:
            self.tracing.close()  # exports the spans still batched
