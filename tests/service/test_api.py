"""The API over HTTP against real Redis (DB 15), MariaDB and SecantusDB, with both Mongo drivers."""

from __future__ import annotations

import re

import pymysql
import pytest
import redis.asyncio
import tornado.web
import zstandard

from cachelayer import Outcome
from service import demo_data
from service.config import Settings
from service.lane import CacheLane
from service.openapi import X_CACHE_VALUES, openapi_document
from service.validation import MAX_PAGE_SIZE
from tests.service._support import API, N_WALLPAPERS, Running, run_service, stop_service, with_sections

LIST = f"{API}/wallpaperList.json"


def expected_hot_order(category: str | None = None) -> list[int]:
    docs = [d for d in demo_data.wallpapers(N_WALLPAPERS) if category is None or d["category"] == category]
    return [d["id"] for d in sorted(docs, key=lambda d: (-d["counts"]["downloads"], d["id"]))]


def expected_new_order() -> list[int]:
    docs = demo_data.wallpapers(N_WALLPAPERS)
    return [d["id"] for d in sorted(docs, key=lambda d: (d["created_at"], d["id"]), reverse=True)]


async def test_list_default_page_then_hit(service: Running) -> None:
    response, body = await service.json(LIST)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Cache"] == "miss"
    assert body["code"] == 0
    assert body["msg"] == "ok"
    data = body["data"]
    assert (data["page"], data["pageSize"], data["total"], data["hasMore"]) == (1, 20, N_WALLPAPERS, True)
    ids = [item["id"] for item in data["items"]]
    # Download counters may have moved in earlier tests (the data set is seeded once per session): compare the
    # order to the counters the service reports.
    downloads = [item["downloads"] for item in data["items"]]
    assert downloads == sorted(downloads, reverse=True)
    assert len(ids) == 20
    assert len(set(ids)) == 20
    again, _body2 = await service.json(LIST)
    assert again.headers["X-Cache"] == "hit"
    assert again.body == response.body
    assert again.headers["Etag"] == response.headers["Etag"]


async def test_sort_new_and_category_filter(service: Running) -> None:
    _, body = await service.json(f"{LIST}?sort=new&pageSize=100&page=1")
    assert [i["id"] for i in body["data"]["items"]] == expected_new_order()[:100]
    _, body = await service.json(f"{LIST}?category=anime&pageSize=100")
    expected = [d for d in demo_data.wallpapers(N_WALLPAPERS) if d["category"] == "anime"]
    assert body["data"]["total"] == len(expected)
    assert {i["id"] for i in body["data"]["items"]} == {d["id"] for d in expected}
    assert all(i["category"] == "anime" for i in body["data"]["items"])
    assert body["data"]["hasMore"] is False


@pytest.mark.parametrize(
    ("query", "n_items", "has_more"),
    [
        ("pageSize=1&page=1", 1, True),
        (f"pageSize={MAX_PAGE_SIZE}&page=3", 100, False),  # exactly the last item
        ("pageSize=100&page=4", 0, False),  # past the end: an empty page, not an error
        ("pageSize=7&page=43", 6, False),  # 300 = 42 * 7 + 6: the last, partial page
        ("pageSize=7&page=42", 7, True),
        ("pageSize=100&page=1000", 0, False),  # the largest page accepted
    ],
)
async def test_pagination_edges(service: Running, query: str, n_items: int, has_more: bool) -> None:
    response, body = await service.json(f"{LIST}?{query}")
    assert response.code == 200, body
    assert len(body["data"]["items"]) == n_items
    assert body["data"]["hasMore"] is has_more
    assert body["data"]["total"] == N_WALLPAPERS


async def test_unknown_category_is_404(service: Running) -> None:
    response, body = await service.json(f"{LIST}?category=no-such-thing")
    assert response.code == 404
    assert body["code"] == 40402
    assert "category" in body["msg"]


async def test_detail_and_unknown_ids(service: Running) -> None:
    response, body = await service.json(f"{API}/wallpaper/7.json")
    assert response.code == 200
    expected = demo_data.wallpaper(7)
    got = body["data"]
    assert got["id"] == 7
    assert got["title"] == expected["title"]
    assert got["images"] == expected["images"]
    response, body = await service.json(f"{API}/wallpaper/99999.json")
    assert response.code == 404
    assert body["code"] == 40401
    again, _ = await service.json(f"{API}/wallpaper/99999.json")
    assert again.code == 404  # served from the cached "not found"


