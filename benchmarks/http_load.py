"""HTTP load on the wallpaper service: how close a cache hit comes to what Tornado itself can serve (issue 5).

``python -m benchmarks.http_load [--quick | --smoke] [--json PATH] [--markdown PATH] [--results-dir DIR]``

The harness starts the service itself (``python -m service serve --config <generated toml> --port <free>
--processes N --loop L``) against the real stores: Redis DB 13 (flushed first), MariaDB and SecantusDB from the dev
stack (``scripts/devstack up`` when Mongo does not answer), on databases ``wallpaper_bench_<N>`` seeded with
``--wallpapers`` N documents (default 40: see ``DEFAULT_WALLPAPERS``). It drives it from 127.0.0.1 only, every run
bounded in time (wrk ``-d``) or in count (ab/h2load ``-n``, plus a subprocess timeout), and stops every server it
started (SIGTERM to the PID it spawned, then SIGKILL to that process group), also on errors and Ctrl-C. Each server
has a free admin port of its own (``WALLPAPER_ADMIN__PORT``; ``Server.admin``: its ``/metrics`` and ``/readyz``), so
servers side by side never share one, nor take the shipped 9888.

Variants (one list page, ``pageSize=20``, ~7.4 KB of JSON):

* ``ceiling``: ``GET /_bench/ceiling`` (``[server] bench_routes = true``): the same bytes written from memory by
  a bare Tornado handler (no validation, metrics or access line): what Tornado itself serves;
* ``cached`` / ``cached-zstd``: the real list endpoint with a warm cache (for the second, ``Accept-Encoding:
  gzip, deflate, br, zstd``, what Chromium sends before it holds a dictionary: the stored frame goes out as is),
  answered by the cache lane before Tornado builds a handler (``service/lane.py``);
* ``cached-handlers``: the same Redis hits through Tornado's handlers (``[server] lane = false``): what the lane is
  worth on a Redis hit (one process only);
* ``cached-dcz``: the same page from a server whose cache stores with the shipped zstd dictionary (``[cache]
  dictionaries`` of config/wallpaper.toml, its own Redis namespace), asked as Chromium asks once it holds the
  dictionary (``Accept-Encoding: gzip, deflate, br, zstd, dcb, dcz`` and ``Available-Dictionary: :<base64 SHA-256>:``
  of the dictionary the service names in its ``Link: <...>; rel="compression-dictionary"`` header and serves): the
  stored frame goes out behind the 40-byte RFC 9842 prefix. Before the rounds an answer is fetched with wrk's
  headers and must be ``Content-Encoding: dcz`` whose body decodes, with the served dictionary, to the identity
  answer (else the run stops: the variant never measures another encoding); ``cached-zstd`` is checked the same
  way for ``zstd``, and both again after the rounds. Its target is against ``cached-zstd``, paired per round;
* ``cached-l1``: the same with ``[cache] local = true`` (the library's in-process tier in front of Redis), whose
  hits the lane answers without an await;
* ``cached-l1-handlers``: the same hits through Tornado's handlers (``[server] lane = false``): what the lane is
  worth on a local-tier hit (one process only);
* ``cached-cluster``: the same list page with the cache on a Redis Cluster (3 masters + 3 replicas on free
  loopback ports, started by the benchmark, ``redis+cluster://`` in the config);
* ``uncached``: ``[cache] enabled = false``: every request goes to MongoDB and MySQL.

Each with ``--loop asyncio|uvloop`` and ``--processes 1|2`` (``--quick``: fewer variants away from 1 process
asyncio, 2 s runs; ``--smoke``: asyncio and 1 process only, the cached variants against the ceiling, 1 s runs, no
bursts: a check that the harness and its encoding checks work, figures meaningless). Plus the original issue's
command shape ``ab -c 10000 -n 10000 <list url>`` against ``cached`` and ``uncached``, the same burst from
``h2load`` as a second opinion, and for both the number of 2xx answers the service logged (open-files limit raised
to ``NOFILE`` for the server and the clients).

Targets: ratios inside one setting of one run, each row the median of its interleaved rounds; issue 17's
``cached-dcz >= 0.95 x cached-zstd`` is the median of the per-round ratios (round i of both ran back to back).

CPU placement (2 cores shared by the server and the load generator): with 1 process the server is pinned to CPU 0
and wrk/ab to CPU 1 (``taskset``), so the generator never steals the server's core and the figure is one server
core's worth; with 2 processes nothing is pinned (two workers and wrk on two cores: any pinning leaves one worker
sharing a core with wrk while the other has one alone), so 2-process figures include wrk's own CPU cost.

Writes ``benchmarks/results/http.{md,json,png}`` (``--quick``) or ``http-full.{md,json,png}`` (full), or into
``--results-dir DIR``; ``--smoke`` writes only where ``--results-dir``, ``--json`` or ``--markdown`` say.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import zstandard

from benchmarks._common import RESULTS_DIR, environment, format_table, markdown_table, write_json, write_text

REPO = Path(__file__).resolve().parent.parent
REDIS_DB_URL = "redis://127.0.0.1:6379/13"
NAMESPACE = "wpbench"
LIST_PATH = "/client/v3/wallpaper_4d/wallpaperList.json?pageSize=20"
CEILING_PATH = "/_bench/ceiling?pageSize=20"
NOFILE = 20_000
PACKAGES = ["tornado", "uvloop", "redis", "motor", "pymongo", "aiomysql", "zstandard", "orjson"]
AB_BUDGET_S = 120  # the longest an ab -c 10000 -n 10000 run may take
AB_SOCKET_TIMEOUT_S = AB_BUDGET_S  # ab -s: with 10,000 queued requests the last one waits for the whole run
BURST = 10_000  # requests = concurrent connections in the original command shape
UNCACHED_CONNECTIONS = 4
#: The demo collection's size. SecantusDB's find reads and decodes every candidate document before it applies
#: ``limit`` (secantus/storage.py ``find_matching``), and ``count_documents`` scans too, so an uncached page costs
#: time linear in the collection: 4 / 9 / 330 ms (find) and 2.7 / 7 / 274 ms (count) at 100 / 300 / 10,000
#: documents, timed by hand with pymongo (docs/performance.md, "Uncached: the data set"). A mongod walks the index
#: and reads 20 documents whatever the size. 40 documents (two pages) keep the uncached request closest to that,
#: and the 10,000-request bursts within their time bound.
DEFAULT_WALLPAPERS = 40
#: The uncached variant measures the database path's capacity, so its Mongo budget is long: with the shipped 2 s
#: budget a 10,000-request uncached burst is shed with 503s and ``Retry-After`` (by design: docs/operations.md,
#: budgets), which would measure the budget, not the path.
UNCACHED_MONGO_BUDGET = "timeout_ms = 120000\nsocket_timeout_ms = 120000\nserver_selection_timeout_ms = 60000"
VARIANTS = (
    "ceiling",
    "cached",
    "cached-zstd",
    "cached-dcz",
    "cached-l1",
    "cached-l1-handlers",
    "cached-handlers",
    "cached-cluster",
    "uncached",
)
#: Measured at one process only: what the cache lane is worth (the same hits through Tornado's handlers).
ONE_PROCESS_VARIANTS = ("cached-l1-handlers", "cached-handlers")
#: Measured only at 1 process asyncio in ``--quick``.
ENCODING_VARIANTS = ("cached-zstd", "cached-dcz")
#: ``--smoke``: what runs (asyncio, 1 process; no uncached row, no cluster, no bursts).
SMOKE_VARIANTS = tuple(v for v in VARIANTS if v not in ("cached-cluster", "uncached"))
#: The service configuration whose ``[cache] dictionaries`` the ``cached-dcz`` server is given.
SHIPPED_CONFIG = REPO / "config" / "wallpaper.toml"
#: What Chromium sends once it holds a compression dictionary (tests/service/test_dictionary_transport.py).
BROWSER_ENCODINGS = "gzip, deflate, br, zstd, dcb, dcz"
#: What the same Chromium (Debian's 156, headless) sends before it holds one: the ``cached-zstd`` client, so that
#: ``cached-dcz / cached-zstd`` compares one browser with and without the dictionary. (Until 2026-12-06 it was
#: ``Accept-Encoding: zstd``: 35 bytes fewer than the dcz client's headers, which Tornado's header parsing charges
#: per byte; docs/performance.md, "The cache lane".)
ZSTD_BROWSER_ENCODINGS = "gzip, deflate, br, zstd"
#: RFC 9842: a ``dcz`` body is this magic, the dictionary's SHA-256 (32 bytes), then one zstd frame.
DCZ_MAGIC = b"\x5e\x2a\x4d\x18\x20\x00\x00\x00"
DCZ_PREFIX = len(DCZ_MAGIC) + 32
_DICTIONARY_LINK = re.compile(r'<([^>]*)>\s*;[^,]*?\brel="?compression-dictionary"?', re.I)


# -- parsing wrk / ab output ------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _count(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text, re.M)
    return int(match.group(1)) if match else None


def _result(
    rps: float,
    p50_ms: float | None,
    p99_ms: float | None,
    *,
    non_2xx: int,
    socket_errors: int,
    failed: int,
    requests: int | None,
) -> dict[str, Any]:
    """What every parser returns (the fields of :class:`Row` a load tool reports)."""
    return {
        "rps": rps,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
        "non_2xx": non_2xx,
        "socket_errors": socket_errors,
        "failed": failed,
        "requests": requests,
    }


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's report (run with ``--latency``): requests/s, p50/p99 (ms), non-2xx/3xx, socket errors, requests."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if rps is None:
        raise ValueError("no 'Requests/sec' in wrk output")
    percentiles: dict[int, float] = {}
    block = text.split("Latency Distribution", 1)
    if len(block) == 2:
        for pct, value in re.findall(r"^\s+([0-9.]+)%\s+([0-9.]+(?:us|ms|s|m|h))\s*$", block[1], re.M):
            percentiles[round(float(pct))] = _duration_ms(value)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return _result(
        float(rps.group(1)),
        percentiles.get(50),
        percentiles.get(99),
        non_2xx=_count(r"Non-2xx or 3xx responses:\s+(\d+)", text) or 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        failed=0,
        requests=_count(r"^\s*(\d+) requests in ", text),
    )


def parse_ab(text: str) -> dict[str, Any]:
    """ab's report: requests/s, p50/p99 (ms, from its percentile table), failed requests, non-2xx, complete."""
    rps = re.search(r"^Requests per second:\s+([0-9.]+)", text, re.M)
    if rps is None:
        raise ValueError("no 'Requests per second' in ab output")
    percentiles = {int(p): float(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\d+)", text, re.M)}
    return _result(
        float(rps.group(1)),
        percentiles.get(50),
        percentiles.get(99),
        non_2xx=_count(r"^Non-2xx responses:\s+(\d+)", text) or 0,
        socket_errors=0,
        failed=_count(r"^Failed requests:\s+(\d+)", text) or 0,
        requests=_count(r"^Complete requests:\s+(\d+)", text),
    )


def parse_h2load(text: str) -> dict[str, Any]:
    """h2load's report: requests/s, failed/errored/timeout, non-2xx, done. No percentiles (h2load prints
    min/max/mean only), so p50/p99 stay None."""
    rps = re.search(r"^finished in [0-9.]+m?s, ([0-9.]+) req/s", text, re.M)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
        r"(\d+) timeout",
        text,
        re.M,
    )
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if rps is None or counts is None:
        raise ValueError("no 'finished in' / 'requests:' line in h2load output")
    _total, _started, done, _ok, failed, errored, _timeout = (int(n) for n in counts.groups())
    # h2load's "failed" includes "errored" (network level; "timeout" is part of it) and 4xx/5xx answers.
    http_errors = int(codes.group(3)) + int(codes.group(4)) if codes else 0
    return _result(
        float(rps.group(1)),
        None,
        None,
        non_2xx=http_errors,
        socket_errors=errored,
        failed=max(0, failed - errored - http_errors),
        requests=done,
    )


