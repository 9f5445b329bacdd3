"""``cachelayer`` (``python -m cachelayer``): inspect, key, keys and stats against real stores (the machine's
Redis, DB 15, and the session's Redis Cluster); exit codes 0 found, 1 not found, 2 usage, 3 store unavailable.

The commands run in-process through ``main()`` (each runs its own event loop, so these tests are plain functions),
and once as a subprocess through ``python -m cachelayer``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cachelayer import Cache, Codec, DictionaryRegistry, cached, register_prometheus, train_dictionary
from cachelayer._cli import main
from harness import RedisClusterServer
from harness.servers import free_port
from service.demo_data import medium_page
from tests import _cli_target

Stores = ["redis", "cluster"]


@pytest.fixture(params=Stores)
def store_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    if request.param == "redis":
        return redis_url
    cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
    return cluster.url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def seed(url: str, namespace: str) -> tuple[str, dict[str, Any]]:
    """A tagged page stored through @cached; returns its key and value."""

    async def go() -> str:
        cache = Cache.from_url(url, namespace=namespace)
        try:
            @cached(ttl=600, cache=cache, tags=["pages"])
            async def page(number: int) -> dict[str, Any]:
                return medium_page(number)

            await page(3)
            return page.key(3)
        finally:
            await cache.aclose()

    return asyncio.run(go()), medium_page(3)


def test_inspect_prints_the_decoded_entry(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    key, value = seed(store_url, f"cli-{uuid.uuid4().hex[:8]}")
    code, out, err = run(capsys, "inspect", key, "--url", store_url, "--json")
    assert code == 0, err
    document = orjson.loads(out)
    assert document["found"] is True
    assert document["value"] == value
    assert document["checksum_ok"] is True
    assert document["frame"]["compression"] == "zstd"
    assert document["frame"]["serializer"] == "orjson"
    assert [t["tag"] for t in document["frame"]["tags"]] == ["pages"]
    assert 0 < document["ttl_s"] <= 1800
    assert document["lease_held"] is False
    assert document["serialized_bytes"] == len(orjson.dumps(value))
    assert document["stored_bytes"] < document["serialized_bytes"]
    if store_url.startswith("redis+cluster"):
        assert document["node"].count(":") == 1
        assert 0 <= document["slot"] < 16384
    code, out, err = run(capsys, "inspect", key, "--url", store_url)
    assert code == 0
    assert f"key:        {key}" in out
    assert "checksum:" in out
    assert "matches" in out
    assert '"title"' in out
    assert err == ""


def test_inspect_of_a_missing_key_exits_1(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    key = f"cli-missing:{uuid.uuid4().hex}"
    code, out, err = run(capsys, "inspect", key, "--url", store_url, "--json")
    assert code == 1
    assert orjson.loads(out) == {"key": key, "found": False}
    assert "not found" in err


def test_inspect_of_a_value_that_is_not_a_frame_says_so(
    capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    key, _ = seed(redis_url, f"cli-{uuid.uuid4().hex[:8]}")
    tag_key = key.split(":{")[0] + ":tag:{pages}"  # a tag's stamp: 16 random bytes, not a frame
    code, out, _ = run(capsys, "inspect", tag_key, "--url", redis_url, "--json")
    assert code == 0
    document = orjson.loads(out)
    assert document["frame"] is None
    assert document["stored_bytes"] == 16
    assert "frame" in document["error"] or "shorter" in document["error"]


def test_store_unavailable_exits_3_and_mistakes_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    nothing = f"redis://127.0.0.1:{free_port()}/0"
    code, out, err = run(capsys, "inspect", "k", "--url", nothing)
    assert (code, out) == (3, "")
    assert "store unavailable" in err
    assert "127.0.0.1" in err
    for url, says in (
        ("redis://127.0.0.1:notaport/0", "not a port"),
        ("memory://", "not a Redis store"),
        ("ftp://example", "scheme"),
    ):
        code, out, err = run(capsys, "inspect", "k", "--url", url)
        assert (code, out) == (2, ""), url
        assert says in err, err
    code, _, err = run(capsys, "keys", "*", "--url", "")
    assert code == 2
    assert "CACHELAYER_URL" in err


def test_key_is_the_decorators_key_and_arguments_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    target = "tests._cli_target"
    code, out, _ = run(capsys, "key", f"{target}:page", "3", "size=10")
    assert code == 0
    assert out.strip() == _cli_target.page.key(3, size=10)
    code, int_key, _ = run(capsys, "key", f"{target}:page", "1")
    code, str_key, _ = run(capsys, "key", f"{target}:page", '"1"')
    assert int_key != str_key  # f(1) and f("1") are different entries
    code, out, _ = run(capsys, "key", f"{target}:page", "3", "--json")
    assert orjson.loads(out)["tags"] == ["pages"]

    code, _, err = run(capsys, "key", f"{target}:page", "abc")
    assert code == 2
    assert "not JSON" in err
    assert '\'"abc"\'' in err  # how to write a string
    code, _, err = run(capsys, "key", f"{target}:detail", '"x"')
    assert code == 2
    assert "--namespace" in err  # its cache is the default one, not set up in this process
    code, out, _ = run(capsys, "key", f"{target}:detail", '"x"', "--namespace", "wp")
    assert code == 0
    assert out.startswith("wp:{")
    code, out, err = run(capsys, "key", f"{target}:Shelf.books", '"poetry"')
    assert (code, out) == (2, "")
    assert "is a method" in err
    for bad, says in ((f"{target}:nothing", "has no"), ("no_such_module:f", "cannot import"),
                      (f"{target}:NAMESPACE", "not a @cached function"), ("no-colon", "module:function")):
        code, _, err = run(capsys, "key", bad)
        assert code == 2, bad
        assert says in err, err


def test_keys_scans_every_master(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    namespace = f"cli-keys-{uuid.uuid4().hex[:8]}"

    async def fill() -> list[str]:
        cache = Cache.from_url(store_url, namespace=namespace)
        try:
            await cache.set_many({f"n{i}": i for i in range(40)})
            return [cache.key(f"n{i}") for i in range(40)]
        finally:
            await cache.aclose()

    stored = asyncio.run(fill())
    code, out, _ = run(capsys, "keys", f"{namespace}:*", "--url", store_url, "--json")
    assert code == 0
    document = orjson.loads(out)
    assert sorted(document["keys"]) == sorted(stored)  # on a cluster, the keys of all three masters
    assert document["truncated"] is False
    code, out, err = run(capsys, "keys", f"{namespace}:*", "--url", store_url, "--limit", "5")
    assert code == 0
    assert len(out.splitlines()) == 5
    assert "--limit 5" in err
    code, out, _ = run(capsys, "keys", f"{namespace}-none:*", "--url", store_url)
    assert (code, out) == (1, "")


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, Cache]]:
    """A real /metrics: a cache's collector in its own registry, served over HTTP on a free port."""
    cache = Cache.from_url("memory://", namespace=f"cli-stats-{uuid.uuid4().hex[:8]}")
    registry = CollectorRegistry()
    register_prometheus("wallpapers", cache.stats, registry)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", cache
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_stats_reads_a_running_services_metrics(
    capsys: pytest.CaptureFixture[str], metrics_server: tuple[str, Cache]
) -> None:
    url, cache = metrics_server

    async def traffic() -> None:
        await cache.set("a", 1)
        for name in ("a", "a", "a", "b"):
            await cache.get(name)

    asyncio.run(traffic())
    code, out, _ = run(capsys, "stats", url, "--json")
    assert code == 0
    document = orjson.loads(out)
    assert document["hit_ratio"] == pytest.approx(0.75)
    assert document["metrics"]["cachelayer_hits_total"] == {"cache=wallpapers": 3.0}
    code, out, _ = run(capsys, "stats", url)
    assert out.startswith("hit ratio 0.750 (3 hits, 1 misses)")
    code, _, err = run(capsys, "stats", f"http://127.0.0.1:{free_port()}/metrics")
    assert code == 3
    assert "unavailable" in err
    code, _, err = run(capsys, "stats", "127.0.0.1:9090")
    assert code == 2


