"""The settings the load benchmark uses: the bench route (off by default), ``cache.local = true`` (hits from the
in-process tier); and the hot path's cheap request ids and ETags. (``cache.enabled = false`` needs the second
edition of the core: tests/service/test_cache_semantics.py.)"""

from __future__ import annotations

import io
import json

import pytest
import redis.asyncio
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from service.app import AccessLines
from service.config import DEFAULT_CONFIG, Settings, load_settings
from service.request_ids import new_request_id
from service.routes import _LIST_QUERIES, list_query
from service.validation import ApiError
from tests.service._support import API, run_service, stop_service, with_sections

LIST = f"{API}/wallpaperList.json?pageSize=20"


def test_defaults_are_off() -> None:
    settings = load_settings(DEFAULT_CONFIG)
    assert settings.server.bench_routes is False
    assert settings.cache.enabled is True
    assert settings.cache.local is False


async def test_bench_route_absent_by_default(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(seeded)
    try:
        response = await running.fetch("/_bench/ceiling?pageSize=20")
        assert response.code == 404
    finally:
        await stop_service(running)


async def test_bench_route_serves_the_list_bytes(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(with_sections(seeded, server={"bench_routes": True}))
    try:
        real = await running.fetch(LIST)
        ceiling = await running.fetch("/_bench/ceiling?pageSize=20")
        again = await running.fetch("/_bench/ceiling?pageSize=20")
        assert real.code == ceiling.code == again.code == 200
        assert ceiling.body == real.body == again.body
    finally:
        await stop_service(running)


async def test_cache_local_serves_hits_from_the_l1(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(with_sections(seeded, cache={"local": True}))
    try:
        assert running.services.cache.local is not None
        first = await running.fetch(LIST)
        second = await running.fetch(LIST)
        third = await running.fetch(LIST)
        assert first.code == second.code == third.code == 200
        assert first.body == second.body == third.body
        assert second.headers["Etag"] == first.headers["Etag"]
        assert running.services.cache.stats()["local_hits"] >= 1
    finally:
        await stop_service(running)


async def test_cache_local_off_has_no_l1(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    running = await run_service(seeded)
    try:
        assert running.services.cache.local is None
    finally:
        await stop_service(running)


def test_request_ids_are_unique_and_valid() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(0 < len(i) <= 64 and all(c.isalnum() or c in "-_." for c in i) for i in ids)


async def test_batched_access_lines_are_json() -> None:
    out = io.BytesIO()
    lines = AccessLines(out, 123, interval=0.01)
    lines.line("r-1", "GET", "/x", 200, 1.5, "hit")
    lines.line("r-2", "GET", "/y", 404, 0.5, None)
    lines.close()
    parsed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [p["request_id"] for p in parsed] == ["r-1", "r-2"]
    for field in ("time", "level", "event", "logger", "pid", "method", "path", "status", "duration_ms", "cache"):
        assert field in parsed[0], field
    assert parsed[0]["logger"] == "wallpaper.access"
    assert parsed[1]["status"] == 404


def test_list_query_memo_keeps_valid_queries_only() -> None:
    def request(query: str) -> HTTPServerRequest:
        line = RequestStartLine("GET", f"{API}/wallpaperList.json?{query}", "HTTP/1.1")
        return HTTPServerRequest(start_line=line, headers=HTTPHeaders({"Host": "127.0.0.1"}))

    _LIST_QUERIES.clear()
    first = list_query(request("pageSize=20&sort=new"))
    assert list_query(request("pageSize=20&sort=new")) is first
    assert (first.page_size, first.sort, first.page, first.category) == (20, "new", 1, None)
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(ApiError, match="pageSize"):
            list_query(request("pageSize=0"))
    assert list(_LIST_QUERIES) == ["pageSize=20&sort=new"]