# -- the service under test -------------------------------------------------------------------------------------


@dataclass
class Row:
    variant: str
    loop: str
    processes: int
    tool: str
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    non_2xx: int = 0
    socket_errors: int = 0
    failed: int = 0
    requests: int | None = None
    connections: int = 0
    seconds: float = 0.0
    note: str = ""
    x_cache: str = ""
    content_encoding: str = ""  # wrk rows: the Content-Encoding of the check answer fetched with wrk's headers
    server_2xx: int | None = None  # burst rows: 2xx access lines the service wrote during the run
    rounds: list[float] = field(default_factory=list)  # wrk rows: req/s of each round (the row is the median)


@dataclass
class Plan:
    quick: bool
    duration: int
    warmup: int
    rounds: int
    combos: list[tuple[str, int]] = field(default_factory=list)
    smoke: bool = False

    def variants(self, loop: str, processes: int) -> list[str]:
        if self.smoke:
            return list(SMOKE_VARIANTS)
        chosen = list(VARIANTS)
        if processes != 1:
            chosen = [v for v in chosen if v not in ONE_PROCESS_VARIANTS]
        if self.quick and (loop, processes) != ("asyncio", 1):
            chosen = [v for v in chosen if v not in ENCODING_VARIANTS]
        return chosen

    def planned(self) -> set[str]:
        """Every variant some setting of this plan measures."""
        return {v for loop, processes in self.combos for v in self.variants(loop, processes)}

    def ab_combos(self) -> list[tuple[str, int]]:
        if self.smoke:
            return []
        return [("asyncio", 1)] if self.quick else self.combos


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _somaxconn() -> int | None:
    """The kernel's cap on a listen backlog (Linux), which the 10,000-connection bursts run into."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


def _mongo_answers() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 27017), timeout=1):
        return True
    return False


def _data_present(database: str, wallpapers: int) -> bool:
    import pymongo
    import pymysql  # type: ignore[import-untyped]

    try:
        client: Any = pymongo.MongoClient("mongodb://127.0.0.1:27017/", serverSelectionTimeoutMS=3000)
        try:
            count = client[database]["wallpapers"].count_documents({})
        finally:
            client.close()
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema=%s AND table_name='categories'",
                    (database,),
                )
                if cur.fetchone()[0] == 0:
                    return False
                cur.execute(f"SELECT COUNT(*) FROM `{database}`.categories")
                categories = cur.fetchone()[0]
        finally:
            conn.close()
    except Exception as exc:
        print(f"  (data check on {database!r} failed: {exc!r})", file=sys.stderr)
        return False
    return bool(count == wallpapers and categories > 0)


@contextlib.contextmanager
def own_cluster(workdir: Path) -> Iterator[str | None]:
    """A Redis Cluster of the benchmark's own (harness/cluster.py), stopped by PID at the end; None (and the
    ``cached-cluster`` variant skipped) where this machine cannot run one."""
    from harness import ClusterUnavailable, RedisClusterServer, cluster_supported

    reason = cluster_supported()
    if reason is not None:
        print(f"  cached-cluster: not run ({reason})", flush=True)
        yield None
        return
    try:
        cluster = RedisClusterServer(
            workdir=workdir / "cluster", extra_args=("--cluster-require-full-coverage", "no")
        ).start()
    except ClusterUnavailable as exc:
        print(f"  cached-cluster: not run ({exc})", flush=True)
        yield None
        return
    try:
        yield cluster.url
    finally:
        cluster.close()


def ensure_seeded(wallpapers: int, workdir: Path) -> str:
    """The name of a database (MongoDB and MySQL) holding ``wallpapers`` demo documents, seeded if needed."""
    if not _mongo_answers():
        subprocess.run([str(REPO / "scripts" / "devstack"), "up"], cwd=REPO, check=True, timeout=120)
    database = f"wallpaper_bench_{wallpapers}"
    if not _data_present(database, wallpapers):
        seed_config = workdir / "seed.toml"
        seed_config.write_text(config_text(database))
        print(f"seeding {database} ...", flush=True)
        seed_cmd = [sys.executable, "-m", "service", "seed", "--config", str(seed_config)]
        subprocess.run(
            [*seed_cmd, "--wallpapers", str(wallpapers)], cwd=REPO, check=True, timeout=600, stdout=subprocess.DEVNULL
        )
    return database


def shipped_dictionaries(config: Path = SHIPPED_CONFIG) -> list[Path]:
    """The zstd dictionary files the shipped service configuration names (``[cache] dictionaries``, relative to the
    file): what the ``cached-dcz`` server stores with. None there is an error: that variant would measure nothing."""
    with config.open("rb") as handle:
        names = tomllib.load(handle).get("cache", {}).get("dictionaries", [])
    files = [Path(name) if Path(name).is_absolute() else (config.parent / name).resolve() for name in names]
    if not files:
        raise RuntimeError(f"{config} names no [cache] dictionaries: the cached-dcz variant has nothing to serve")
    return files


def config_text(
    database: str,
    *,
    enabled: bool = True,
    local: bool = False,
    lane: bool = True,
    redis_url: str = REDIS_DB_URL,
    namespace: str = NAMESPACE,
    dictionaries: Sequence[Path] = (),
) -> str:
    """The service configuration of one server. A server with ``dictionaries`` stores values its dictionary-less
    peers read as misses (and rewrite), and the other way round: give it a ``namespace`` of its own."""
    files = ", ".join(json.dumps(str(d)) for d in dictionaries)  # a JSON string is a TOML basic string
    dictionary_line = f"\ndictionaries = [{files}]" if dictionaries else ""
    lane_off = "\nlane = false"  # only when asked: a baseline tree's service may not know the setting
    return f"""# generated by benchmarks/http_load.py
