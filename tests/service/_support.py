"""Helpers of the service tests (constants, an in-process server, settings for the test stores)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer

from harness.services import MySQLSettings
from service.config import DEFAULT_CONFIG, Settings, load_settings
from service.runtime import Servers, start_servers
from service.services import Services

N_WALLPAPERS = 300
DB_NAME = "cachelayer_test_service"  # the Mongo database (on the session's own SecantusDB)
API = "/client/v3/wallpaper_4d"


def make_settings(redis_url: str, mysql: MySQLSettings, mongo_uri: str, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "redis": {"url": redis_url, "namespace": "wp-test", "timeout": 0.5},
        "mongo": {"uri": mongo_uri, "database": DB_NAME, "server_selection_timeout_ms": 3000},
        "mysql": {
            "host": mysql.host,
            "port": mysql.port,
            "user": mysql.user,
            "password": mysql.password,
            "database": mysql.database,  # CACHELAYER_TEST_MYSQL_DATABASE (tests/conftest.py)
            "pool_min": 1,
            "pool_max": 5,
        },
        "log": {"sink": "none", "level": "WARNING"},
        # Never the shipped 9888 (`make run` may hold it); a test that serves the admin port gives it a free one.
        "admin": {"port": 0},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(DEFAULT_CONFIG, **base)


@dataclass
class Running:
    services: Services
    servers: Servers
    port: int
    admin_port: int

    @property
    def server(self) -> HTTPServer:
        """The public server."""
        return self.servers.public

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_base(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def fetch(self, path: str, method: str = "GET", *, admin: bool = False, **kwargs: Any) -> HTTPResponse:
        """``path`` on the public port, or with ``admin`` on the admin port (/metrics, /readyz)."""
        body = kwargs.pop("body", b"" if method in ("POST", "PUT", "PATCH") else None)
        return await AsyncHTTPClient().fetch(
            (self.admin_base if admin else self.base) + path,
            method=method,
            body=body,
            raise_error=False,
            decompress_response=kwargs.pop("decompress_response", False),
            allow_nonstandard_methods=True,
            request_timeout=10,
            **kwargs,
        )

    async def json(self, path: str, method: str = "GET", **kwargs: Any) -> tuple[HTTPResponse, Any]:
        response = await self.fetch(path, method, **kwargs)
        return response, orjson.loads(response.body) if response.body else None

    async def metrics(self) -> str:
        """A scrape of the admin port."""
        response = await self.fetch("/metrics", admin=True)
        assert response.code == 200, response.code
        return response.body.decode()


def _listening(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run_service(settings: Settings, port: int | None = None) -> Running:
    """The service in this event loop on ``port`` (a free one when None: a browser test restarts it on its
    port, so that the browser sees one origin), its admin port on a free one."""
    services = await Services.start(settings)
    # Port 0: the kernel picks a free port for the socket itself (a port found free and bound later can be taken in
    # between by another test's server: "Address already in use").
    opened: list[socket.socket] = []
    try:
        for wanted in (0 if port is None else port, 0):  # the public port, then the admin port
            opened.append(_listening(wanted))
    except BaseException:
        for sock in opened:  # nothing of a failed start is left open for the next test
            sock.close()
        await services.close()
        raise
    public, admin = opened
    servers = await start_servers(services, [public], [admin])
    return Running(services, servers, public.getsockname()[1], admin.getsockname()[1])


async def stop_service(running: Running) -> None:
    for server in (running.servers.public, running.servers.admin):
        server.stop()
        await server.close_all_connections()
    await running.services.close()


def with_sections(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """``settings`` with some fields of some sections replaced: ``with_sections(s, cache={"local": True})``."""
    update = {name: getattr(settings, name).model_copy(update=values) for name, values in sections.items()}
    return settings.model_copy(update=update)


def mysql_rows(settings: Settings, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the test database directly (pymysql, autocommit) and return its rows."""
    import pymysql  # type: ignore[import-untyped]

    m = settings.mysql
    conn = pymysql.connect(host=m.host, port=m.port, user=m.user, password=m.password, database=m.database,
                           autocommit=True, connect_timeout=5)  # fmt: skip
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    finally:
        conn.close()


def settings_env(value: Any, prefix: str = "WALLPAPER") -> dict[str, str]:
    if isinstance(value, dict):
        env: dict[str, str] = {}
        for key, inner in value.items():
            env.update(
                settings_env(inner, f"{prefix}_{key.upper()}" if prefix == "WALLPAPER" else f"{prefix}__{key.upper()}")
            )
        return env
    if isinstance(value, list):
        return {prefix: json.dumps(value)}  # a list setting is JSON in the environment
    return {prefix: str(value).lower() if isinstance(value, bool) else str(value)}
