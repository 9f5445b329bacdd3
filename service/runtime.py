"""Processes, event loop, signals and the start-up order: fork first, then clients.

``serve()``: bind (or, with SO_REUSEPORT, bind in each child), ``tornado.process.fork_processes`` (a child that
crashes is restarted, up to ``max_restarts``), then in each process: logging thread, event loop (uvloop when asked
and installed), store clients and pools, HTTP server. SIGTERM/SIGINT: stop accepting, let in-flight requests
finish (up to ``shutdown_timeout``), close connections and pools, exit 0 (so the parent does not restart it).
The parent forwards SIGTERM/SIGINT to its children and exits once they all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import tornado.netutil
import tornado.process
from tornado.httpserver import HTTPServer

from cachelayer import Cache, Codec, DictionaryRegistry, LocalCache, StoreConnectError

from .addresses import TrustedProxies
from .catalog import Catalog
from .config import Settings
from .downloads import Reconciler
from .http_edges import EdgeHTTPServer
from .logs import setup_logging
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

__all__ = ["Services", "serve", "start_server"]

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


class Services:
    """Everything one process holds: the cache, the store clients and pools, the catalog."""

    def __init__(
        self,
        settings: Settings,
        cache: Cache,
        mongo_client: Any,
        wallpapers: MongoWallpaperRepository,
        mysql: MySQLRepository,
    ) -> None:
        self.settings = settings
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
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closers: list[Callable[[], None]] = []

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer()`` first in :meth:`close` (the access-log writer flushes its last lines)."""
        self._closers.append(closer)

    @classmethod
    async def start(cls, settings: Settings, *, prepare: bool = True) -> Services:
        """Build the clients (call after forking). ``prepare``: create indexes and migrate the schema; a store
        that does not answer then is logged and the process starts degraded (its endpoints answer 503)."""
        r, m, q = settings.redis, settings.mongo, settings.mysql
        codec = _codec(settings)
        cache = Cache.disabled(namespace=r.namespace, codec=codec) if not settings.cache.enabled else Cache.from_url(
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
        services = cls(settings, cache, mongo_client, wallpapers, mysql)
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
        return {"redis": redis_state, "mongo": mongo_state, "mysql": mysql_state}

    def pool_stats(self) -> dict[str, dict[str, int]]:
        # The Redis backend's client pool (none for a disabled cache or a cluster backend: zeros then).
        client = getattr(getattr(self.cache, "backend", None), "client", None)
        redis_pool = getattr(client, "connection_pool", None)
        in_use = len(getattr(redis_pool, "_in_use_connections", ()))
        return {
            "mysql": self.mysql.pool_stats(),
            "redis": {"in_use": in_use, "max": int(getattr(redis_pool, "max_connections", 0) or 0)},
            "mongo": {"max": self.settings.mongo.max_pool_size},
        }

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
        await self.reconciler.stop()
        for closer in self._closers:
            with contextlib.suppress(Exception):
                closer()
        self._closers.clear()
        await self.cache.aclose()
        await settle_late_calls(within_seconds=2.0)  # calls past their budget end by the drivers' own timeouts first
        await close_client(self.mongo_client)
        await self.mysql.close()


async def start_server(services: Services, sockets: list[socket.socket]) -> HTTPServer:
    from .app import make_app

    app = make_app(services)
    s = services.settings.server
    # xheaders=False: Tornado's X-Real-Ip handling validates an address with getaddrinfo() on every request;
    # the one handler that uses the client's address reads the proxy headers itself, from trusted proxies only.
    server = EdgeHTTPServer(
        app,
        xheaders=False,
        max_body_size=64 * 1024,
        idle_connection_timeout=s.header_timeout,  # Tornado's header timeout too
        body_timeout=s.body_timeout,
        max_request_line=s.max_request_line,
        max_header_bytes=s.max_header_bytes,
    )
    server.add_sockets(sockets)
    services.reconciler.start()
    return server


async def _process_main(settings: Settings, sockets: list[socket.socket]) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    services = await Services.start(settings)
    server = await start_server(services, sockets)
    log.info("serving on port %s (pid %d, loop %s)", settings.server.port, os.getpid(), type(loop).__module__)
    await stopping.wait()
    log.info("shutting down: %d request(s) in flight", services.in_flight)
    services.stopping = True
    server.stop()
    await services.drain(settings.server.shutdown_timeout)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.close_all_connections(), 2)
    await services.close()
    log.info("stopped")


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _forward_to_children(signum: int, _frame: Any) -> None:
    for child in _children_of(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)


def port_taken(settings: Settings) -> str | None:
    """Why the service cannot have its port, or None. With ``reuse_port`` a second service would bind the same
    port beside the first (SO_REUSEPORT) and the kernel would split the connections between them: a probe bound
    without SO_REUSEPORT fails while any socket listens there."""
    s = settings.server
    if s.port == 0:
        return None
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT are no owner
        probe.bind((s.host, s.port))
    except OSError as exc:
        return (
            f"port {s.port} on {s.host} is not free ({exc.strerror}): another server holds it; stop it or choose "
            f"another port (server.port: --port or WALLPAPER_SERVER__PORT)"
        )
    finally:
        probe.close()
    return None


def _bind(settings: Settings, *, reuse_port: bool) -> list[socket.socket]:
    s = settings.server
    return tornado.netutil.bind_sockets(s.port, s.host, family=socket.AF_INET, backlog=s.backlog, reuse_port=reuse_port)


def _run_loop(settings: Settings, sockets: list[socket.socket]) -> None:
    handle = setup_logging(settings.log)
    try:
        if settings.server.loop == "uvloop":
            try:
                import uvloop
            except ImportError:
                log.warning("uvloop asked for but not installed: using asyncio")
            else:
                uvloop.run(_process_main(settings, sockets))
                return
        asyncio.run(_process_main(settings, sockets))
    finally:
        handle.stop()


def serve(settings: Settings) -> None:
    """Run the service until SIGTERM/SIGINT (blocks). With ``processes != 1``, fork first."""
    s = settings.server
    if s.processes == 1:
        _run_loop(settings, _bind(settings, reuse_port=False))
        return
    per_process = s.reuse_port and s.port != 0
    shared = [] if per_process else _bind(settings, reuse_port=False)
    signal.signal(signal.SIGTERM, _forward_to_children)
    signal.signal(signal.SIGINT, _forward_to_children)
    # Returns only in the children; the parent waits, restarts crashed children, and exits when they all have.
    tornado.process.fork_processes(s.processes, max_restarts=s.max_restarts)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sockets = _bind(settings, reuse_port=True) if per_process else shared
    _run_loop(settings, sockets)