[redis]
url = "{redis_url}"
namespace = "{namespace}"
max_connections = 128

[mongo]
database = "{database}"
{"" if enabled else UNCACHED_MONGO_BUDGET}

[mysql]
database = "{database}"

[cache]
enabled = {"true" if enabled else "false"}
local = {"true" if local else "false"}{dictionary_line}

[server]
host = "127.0.0.1"
bench_routes = true{"" if lane else lane_off}

[log]
sink = "stdout"
access_log = true
"""


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, dict[str, str]] | None:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


# -- the encodings a variant asks for: found out from the service and checked before the load --------------------


def _fetch(url: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, Message, bytes]:
    """GET ``url`` (urllib sends ``Accept-Encoding: identity`` unless ``headers`` name one): status, headers, the
    body as sent (never decoded). Raises RuntimeError when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        raise RuntimeError(f"GET {url}: {exc!r}") from exc


def header_dict(headers: Sequence[str]) -> dict[str, str]:
    """wrk's ``-H 'Name: value'`` lines as a dict (split at the first colon, as wrk does)."""
    return {h.split(":", 1)[0].strip(): h.split(":", 1)[1].strip() for h in headers}


def served_dictionary(url: str) -> tuple[str, bytes]:
    """The dictionary the service tells a browser to fetch: the ``Link: <...>; rel="compression-dictionary"`` of
    an answer from ``url`` (asked as a browser that holds none yet), fetched. (its URL, its bytes); RuntimeError
    when the answer names none or the dictionary cannot be fetched."""
    status, headers, _body = _fetch(url, {"Accept-Encoding": BROWSER_ENCODINGS})
    if status != 200:
        raise RuntimeError(f"GET {url}: status {status}, not 200")
    for line in headers.get_all("Link") or []:
        match = _DICTIONARY_LINK.search(line)
        if match is not None:
            break
    else:
        raise RuntimeError(
            f"GET {url}: no 'Link: <...>; rel=\"compression-dictionary\"' header (Link: {headers.get_all('Link')}):"
            " the service serves no dictionary"
        )
    dictionary_url = urllib.parse.urljoin(url, match.group(1))
    status, _headers, data = _fetch(dictionary_url)
    if status != 200 or not data:
        raise RuntimeError(f"GET {dictionary_url} (the Link of {url}): status {status}, {len(data)} bytes")
    return dictionary_url, data


def dcz_headers(dictionary: bytes) -> tuple[str, str]:
    """wrk's headers for a client holding ``dictionary``: Chromium's Accept-Encoding and the dictionary's SHA-256
    as an ``Available-Dictionary`` structured-field byte sequence."""
    digest = base64.b64encode(hashlib.sha256(dictionary).digest()).decode("ascii")
    return f"Accept-Encoding: {BROWSER_ENCODINGS}", f"Available-Dictionary: :{digest}:"