def test_python_dash_m_and_the_console_script(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cachelayer", "inspect", "cli-absent", "--url", redis_url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "not found" in done.stderr
    scripts = entry_points(group="console_scripts", name="cachelayer")
    assert [script.value for script in scripts] == ["cachelayer._cli:main"]


def test_inspect_reads_a_dictionary_compressed_value_with_its_dictionary(
    capsys: pytest.CaptureFixture[str], redis_url: str, tmp_path: Path
) -> None:
    samples = [orjson.dumps(medium_page(n)["items"][n % 20]) for n in range(400)]
    dictionary = train_dictionary(samples, size=4096)
    path = tmp_path / "detail.zdict"
    path.write_bytes(dictionary)
    registry = DictionaryRegistry([dictionary])
    codec = Codec(dictionaries=registry, dictionary_id=registry.add(dictionary))
    value = medium_page(7)["items"][3]
    key = f"cli-dict:{{{uuid.uuid4().hex}}}"

    async def store() -> None:
        cache = Cache.from_url(redis_url, namespace="cli-dict")
        try:
            await cache.backend.set(key, codec.encode(value, expires_at=time.time() + 60), 60_000)
        finally:
            await cache.aclose()

    asyncio.run(store())
    code, out, _ = run(capsys, "inspect", key, "--url", redis_url, "--json")
    document = orjson.loads(out)
    assert code == 0  # found, though not readable without its dictionary
    assert document["frame"]["compression"] == "zstd with a raw-content dictionary"
    assert "dictionary" in document["error"]
    assert "value" not in document
    code, out, _ = run(capsys, "inspect", key, "--url", redis_url, "--json", "--dictionary", str(path))
    assert code == 0
    assert orjson.loads(out)["value"] == value
    code, _, err = run(capsys, "inspect", key, "--url", redis_url, "--dictionary", str(tmp_path / "absent"))
    assert code == 2
    assert "--dictionary" in err


def test_dictionary_train_samples_a_namespace_and_measures_on_values_it_did_not_train_on(
    capsys: pytest.CaptureFixture[str], store_url: str, tmp_path: Path
) -> None:
    namespace = f"cli-train-{uuid.uuid4().hex[:8]}"

    async def fill() -> None:
        cache = Cache.from_url(store_url, namespace=namespace)
        try:
            await cache.set_many({f"w{n}": medium_page(n)["items"][n % 20] for n in range(300)}, ttl=600)
        finally:
            await cache.aclose()

    asyncio.run(fill())
    out_file = tmp_path / "wp.zdict"
    code, out, err = run(capsys, "dictionary", "train", "--url", store_url, "--namespace", namespace,
                         "--out", str(out_file), "--size", "4096", "--json")  # fmt: skip
    assert code == 0, err
    document = orjson.loads(out)
    assert (document["trained_on"], document["measured_on"]) == (150, 150)
    assert document["stored_vs_json_with"] < 0.8 * document["stored_vs_json_without"]
    data = out_file.read_bytes()
    assert DictionaryRegistry.from_files([out_file]).ids() == [document["id"]] == [DictionaryRegistry.id_of(data)]
    assert data[:4] == b"CLrc"  # raw content, servable to browsers as is
    code, out, _ = run(capsys, "dictionary", "info", str(out_file), "--json")
    assert orjson.loads(out)["id"] == document["id"]
    assert orjson.loads(out)["form"] == "raw"
    # Never overwritten; an empty namespace has nothing to train on.
    code, _, err = run(capsys, "dictionary", "train", "--url", store_url, "--namespace", namespace, "--out",
                       str(out_file))  # fmt: skip
    assert code == 2
    assert "exists" in err
    code, _, err = run(capsys, "dictionary", "train", "--url", store_url, "--namespace", f"{namespace}-empty",
                       "--out", str(tmp_path / "none.zdict"))  # fmt: skip
    assert code == 1
    assert "training needs at least" in err
