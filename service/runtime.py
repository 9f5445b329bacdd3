"""Processes, event loop, signals and the start-up order: fork first, then clients.

``serve()``: bind (or, with SO_REUSEPORT, bind in each child), ``tornado.process.fork_processes`` (a child that
crashes is restarted, up to ``max_restarts``), then in each process: logging thread, event loop (uvloop when asked
and installed), store clients and pools (``services.py``), HTTP server. SIGTERM/SIGINT: stop accepting, let
in-flight requests finish (up to ``shutdown_timeout``), close connections and pools, exit 0 (so the parent does
not restart it).
The parent forwards SIGTERM/SIGINT to its children and exits once they all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

import tornado.netutil
import tornado.process
from tornado.httpserver import HTTPServer

from .app import make_app
from .config import Settings
from .http_edges import EdgeHTTPServer
from .logs import setup_logging
from .services import Services

__all__ = ["port_taken", "serve", "start_server"]

log = logging.getLogger("wallpaper")


async def start_server(services: Services, sockets: list[socket.socket]) -> HTTPServer:
    """The HTTP server of this process on ``sockets``, serving ``make_app(services)``; starts the reconciler."""
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