def decode_answer(body: bytes, encoding: str, dictionary: bytes | None) -> bytes:
    """``body`` decoded as a client would: ``zstd`` a zstd frame, ``dcz`` RFC 9842's magic, the SHA-256 of the
    dictionary held, then a zstd frame made with that dictionary as raw content. ValueError when it is not."""
    frame_dict = None
    if encoding == "dcz":
        if dictionary is None:
            raise ValueError("a dcz answer needs the dictionary to check it")
        if body[: len(DCZ_MAGIC)] != DCZ_MAGIC:
            raise ValueError(f"no dcz magic: starts with {body[:8].hex()}")
        if body[len(DCZ_MAGIC) : DCZ_PREFIX] != hashlib.sha256(dictionary).digest():
            raise ValueError("names another dictionary than the one held")
        body = body[DCZ_PREFIX:]
        frame_dict = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    elif encoding != "zstd":
        raise ValueError(f"cannot check Content-Encoding {encoding!r}")
    try:
        decompressor = zstandard.ZstdDecompressor(dict_data=frame_dict) if frame_dict else zstandard.ZstdDecompressor()
        return bytes(decompressor.decompressobj().decompress(body))
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame this client decodes: {exc}") from exc


def check_encoding(url: str, headers: Sequence[str], expected: str, dictionary: bytes | None = None) -> Message:
    """GET ``url`` with wrk's ``headers`` and make sure the load will measure what the variant says: a 200 with
    ``Content-Encoding: expected`` whose body decodes (``dcz``: with ``dictionary``) to the identity answer of the
    same URL. Returns the answer's headers; RuntimeError, naming what came back, otherwise."""
    status, answer, body = _fetch(url, header_dict(headers))
    got = answer.get("Content-Encoding") or "identity"
    where = f"GET {url} with {list(headers)}"
    if status != 200 or got != expected:
        raise RuntimeError(
            f"{where}: status {status}, Content-Encoding {got!r}, expected 200 and {expected!r}"
            f" (X-Cache {answer.get('X-Cache')!r}, Link {answer.get('Link')!r}): the variant would measure another"
            " representation"
        )
    status, _plain_headers, plain = _fetch(url, {"Accept-Encoding": "identity"})
    try:
        decoded = decode_answer(body, expected, dictionary)
    except ValueError as exc:
        raise RuntimeError(f"{where}: a {expected} body that does not decode: {exc}") from exc
    if status != 200 or decoded != plain:
        raise RuntimeError(
            f"{where}: the {expected} body decodes to {len(decoded)} bytes that are not the identity answer"
            f" ({status}, {len(plain)} bytes)"
        )
    return answer


class Server:
    """One ``python -m service serve`` subprocess (its own session), stopped by PID."""

    def __init__(self, config: Path, log: Path, loop: str, processes: int, source: Path = REPO) -> None:
        self.port = free_port()
        self.admin_port = free_port()  # /metrics, /readyz: one of its own, so that servers side by side never share
        while self.admin_port == self.port:
            self.admin_port = free_port()
        self.loop, self.processes = loop, processes
        cmd = [sys.executable, "-m", "service", "serve", "--config", str(config), "--port", str(self.port)]
        cmd += ["--processes", str(processes), "--loop", loop]
        if processes == 1 and shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WALLPAPER_")}
        env.update(WALLPAPER_ADMIN__HOST="127.0.0.1", WALLPAPER_ADMIN__PORT=str(self.admin_port))
        if source != REPO:
            env["PYTHONPATH"] = str(source)  # that tree's service/ and cachelayer/, this environment's packages
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=source, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        """The admin port's address: ``/metrics`` (every live worker's figures in one scrape) and ``/readyz``."""
        return f"http://127.0.0.1:{self.admin_port}"

    def wait_ready(self, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode} before answering")
            answer = _get(self.base + "/healthz", timeout=2)
            # ... and the admin port answers a scrape (the benchmarks that read /metrics read it there)
            if answer is not None and answer[0] == 200 and _get(self.admin + "/metrics", timeout=2) is not None:
                return
            time.sleep(0.3)
        raise RuntimeError(f"service on port {self.port} (admin {self.admin_port}) not healthy after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Workers of a multi-process server are in the same session: none may outlive the parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


@contextlib.contextmanager
def running(config: Path, log: Path, loop: str, processes: int, source: Path = REPO) -> Iterator[Server]:
    server = Server(config, log, loop, processes, source)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# -- load generators --------------------------------------------------------------------------------------------


def _pin(processes: int) -> list[str]:
    return ["taskset", "-c", "1"] if processes == 1 and shutil.which("taskset") else []


def run_wrk(
    url: str, *, seconds: int, processes: int, headers: Sequence[str] = (), connections: int | None = None
) -> dict[str, Any]:
    default, threads = (64, 1) if processes == 1 else (256, 2)
    connections = connections or default
    threads = min(threads, connections)
    cmd = [*_pin(processes), "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    for header in headers:
        cmd += ["-H", header]
    cmd += ["--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if out.returncode != 0 and "Requests/sec" not in out.stdout:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[:300]}")
    result = parse_wrk(out.stdout)
    if not result["requests"]:
        result["p50_ms"] = result["p99_ms"] = None
    result["connections"] = connections
    result["seconds"] = float(seconds)
    return result


def run_ab(url: str, *, processes: int, n: int = BURST, c: int = BURST, timeout: int = 240) -> dict[str, Any]:
    cmd = [*_pin(processes), "ab", "-q", "-r", "-s", str(AB_SOCKET_TIMEOUT_S), "-c", str(c), "-n", str(n), url]
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, preexec_fn=_raise_nofile)
    if "Requests per second" not in out.stdout:
        raise RuntimeError(f"ab failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-300:]}")
    result = parse_ab(out.stdout)
    result["connections"] = c
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def run_h2load(url: str, *, processes: int, n: int = BURST, c: int = BURST, timeout: int = 240) -> dict[str, Any]:
    """The same burst from a second client (HTTP/1.1, one request per connection when n == c): a cross-check
    of ab's failure count, which counts connections ab opened but never sent a request on (docs/performance.md)."""
    cmd = [*_pin(processes), "h2load", "--h1", "-t", "1", "-n", str(n), "-c", str(c), url]
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, preexec_fn=_raise_nofile)
    result = parse_h2load(out.stdout)
    result["connections"] = c
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def answered_2xx(log: Path, offset: int, path: str) -> int:
    """Access lines with a 2xx status for ``path`` written to the service log after ``offset``: what the server
    says it answered, to hold against the client's count. The access log is written in batches every 50 ms."""
    time.sleep(0.5)
    with log.open("rb") as fh:
        fh.seek(offset)
        tail = fh.read()
    needle = f'"path":"{path.split("?", 1)[0]}"'.encode()
    return sum(1 for line in tail.splitlines() if needle in line and b'"status":2' in line)


# -- the run ----------------------------------------------------------------------------------------------------


def _row(variant: str, loop: str, processes: int, tool: str, result: dict[str, Any], **extra: Any) -> Row:
    errors = int(result["non_2xx"]) + int(result["socket_errors"]) + int(result["failed"])
    return Row(variant=variant, loop=loop, processes=processes, tool=tool, errors=errors, **result, **extra)


