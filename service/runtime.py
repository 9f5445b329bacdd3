"""Processes, event loop, signals and the start-up order: fork first, then clients.

``serve()``: bind (or, with SO_REUSEPORT, bind in each child) the public port and the admin port
(``listeners.py``), make the directory the workers share their metrics in (``worker_metrics.py``),
``tornado.process.fork_processes`` (a child that crashes is restarted with its task id, up to ``max_restarts``),
then in each process: its metrics' slot, logging thread, event loop (uvloop when asked and installed), store clients
and pools (``services.py``), the two HTTP servers. SIGTERM/SIGINT: stop accepting on the public port, let in-flight
requests finish (up to ``shutdown_timeout``; ``/readyz`` answers 503 meanwhile), close connections and pools, exit
0 (so the parent does not restart it).
The parent forwards SIGTERM/SIGINT to its children, exits once they all have, and removes the metrics directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

import tornado.process
from tornado.httpserver import HTTPServer

from .admin import make_admin_app
from .app import make_app
from .config import Settings
from .exposition import Exposition, ProcessExposition
from .http_edges import EdgeHTTPServer
from .lane import cache_lane
from .listeners import Sockets, addresses, bind, port_taken
from .logs import setup_logging
from .services import Services
from .worker_metrics import SharedExposition, make_metrics_directory, remove_metrics_directory

__all__ = ["Servers", "port_taken", "serve", "start_servers"]

log = logging.getLogger("wallpaper")


@dataclass(frozen=True)
class Servers:
    public: HTTPServer
    admin: HTTPServer


async def start_servers(
    services: Services, sockets: list[socket.socket], admin_sockets: list[socket.socket]
) -> Servers:
    """This process's HTTP servers: ``make_app(services)`` on ``sockets``, ``make_admin_app`` on
    ``admin_sockets``; starts the reconciler and the metrics' publishing."""
    app = make_app(services)
    s = services.settings.server
    # xheaders=False: Tornado's X-Real-Ip handling validates an address with getaddrinfo() on every request;
    # the one handler that uses the client's address reads the proxy headers itself, from trusted proxies only.
    server = EdgeHTTPServer(
        cache_lane(app, services) or app,
        xheaders=False,
        max_body_size=64 * 1024,
        idle_connection_timeout=s.header_timeout,  # Tornado's header timeout too
        body_timeout=s.body_timeout,
        max_request_line=s.max_request_line,
        max_header_bytes=s.max_header_bytes,
    )
    server.add_sockets(sockets)
    admin = HTTPServer(
        make_admin_app(services, app.settings["log_function"]),
        xheaders=False,
        max_body_size=4096,  # GET only: no body worth reading
        idle_connection_timeout=s.header_timeout,
        body_timeout=s.body_timeout,
    )
    admin.add_sockets(admin_sockets)
    services.reconciler.start()
    services.watch_readiness()
    services.metrics.start()
    return Servers(server, admin)


async def _process_main(settings: Settings, sockets: Sockets, metrics: Exposition) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    services = await Services.start(settings, metrics=metrics)
    servers = await start_servers(services, sockets.public, sockets.admin)
    # What start-up made (modules, settings, clients, the app) lives as long as the process: frozen, it is out of
    # every collection's scan. A full collection under load went from ~42 ms to under 1 ms, ~17 us of CPU per
    # cached request (docs/performance.md, 2026-12-05, "Garbage collection").
    gc.freeze()
    worker = tornado.process.task_id()
    admin = ", ".join("{}:{}".format(*sock.getsockname()[:2]) for sock in sockets.admin)
    log.info("serving on port %s, admin on %s (pid %d, worker %s, loop %s)", settings.server.port, admin,
             os.getpid(), "-" if worker is None else worker, type(loop).__module__)  # fmt: skip
    await stopping.wait()
    log.info("shutting down: %d request(s) in flight", services.in_flight)
    services.stopping = True
    servers.public.stop()
    await services.drain(settings.server.shutdown_timeout)
    servers.admin.stop()  # after the drain: meanwhile /readyz answers 503 (stopping) and scrapes still work
    for server in (servers.public, servers.admin):
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


def _run_loop(settings: Settings, sockets: Sockets, metrics: Exposition) -> None:
    handle = setup_logging(settings.log)
    try:
        if settings.server.loop == "uvloop":
            try:
                import uvloop
            except ImportError:
                log.warning("uvloop asked for but not installed: using asyncio")
            else:
                uvloop.run(_process_main(settings, sockets, metrics))
                return
        asyncio.run(_process_main(settings, sockets, metrics))
    finally:
        handle.stop()


def serve(settings: Settings) -> None:
    """Run the service until SIGTERM/SIGINT (blocks). With ``processes != 1``, fork first."""
    s = settings.server
    public, admin = addresses(settings)
    if s.processes == 1:
        sockets = Sockets(bind(public, reuse_port=False), bind(admin, reuse_port=False))
        _run_loop(settings, sockets, ProcessExposition())
        return
    # One SO_REUSEPORT socket per worker, bound after the fork, keeps keep-alive load even; a port 0 (or no
    # reuse_port) is bound once here and shared, since each worker would get a port of its own.
    early = {
        address.section: [] if s.reuse_port and address.port != 0 else bind(address, reuse_port=False)
        for address in (public, admin)
    }
    directory = make_metrics_directory()
    signal.signal(signal.SIGTERM, _forward_to_children)
    signal.signal(signal.SIGINT, _forward_to_children)
    try:
        # Returns only in the children; the parent waits, restarts crashed children, and exits (SystemExit) when
        # they all have. (Past max_restarts it raises RuntimeError instead, leaving its workers running: their
        # metrics directory stays, for them.)
        # The parent's heap, frozen before the fork, is never written by a child's collector (its pages stay
        # shared copy-on-write), as the gc module's docs advise for a fork without exec.
        gc.freeze()
        worker = tornado.process.fork_processes(s.processes, max_restarts=s.max_restarts)
    except SystemExit:
        remove_metrics_directory(directory)  # the parent, once every worker has exited 0
        raise
    metrics = SharedExposition(directory, worker)  # before any metric object of this process is made
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sockets = Sockets(
        early["server"] or bind(public, reuse_port=True),
        early["admin"] or bind(admin, reuse_port=True),
    )
    _run_loop(settings, sockets, metrics)