async def test_categories_with_counts(service: Running) -> None:
    response, body = await service.json(f"{API}/categories.json")
    assert response.code == 200
    cats = body["data"]
    assert [c["slug"] for c in cats] == [c["slug"] for c in demo_data.CATEGORIES]
    assert sum(c["count"] for c in cats) == N_WALLPAPERS
    anime = sum(1 for d in demo_data.wallpapers(N_WALLPAPERS) if d["category"] == "anime")
    assert next(c["count"] for c in cats if c["slug"] == "anime") == anime


def mysql_events(service: Running, wallpaper_id: int) -> int:
    m = service.services.settings.mysql
    conn = pymysql.connect(host=m.host, port=m.port, user=m.user, password=m.password, database=m.database)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM download_events WHERE wallpaper_id = %s", (wallpaper_id,))
            return int(cursor.fetchone()[0])
    finally:
        conn.close()


async def test_download_invalidates_list_and_detail(service: Running) -> None:
    wid = 11
    category = demo_data.wallpaper(wid)["category"]
    _, detail = await service.json(f"{API}/wallpaper/{wid}.json")
    before = detail["data"]["counts"]["downloads"]
    _, page = await service.json(f"{LIST}?category={category}&pageSize=100")
    await service.json(f"{LIST}?pageSize=100&page=1&sort=new")
    _, _other = await service.json(f"{LIST}?category={'anime' if category != 'anime' else 'city'}")
    _, _cats = await service.json(f"{API}/categories.json")
    events_before = mysql_events(service, wid)

    response, body = await service.json(f"{API}/wallpaper/{wid}/download", "POST")
    assert response.code == 200
    assert body == {"code": 0, "msg": "ok", "data": {"id": wid, "downloads": before + 1}}
    assert mysql_events(service, wid) == events_before + 1

    r, detail = await service.json(f"{API}/wallpaper/{wid}.json")
    assert r.headers["X-Cache"] == "miss"
    assert detail["data"]["counts"]["downloads"] == before + 1
    r, page = await service.json(f"{LIST}?category={category}&pageSize=100")
    assert r.headers["X-Cache"] == "miss"
    assert next(i for i in page["data"]["items"] if i["id"] == wid)["downloads"] == before + 1
    r, _everything = await service.json(f"{LIST}?pageSize=100&page=1&sort=new")
    assert r.headers["X-Cache"] == "miss"
    # Entries the download does not affect stay cached.
    r, _ = await service.json(f"{LIST}?category={'anime' if category != 'anime' else 'city'}")
    assert r.headers["X-Cache"] == "hit"
    r, _ = await service.json(f"{API}/categories.json")
    assert r.headers["X-Cache"] == "hit"


async def test_download_of_unknown_id_writes_nothing(service: Running) -> None:
    events = mysql_events(service, 424242)
    response, body = await service.json(f"{API}/wallpaper/424242/download", "POST")
    assert response.code == 404
    assert body["code"] == 40401
    assert mysql_events(service, 424242) == events


async def test_etag_304_and_cache_headers(service: Running) -> None:
    url = f"{API}/wallpaper/3.json"
    first = await service.fetch(url)
    etag = first.headers["Etag"]
    assert etag.startswith('W/"')
    assert "Accept-Encoding" in first.headers["Vary"]
    max_age = int(first.headers["Cache-Control"].split("max-age=")[1])
    assert 0 < max_age <= service.services.settings.cache.detail.ttl * 1.1 + 1
    not_modified = await service.fetch(url, headers={"If-None-Match": etag})
    assert not_modified.code == 304
    assert not_modified.body == b""
    assert not_modified.headers["Etag"] == etag
    other = await service.fetch(url, headers={"If-None-Match": 'W/"something-else"'})
    assert other.code == 200
    assert other.body == first.body
    await service.fetch(f"{API}/wallpaper/3/download", "POST")
    changed = await service.fetch(url, headers={"If-None-Match": etag})
    assert changed.code == 200
    assert changed.headers["Etag"] != etag