def _flush_redis(cluster_url: str | None = None) -> None:
    """Empty the benchmark's Redis database (and its cluster, when it has one): every setting starts cold."""
    import redis
    import redis.cluster

    client = redis.Redis.from_url(REDIS_DB_URL)
    try:
        client.flushdb()
    finally:
        client.close()
    if cluster_url is not None:
        nodes = redis.cluster.RedisCluster.from_url(cluster_url.replace("+cluster://", "://", 1))
        try:
            nodes.flushall(target_nodes=nodes.PRIMARIES)
        finally:
            nodes.close()


@dataclass(frozen=True)
class Target:
    """One wrk target of a setting: the variant, the server answering it, the path and wrk's extra headers, and the
    Content-Encoding its answers must carry (:func:`check_encoding`, before and after the rounds; None: no check),
    with the dictionary a ``dcz`` answer is decoded with."""

    variant: str
    server: Server
    path: str
    headers: tuple[str, ...] = ()
    encoding: str | None = None
    dictionary: bytes | None = None


def dcz_target(server: Server, path: str = LIST_PATH) -> Target:
    """``cached-dcz`` against ``server``: the dictionary its answers name, fetched from it, sets wrk's headers."""
    dictionary_url, dictionary = served_dictionary(server.base + path)
    headers = dcz_headers(dictionary)
    print(f"  cached-dcz: dictionary {dictionary_url} ({len(dictionary):,} bytes), wrk -H {headers[1]!r}", flush=True)
    return Target("cached-dcz", server, path, headers, "dcz", dictionary)


def measure(
    plan: Plan, workdir: Path, database: str, cluster_url: str | None = None, baseline: Path | None = None
) -> list[Row]:
    configs = {
        "cache": workdir / "cache.toml",
        "local": workdir / "local.toml",
        "local-handlers": workdir / "local-handlers.toml",
        "handlers": workdir / "handlers.toml",
        "cluster": workdir / "cluster.toml",
        "dcz": workdir / "dcz.toml",
        "off": workdir / "uncached.toml",
        "baseline": workdir / "baseline.toml",
    }
    configs["cache"].write_text(config_text(database))
    configs["local"].write_text(config_text(database, local=True))
    configs["local-handlers"].write_text(config_text(database, local=True, lane=False))
    configs["handlers"].write_text(config_text(database, lane=False))
    if cluster_url is not None:
        configs["cluster"].write_text(config_text(database, redis_url=cluster_url))
    if "cached-dcz" in plan.planned():
        dictionaries = shipped_dictionaries()
        configs["dcz"].write_text(config_text(database, namespace=f"{NAMESPACE}-dcz", dictionaries=dictionaries))
    configs["off"].write_text(config_text(database, enabled=False))
    configs["baseline"].write_text(config_text(database, namespace=f"{NAMESPACE}-baseline"))
    log = workdir / "service.log"
    rows: list[Row] = []

    def wrk_rows(
        targets: Sequence[Target],
        *,
        rounds: int,
        warmup: int,
        connections: int | None = None,
    ) -> None:
        """Each target's wrk run, ``rounds`` times in turn (A B C A B C ...), every server up, so that a slow spell
        of the shared machine lands on all variants alike. A row is the round with the median req/s; its error
        counts are summed over all rounds, so no round's errors are dropped. A target with an ``encoding`` is
        checked before the load (RuntimeError: nothing is measured) and after it (a row note and a failed
        target: the rounds measured something else for a while)."""
        x_cache: dict[str, str] = {}
        encodings: dict[str, str] = {}
        for t in targets:
            url = t.server.base + t.path
            answer = _get(url, header_dict(t.headers), timeout=30)
            x_cache[t.variant] = (answer[1].get("X-Cache", "") if answer else "no answer") or ""
            if t.encoding is not None:
                checked = check_encoding(url, t.headers, t.encoding, t.dictionary)
                encodings[t.variant] = checked.get("Content-Encoding") or ""
                print(f"  {t.variant:12} answers Content-Encoding {encodings[t.variant]} (checked)", flush=True)
            if warmup:
                run_wrk(url, seconds=warmup, processes=t.server.processes, headers=t.headers)
        results: dict[str, list[dict[str, Any]]] = {t.variant: [] for t in targets}
        for _ in range(rounds):
            for t in targets:
                results[t.variant].append(
                    run_wrk(
                        t.server.base + t.path,
                        seconds=plan.duration,
                        processes=t.server.processes,
                        headers=t.headers,
                        connections=connections,
                    )
                )
        for t in targets:
            server, runs = t.server, results[t.variant]
            median = dict(sorted(runs, key=lambda r: float(r["rps"]))[len(runs) // 2])
            median["non_2xx"] = sum(int(r["non_2xx"]) for r in runs)
            median["socket_errors"] = sum(int(r["socket_errors"]) for r in runs)
            row = _row(t.variant, server.loop, server.processes, "wrk", median, x_cache=x_cache[t.variant])
            row.content_encoding = encodings.get(t.variant, "")
            row.rounds = [float(r["rps"]) for r in runs]
            if t.encoding is not None:
                try:
                    check_encoding(server.base + t.path, t.headers, t.encoding, t.dictionary)
                except RuntimeError as exc:
                    row.note = f"after the rounds: {exc}"[:300]
                    print(f"  {t.variant:12} CHECK FAILED {row.note}", flush=True)
            rows.append(row)
            print(
                f"  {t.variant:12} {server.loop:8} p={server.processes} wrk  {row.rps:9.1f} req/s  p50 {row.p50_ms} ms"
                f"  p99 {row.p99_ms} ms  errors {row.errors}  rounds {row.rounds}  (X-Cache: {row.x_cache}"
                f"{', Content-Encoding: ' + row.content_encoding if row.content_encoding else ''})",
                flush=True,
            )

    def burst_rows(server: Server, variant: str) -> None:
        """The original command shape, ``ab -c 10000 -n 10000``, then the same burst from h2load."""
        if variant == "uncached":
            # 10,000 requests at the rate wrk just measured: run only when that fits the time bound. Otherwise
            # 10,000 connections would queue slow queries in the shared Mongo server for many minutes.
            measured = _rps(rows, "uncached", server.loop, server.processes) or 0.0
            estimate = BURST / measured if measured > 0 else float("inf")
            if estimate > AB_BUDGET_S:
                note = f"not run: {BURST:,} requests at the measured {measured:.1f} req/s would take ~{estimate:.0f} s"
                print(f"  {variant:12} ab -c {BURST}: {note}", flush=True)
                rows.append(Row(variant, server.loop, server.processes, "ab", 0.0, None, None, 0, note=note))
                return
        tools = [("ab", run_ab)] + ([("h2load", run_h2load)] if shutil.which("h2load") else [])
        for tool, run in tools:
            offset = log.stat().st_size
            try:
                result = run(server.base + LIST_PATH, processes=server.processes)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                print(f"  {variant:12} {tool} -c {BURST}: {exc}", flush=True)
                rows.append(
                    Row(variant, server.loop, server.processes, tool, 0.0, None, None, BURST, note=str(exc)[:200])
                )
                continue
            row = _row(variant, server.loop, server.processes, tool, result)
            row.server_2xx = answered_2xx(log, offset, LIST_PATH)
            rows.append(row)
            print(
                f"  {variant:12} {server.loop:8} p={server.processes} {tool:6} {row.rps:9.1f} req/s"
                f"  p50 {row.p50_ms} ms  p99 {row.p99_ms} ms  failed {row.failed}  non-2xx {row.non_2xx}"
                f"  socket errors {row.socket_errors}  server 2xx {row.server_2xx}  ({row.seconds} s)",
                flush=True,
            )

    ab_combos = plan.ab_combos()
    for loop, processes in plan.combos:
        variants = plan.variants(loop, processes)
        print(f"-- loop {loop}, {processes} process(es): {', '.join(variants)}", flush=True)
        _flush_redis(cluster_url)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(running(configs["cache"], log, loop, processes))
            targets = [Target("ceiling", server, CEILING_PATH), Target("cached", server, LIST_PATH)]
            if "cached-zstd" in variants:
                zstd_client = (f"Accept-Encoding: {ZSTD_BROWSER_ENCODINGS}",)
                targets.append(Target("cached-zstd", server, LIST_PATH, zstd_client, "zstd"))
            if "cached-dcz" in variants:
                # Its own server: with a dictionary configured a zstd-only client gets no zstd passthrough (it
                # could not decode a dictionary frame), so cached-zstd stays on the dictionary-less one.
                dcz_server = stack.enter_context(running(configs["dcz"], log, loop, processes))
                targets.append(dcz_target(dcz_server))
            if "cached-l1" in variants:
                l1_server = stack.enter_context(running(configs["local"], log, loop, processes))
                targets.append(Target("cached-l1", l1_server, LIST_PATH))
            if "cached-l1-handlers" in variants:
                handlers_server = stack.enter_context(running(configs["local-handlers"], log, loop, processes))
                targets.append(Target("cached-l1-handlers", handlers_server, LIST_PATH))
            if "cached-handlers" in variants:
                redis_handlers = stack.enter_context(running(configs["handlers"], log, loop, processes))
                targets.append(Target("cached-handlers", redis_handlers, LIST_PATH))
            if baseline is not None and (loop, processes) == ("asyncio", 1):
                # The same configuration served by another tree's code, in turn with this one's: a paired figure
                # for what a change to the request path costs (issue 18: the tracing hooks, off).
                baseline_server = stack.enter_context(running(configs["baseline"], log, loop, processes, baseline))
                targets.append(Target("cached-baseline", baseline_server, LIST_PATH))
            if "cached-cluster" in variants and cluster_url is not None:
                cluster_server = stack.enter_context(running(configs["cluster"], log, loop, processes))
                targets.append(Target("cached-cluster", cluster_server, LIST_PATH))
            wrk_rows(targets, rounds=plan.rounds, warmup=plan.warmup)
            if (loop, processes) in ab_combos:
                burst_rows(server, "cached")
        if "uncached" not in variants:
            continue
        with running(configs["off"], log, loop, processes) as server:
            # Few connections: every request queues on Mongo; 64 would only measure wrk's timeouts.
            wrk_rows([Target("uncached", server, LIST_PATH)], rounds=1, warmup=0, connections=UNCACHED_CONNECTIONS)
            if (loop, processes) in ab_combos:
                burst_rows(server, "uncached")
    _flush_redis()
    return rows


# -- verdicts and output ----------------------------------------------------------------------------------------


def _find(rows: Sequence[Row], variant: str, loop: str, processes: int, tool: str = "wrk") -> Row | None:
    for row in rows:
        if (row.variant, row.loop, row.processes, row.tool) == (variant, loop, processes, tool):
            return row
    return None


def _rps(rows: Sequence[Row], variant: str, loop: str, processes: int, tool: str = "wrk") -> float | None:
    row = _find(rows, variant, loop, processes, tool)
    return None if row is None else row.rps


@dataclass(frozen=True)
class Check:
    """``left >= factor x right`` at each setting measured (``processes``: only at that process count). ``paired``:
    the median of the per-round ratios (the rounds of one setting are interleaved, so round i of both variants ran
    back to back), else the ratio of the two rows (each the median of its rounds)."""

    left: str
    right: str
    factor: float
    processes: int | None = None
    paired: bool = False
    issue: int | None = None

    @property
    def label(self) -> str:
        return f"{self.left} >= {self.factor:g} x {self.right}"


CHECKS = (
    Check("cached-l1", "ceiling", 0.85),
    Check("cached", "ceiling", 0.6),
    Check("cached-cluster", "cached", 0.9),
    Check("cached", "uncached", 20.0),
    Check("cached", "ceiling", 0.80, processes=1, issue=17),
    Check("cached-l1", "ceiling", 0.92, processes=1, issue=17),
    Check("cached-dcz", "cached-zstd", 0.95, paired=True, issue=17),
    Check("cached", "cached-baseline", 0.98, processes=1, paired=True, issue=18),  # only with --baseline
)


def paired_ratios(left: Row, right: Row) -> list[float]:
    """``left / right`` round by round (both rows of one setting, whose rounds ran in turn)."""
    return [a / b for a, b in zip(left.rounds, right.rounds, strict=False) if b > 0]


def targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each target, per loop/process setting measured: the ratio and PASS/FAIL."""
    verdicts: list[dict[str, Any]] = []
    combos = sorted({(r.loop, r.processes) for r in rows if r.tool == "wrk"}, key=lambda c: (c[1], c[0]))
    for loop, processes in combos:
        for check in CHECKS:
            if check.processes is not None and check.processes != processes:
                continue
            left, right = _find(rows, check.left, loop, processes), _find(rows, check.right, loop, processes)
            if left is None or right is None or right.rps <= 0:
                continue
            ratio: dict[str, Any] = {"target": check.label, "loop": loop, "processes": processes}
            if check.issue is not None:
                ratio["issue"] = check.issue
            per_round = paired_ratios(left, right) if check.paired else []
            value = statistics.median(per_round) if per_round else left.rps / right.rps
            ratio["ratio"] = round(value, 3)
            if per_round:
                ratio.update(method="median of per-round ratios", round_ratios=[round(r, 3) for r in per_round])
            ratio["pass"] = value >= check.factor
            notes = [row.note for row in (left, right) if row.note]
            if notes:
                # An encoding check failed after the rounds: they measured something else for a while.
                ratio["note"], ratio["pass"] = "; ".join(notes), False
            ceiling = _rps(rows, "ceiling", loop, processes)
            if check.right == "uncached" and ceiling is not None:
                # The most any cache hit could reach at this setting: a hit cannot be cheaper than the bench route.
                ratio["ceiling_ratio"] = round(ceiling / right.rps, 3)
            verdicts.append(ratio)
    for row in rows:
        if row.tool not in ("ab", "h2load"):
            continue
        verdict: dict[str, Any] = {
            "target": f"{row.tool} -c {BURST} -n {BURST} {row.variant}: 0 failed",
            "loop": row.loop,
            "processes": row.processes,
            "ratio": None,
            "failed": row.failed,
            "non_2xx": row.non_2xx,
            "socket_errors": row.socket_errors,
            "server_2xx": row.server_2xx,
        }
        if row.note:
            verdict.update(note=row.note, failed=None, non_2xx=None)
        verdict["pass"] = not row.note and row.errors == 0 and (row.requests or 0) >= BURST
        verdicts.append(verdict)
    return verdicts


def fastest_setting(rows: Sequence[Row], variant: str = "cached") -> dict[str, Any] | None:
    candidates = [r for r in rows if r.variant == variant and r.tool == "wrk"]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: r.rps)
    by = {f"{r.loop}/{r.processes}": r.rps for r in candidates}
    return {"variant": variant, "loop": best.loop, "processes": best.processes, "rps": best.rps, "all": by}


HEADERS = [
    "variant", "loop", "processes", "tool", "req/s", "p50 ms", "p99 ms", "non-2xx", "socket errors", "failed",
    "server 2xx",
]  # fmt: skip


def table_rows(rows: Sequence[Row]) -> list[list[object]]:
    return [
        [
            r.variant, r.loop, r.processes, r.tool, r.rps, r.p50_ms, r.p99_ms, r.non_2xx, r.socket_errors, r.failed,
            r.server_2xx,
        ]
        for r in rows
    ]  # fmt: skip


def chart(rows: Sequence[Row], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    wrk_rows = [r for r in rows if r.tool == "wrk"]
    variants = [v for v in VARIANTS if any(r.variant == v for r in wrk_rows)]
    combos = sorted({(r.loop, r.processes) for r in wrk_rows}, key=lambda c: (c[1], c[0]))
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(1, len(combos))
    for i, (loop, processes) in enumerate(combos):
        values = [_rps(wrk_rows, v, loop, processes) or 0.0 for v in variants]
        xs = [j + (i - (len(combos) - 1) / 2) * width for j in range(len(variants))]
        bars = ax.bar(xs, values, width, label=f"{loop}, {processes} proc")
        ax.bar_label(bars, labels=[f"{v:.0f}" if v else "" for v in values], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("requests / s (wrk, keep-alive)")
    ax.set_title("wallpaper list page (pageSize=20) on loopback, 2 cores shared with wrk")
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ratio_cell(verdict: dict[str, Any]) -> str:
    """A target's ratio as the Markdown table shows it (a burst's counts when it has no ratio)."""
    if verdict["ratio"] is None:
        return str(
            verdict.get("note")
            or f"failed {verdict.get('failed')}, non-2xx {verdict.get('non_2xx')}, socket errors "
            f"{verdict.get('socket_errors')}; server 2xx {verdict.get('server_2xx')}"
        )
    cell = f"{verdict['ratio']}"
    if "ceiling_ratio" in verdict:
        cell += f" (ceiling: {verdict['ceiling_ratio']})"
    if "round_ratios" in verdict:
        cell += f" (median of rounds {', '.join(f'{r:.3f}' for r in verdict['round_ratios'])})"
    if verdict.get("note"):
        cell += f"; {verdict['note']}"
    return cell


def _command(plan: Plan) -> str:
    return "python -m benchmarks.http_load" + (" --smoke" if plan.smoke else " --quick" if plan.quick else "")


def render_markdown(rows: Sequence[Row], verdicts: Sequence[dict[str, Any]], plan: Plan, meta: dict[str, Any]) -> str:
    best = fastest_setting(rows)
    lines = [
        "# HTTP load: the wallpaper list endpoint",
        "",
        f"`{_command(plan)}` ({meta['date']}; each wrk row is the "
        f"median of {plan.rounds} runs of {plan.duration} s taken in turn across the variants of one setting "
        f"(A B C A B C ..., every server up, after a {plan.warmup} s warm-up each; the uncached row: one run); "
        f"database `{meta['database']}` "
        f"({meta['wallpapers']} wallpapers), Redis DB 13).",
        "",
        "Page: `GET /client/v3/wallpaper_4d/wallpaperList.json?pageSize=20` (~7.4 KB of JSON). `ceiling` is "
        "`GET /_bench/ceiling?pageSize=20` (`[server] bench_routes = true`): the same bytes from memory in a bare "
        f"Tornado handler. `cached-zstd`: `Accept-Encoding: {ZSTD_BROWSER_ENCODINGS}` (Chromium's before it holds a "
        "dictionary), the stored frame sent as is. `cached-dcz`: the same browser once it holds one: a "
        "server whose cache stores with the shipped dictionary (`[cache] dictionaries` of config/wallpaper.toml, "
        f"its own Redis namespace), asked with `Accept-Encoding: {BROWSER_ENCODINGS}` and `Available-Dictionary` "
        "naming the dictionary the service links to and serves: the stored frame behind the 40-byte RFC 9842 prefix "
        "(checked before and after the rounds: `Content-Encoding: dcz`, decoding with that dictionary to the "
        "identity answer; `cached-zstd` likewise for `zstd`). The cached variants are answered by the cache lane, "
        "before Tornado builds a handler (service/lane.py); `cached-handlers`: the same Redis hits through Tornado's "
        "handlers (`[server] lane = false`, one process only). `cached-l1`: `[cache] local = true` (its hits "
        "answered by the lane without an await); `cached-l1-handlers`: the same hits through Tornado's handlers "
        "(`lane = false`, one process only); `uncached`: "
        "`[cache] enabled = false` (Mongo + MySQL on every request). The access log is on (JSON lines to stdout, a "
        "file) in every variant but `ceiling`.",
        "",
        "**CPU placement.** 2 cores are shared by the server, the load generator and the stores. With 1 process the "
        "server is pinned to CPU 0 and wrk/ab to CPU 1 (`taskset`): the generator never takes the server's core, so "
        "the figure is what one server core does (wrk -t1 -c64). With 2 processes nothing is pinned (wrk -t2 -c256): "
        "with two workers and wrk on two cores any pinning leaves one worker sharing a core with wrk; these figures "
        "therefore include wrk's own CPU, and Redis/Mongo/MariaDB run on the same two cores in every case.",
        "",
        *(
            [
                f"`cached-baseline` (`--baseline {meta['baseline']}`): the `cached` configuration served by that "
                "tree's code (its own Redis namespace), its rounds in turn with this tree's; `cached >= 0.98 x "
                "cached-baseline` is the median of the per-round ratios.",
                "",
            ]
            if meta.get("baseline")
            else []
        ),
        markdown_table(HEADERS, table_rows(rows)),
        "",
        f"`ab` rows: the issue's original command shape, `ab -c {BURST} -n {BURST} -s {AB_SOCKET_TIMEOUT_S} '<url>'` "
        f"(no keep-alive; open-files limit {NOFILE:,} for server and clients; listen backlog 4096, capped by the "
        f"kernel's somaxconn, {meta['somaxconn']} here); `h2load` rows: the same burst from "
        f"`h2load --h1 -c {BURST} -n {BURST}` (one request per "
        "connection), a second opinion on ab's failure count. `server 2xx`: 2xx access lines the service wrote for "
        "the page during that run: above 10,000 for ab, because ab opens more connections than requests when the "
        "listen queue overflows and some connections are still being set up while answers come back. One of those "
        "extra connections that never sends a request is closed by the server's 60 s idle timeout and counted by ab "
        "as a failed request (`Length`): seen in runs outside this one, and in a packet capture. See "
        "docs/performance.md.",
        "",
        f"Data: `{meta['database']}`, {meta['wallpapers']} wallpapers. SecantusDB (the MongoDB-wire server here) "
        "reads and decodes every candidate document before it applies `limit`, so an uncached page costs time "
        "linear in the collection (timed by hand: see docs/performance.md, 'Uncached: the data set'); a mongod "
        "walks the index and reads 20 documents. A small collection keeps the uncached "
        "figure closest to that; cached figures do not depend on it (the same 20-item page).",
        "",
        "## Targets (same run, same loop and process count)",
        "",
        "For `cached >= 20 x uncached` the cell also gives `ceiling / uncached`: what a hit as cheap as the bench "
        "route would reach. Issue 17's targets: at one process `cached >= 0.8 x ceiling` and `cached-l1 >= 0.92 x "
        "ceiling` (ratios of the rows, each the median of its rounds), and `cached-dcz >= 0.95 x cached-zstd`: the "
        "median of the per-round ratios (round i of both ran back to back).",
        "",
        markdown_table(
            ["target", "issue", "loop", "processes", "ratio", "verdict"],
            [
                [
                    v["target"],
                    v.get("issue", ""),
                    v["loop"],
                    v["processes"],
                    ratio_cell(v),
                    "PASS" if v["pass"] else "FAIL",
                ]
                for v in verdicts
            ],
        ),
        "",
    ]
    if best is not None:
        others = ", ".join(f"{k}: {v:.0f}" for k, v in best["all"].items())
        lines += [
            f"Fastest setting for `cached`: **loop {best['loop']}, {best['processes']} process(es)** "
            f"({best['rps']:.0f} req/s; {others}).",
            "",
        ]
    lines += [f"![req/s per variant]({meta['chart']})", "", f"Environment: `{meta['environment']}`"]
    return "\n".join(lines)


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_load", description=__doc__.split("\n")[0])
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", action="store_true", help="2 s runs, a representative subset (< 5 minutes)")
    modes.add_argument(
        "--smoke",
        action="store_true",
        help="asyncio, 1 process, the cached variants and the ceiling, 1 s runs, no bursts: checks that the harness "
        "and its encoding checks work (figures meaningless; writes only where --results-dir/--json/--markdown say)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    parser.add_argument(
        "--results-dir",
        type=Path,
        help=f"write http[-full].{{md,json,png}} here instead of {RESULTS_DIR.relative_to(REPO)} (a run on a busy "
        "machine must not replace the committed figures)",
    )
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 1 smoke, 2 quick, 10 full)")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per variant, interleaved; the median is kept")
    parser.add_argument(
        "--wallpapers",
        type=int,
        default=DEFAULT_WALLPAPERS,
        help=f"demo collection size, seeded into wallpaper_bench_<N> (default {DEFAULT_WALLPAPERS})",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also serve the cached variant from this source tree (its service/ and cachelayer/, this environment's "
        "packages) at asyncio, 1 process, in turn with this tree's: the row cached-baseline, and the paired target "
        "cached >= 0.98 x cached-baseline (docs/performance.md: the tracing hooks, off)",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "service" / "__main__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no service/__main__.py there")
    plan = Plan(
        quick=args.quick or args.smoke,
        duration=args.duration or (1 if args.smoke else 2 if args.quick else 10),
        warmup=1 if args.quick or args.smoke else 2,
        rounds=args.rounds,
        combos=[("asyncio", 1)] if args.smoke else [("asyncio", 1), ("uvloop", 1), ("asyncio", 2), ("uvloop", 2)],
        smoke=args.smoke,
    )
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.wallpapers < 20:
        parser.error("--wallpapers must be at least 20 (one page)")
    for tool in ("wrk",) if plan.smoke else ("wrk", "ab"):
        if shutil.which(tool) is None:
            print(f"http_load: {tool} is not installed", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _interrupted)  # stop the servers (finally blocks) on SIGTERM too
    _raise_nofile()  # the servers and ab inherit it: ab -c 10000 needs > 10,000 descriptors on both ends
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="http_load-") as tmp:
        workdir = Path(tmp)
        database = ensure_seeded(args.wallpapers, workdir)
        cluster: contextlib.AbstractContextManager[str | None] = (
            own_cluster(workdir) if "cached-cluster" in plan.planned() else contextlib.nullcontext()
        )
        with cluster as cluster_url:
            rows = measure(plan, workdir, database, cluster_url, args.baseline.resolve() if args.baseline else None)
    elapsed = time.monotonic() - started
    verdicts = targets(rows)
    # The quick run is the one the README quotes; a full run keeps its own files beside it.
    stem = "http-smoke" if plan.smoke else "http" if plan.quick else "http-full"
    results_dir: Path | None = args.results_dir or (None if plan.smoke else RESULTS_DIR)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "chart": f"{stem}.png",
        "somaxconn": _somaxconn(),
        "database": database,
        "wallpapers": args.wallpapers,
        "environment": environment(PACKAGES),
        "elapsed_s": round(elapsed, 1),
    }
    if args.baseline is not None:
        meta["baseline"] = str(args.baseline.resolve())
    print()
    print(format_table(HEADERS, table_rows(rows)))
    print()
    for v in verdicts:
        shown = f"{v['ratio']:.3f}" if v["ratio"] is not None else f"failed {v.get('failed')}"
        if "round_ratios" in v:
            shown += f" (median of rounds {v['round_ratios']})"
        if v.get("note"):
            shown += f"  {v['note']}"
        if "issue" in v:
            shown += f"  (issue {v['issue']})"
        print(f"  {'PASS' if v['pass'] else 'FAIL'}  {v['target']:36} {v['loop']:8} p={v['processes']}  {shown}")
    best = fastest_setting(rows)
    if best is not None:
        print(f"fastest for cached: loop {best['loop']}, {best['processes']} process(es) ({best['rps']:.0f} req/s)")
    print(f"({elapsed:.0f} s)")
    data = {
        "rows": [asdict(r) for r in rows],
        "targets": verdicts,
        "fastest": best,
        "quick": plan.quick,
        "smoke": plan.smoke,
        "duration_s": plan.duration,
        "rounds": plan.rounds,
        **meta,
    }
    markdown = render_markdown(rows, verdicts, plan, meta)
    written: list[Path] = []
    if results_dir is not None:
        written += [write_json(results_dir / f"{stem}.json", data), write_text(results_dir / f"{stem}.md", markdown)]
        written += [p for p in [chart(rows, results_dir / f"{stem}.png")] if p is not None]
    if args.json is not None:
        written.append(write_json(args.json, data))
    if args.markdown is not None:
        written.append(write_text(args.markdown, markdown))
    print("wrote " + (", ".join(str(p) for p in written) if written else "nothing (--smoke: see --help)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