async def test_zstd_passthrough_and_gzip(seeded: Settings, redis_client: redis.asyncio.Redis) -> None:
    # Without a dictionary: stored frames are plain zstd, which any zstd client decodes (with the shipped
    # dictionary a zstd-only client gets gzip: tests/service/test_dictionary_transport.py).
    service = await run_service(with_sections(seeded, cache={"dictionaries": []}))
    try:
        url = f"{LIST}?pageSize=20"
        plain = await service.fetch(url, headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers
        compressed = await service.fetch(url, headers={"Accept-Encoding": "gzip, zstd"})
        assert compressed.headers["Content-Encoding"] == "zstd"
        assert compressed.body[:4] == b"\x28\xb5\x2f\xfd"
        assert zstandard.ZstdDecompressor().decompressobj().decompress(compressed.body) == plain.body
        assert compressed.headers["Etag"] == plain.headers["Etag"][:-1] + '-zstd"'  # one ETag per representation
        # The frame on the wire is the stored one, byte for byte.
        entry = await service.services.catalog.list_page.entry("_all", "hot", 1, 20)
        assert entry.zstd_frame() == compressed.body
        refused = await service.fetch(url, headers={"Accept-Encoding": "zstd;q=0, gzip"})
        assert refused.headers.get("Content-Encoding") == "gzip"
        gz = await service.fetch(url, headers={"Accept-Encoding": "gzip"}, decompress_response=True)
        assert gz.body == plain.body
    finally:
        await stop_service(service)


BAD_LIST_QUERIES = [
    ("pageSize=0", "pageSize"),
    ("pageSize=-1", "pageSize"),
    ("pageSize=101", "pageSize"),
    ("pageSize=1e9", "pageSize"),
    ("pageSize=abc", "pageSize"),
    ("pageSize=%EF%BC%95", "pageSize"),  # a full-width digit
    ("pageSize=" + "9" * 5000, "pageSize"),
    ("page=0", "page"),
    ("page=1001", "page"),
    ("sort=random", "sort"),
    ("sort=", "sort"),
    ('category={"$ne":%20null}', "category"),
    ("category[$ne]=x", "category[$ne]"),
    ("category=anime'%20OR%201=1%20--", "category"),
    ("category=anime;DROP%20TABLE%20categories", "category"),
    ("category=" + "a" * 33, "category"),
    ("category=Anime", "category"),
    ("category=", "category"),
    ("pageSize=1&pageSize=2", "pageSize"),
    ("page=%FF", "page"),
]


async def test_bad_input_is_a_4xx_json_and_reaches_no_store(service: Running) -> None:
    stats = service.services.cache.stats()
    for query, parameter in BAD_LIST_QUERIES:
        response, body = await service.json(f"{LIST}?{query}")
        assert response.code == 400, (query, body)
        assert body["code"] != 0, (query, body)
        assert parameter in body["msg"], (query, body)
    for raw in ["abc", "0", "-1", "1.5", "1e3", "%24ne", "9" * 40, "99999999999999999"]:
        for path in (f"{API}/wallpaper/{raw}.json", f"{API}/wallpaper/{raw}/download"):
            response, body = await service.json(path, "POST" if path.endswith("download") else "GET")
            assert response.code in (400, 404), (path, body)
            assert body["code"] != 0, (path, body)
    after = service.services.cache.stats()
    assert after["loads"] == stats["loads"]
    assert after["misses"] == stats["misses"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", LIST),
        ("POST", LIST),
        ("PUT", f"{API}/wallpaper/1.json"),
        ("GET", f"{API}/wallpaper/1/download"),
        ("DELETE", f"{API}/wallpaper/1/download"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_method_is_405_json(service: Running, method: str, path: str) -> None:
    response, body = await service.json(path, method, body=b"" if method in ("POST", "PUT") else None)
    assert response.code == 405
    assert body["code"] == 40501
    assert method in body["msg"]


async def test_unknown_path_is_404_json(service: Running) -> None:
    response, body = await service.json(f"{API}/nope.json")
    assert response.code == 404
    assert body["code"] == 40403
    assert response.headers["Content-Type"].startswith("application/json")


async def test_health_metrics_openapi(service: Running) -> None:
    response, body = await service.json("/healthz")
    assert response.code == 200
    assert body["data"]["status"] == "alive"
    assert body["data"]["pid"] == int(response.headers["X-Worker-Pid"])
    response, body = await service.json("/readyz", admin=True)
    assert response.code == 200
    assert body["data"]["status"] == "ok"
    assert set(body["data"]["dependencies"]) == {"redis", "mongo", "mysql"}
    assert all(d["status"] == "ok" and d["latency_ms"] >= 0 for d in body["data"]["dependencies"].values())
    await service.fetch(LIST)
    text = await service.metrics()
    assert 'wallpaper_http_requests_total{method="GET",route="list",status="200",x_cache="miss"}' in text
    assert 'cachelayer_misses_total{cache="wallpaper"}' in text
    assert 'wallpaper_pool_connections{state="max",store="mysql"}' in text
    assert 'wallpaper_pool_connections{state="idle",store="redis"}' in text  # the cache backend's stats()
    response, spec = await service.json("/openapi.json")
    assert spec == openapi_document()
    assert spec["openapi"].startswith("3.1")


async def test_the_public_port_has_no_metrics_nor_readiness(service: Running) -> None:
    """What a client may not read (the service's figures, its dependencies' state) is on the admin port only."""
    for path in ("/metrics", "/readyz"):
        response, body = await service.json(path)
        assert response.code == 404, path
        assert body["code"] == 40403
        assert response.headers["Content-Type"].startswith("application/json")
    for path in ("/healthz", f"{API}/categories.json", "/openapi.json"):  # and the admin port has no API
        response, body = await service.json(path, admin=True)
        assert response.code == 404, path
        assert body["code"] == 40403


async def test_openapi_matches_routes(service: Running) -> None:
    """Every route answers with the method the document gives it, and nothing else is documented."""
    spec = openapi_document()
    for path, operations in spec["paths"].items():
        dictionary = service.services.dictionary
        assert dictionary is not None  # the shipped settings store with one
        concrete = path.replace("{id}", str(dictionary.dict_id) if path.startswith("/dictionaries/") else "1")
        for method in operations:
            response = await service.fetch(concrete, method.upper())
            assert response.code == 200, (method, path, response.code)
    callback = service.server.request_callback
    app = callback.app if isinstance(callback, CacheLane) else callback  # the lane stands in front of the app
    assert isinstance(app, tornado.web.Application)
    routes = {rule.matcher.regex.pattern for rule in app.wildcard_router.rules}  # type: ignore[attr-defined]
    assert len(routes) == len(spec["paths"])


async def redis_keys(client: redis.asyncio.Redis) -> int:
    return len([key async for key in client.scan_iter(match="*", count=1000)])


async def test_unknown_categories_cost_the_store_nothing(service: Running, redis_client: redis.asyncio.Redis) -> None:
    """Category names are client input: each unknown one is answered from the known set, without an entry of its
    own (a negative entry per name let any client fill Redis)."""
    _, known = await service.json(f"{LIST}?category=anime")  # the list of categories is cached by now
    assert known["code"] == 0

    before = await redis_keys(redis_client)
    for i in range(200):
        response, body = await service.json(f"{LIST}?category=made-up-{i}")
        assert response.code == 404
        assert body["code"] == 40402
    assert await redis_keys(redis_client) == before
    response, body = await service.json(f"{LIST}?category=anime&pageSize=5")
    assert response.code == 200
    assert body["data"]["items"]


async def test_unknown_ids_above_the_highest_cost_the_store_nothing(
    service: Running, redis_client: redis.asyncio.Redis
) -> None:
    """Wallpaper ids are client input too: an id above the highest one is answered 404 without a database call or
    an entry of its own; "not found" entries are bounded by the id range."""
    response, body = await service.json(f"{API}/wallpaper/7.json")  # the highest id is cached by now
    assert response.code == 200

    before = await redis_keys(redis_client)
    for i in range(200):
        response, body = await service.json(f"{API}/wallpaper/{10_000 + i * 7919}.json")
        assert response.code == 404
        assert body["code"] == 40401
        assert body["msg"].startswith("no wallpaper with id")
    assert await redis_keys(redis_client) == before


async def test_real_answers_hold_to_the_openapi_document(service: Running) -> None:
    """X-Cache and Cache-Status as documented, and no field the schemas do not declare (before, the detail answer
    after a download carried the counter's bookkeeping, downloads_base)."""
    spec = openapi_document()
    assert set(X_CACHE_VALUES) == {outcome.value for outcome in Outcome}
    schemas = spec["components"]["schemas"]
    pattern = re.compile(spec["paths"][f"{API}/wallpaper/{{id}}.json"]["get"]["responses"]["200"]["headers"][
        "Cache-Status"]["schema"]["pattern"])  # fmt: skip
    await service.fetch(f"{API}/wallpaper/5/download", "POST")
    for path in (f"{API}/wallpaper/5.json", LIST, f"{API}/categories.json"):
        for _ in range(2):  # a miss, then a hit
            response = await service.fetch(path)
            assert response.headers["X-Cache"] in X_CACHE_VALUES
            assert pattern.match(response.headers["Cache-Status"]), response.headers["Cache-Status"]
    _, detail = await service.json(f"{API}/wallpaper/5.json")
    wallpaper = schemas["Wallpaper"]
    assert set(detail["data"]) <= set(wallpaper["properties"]), set(detail["data"]) - set(wallpaper["properties"])
    assert set(wallpaper["required"]) <= set(detail["data"])
    _, page = await service.json(LIST)
    assert set(page["data"]) <= set(schemas["Page"]["properties"])
    for item in page["data"]["items"]:
        assert set(item) <= set(schemas["ListItem"]["properties"])
    _, categories = await service.json(f"{API}/categories.json")
    for row in categories["data"]:
        assert set(row) <= set(schemas["Category"]["properties"]), set(row) - set(schemas["Category"]["properties"])
