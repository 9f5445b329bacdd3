"""What a cached answer costs in bytes: in Redis, and on the wire in each representation, with and without the
service's zstd dictionary.

``python -m benchmarks.wire_bytes [--wallpapers N] [--quick]``

Two services (``python -m service serve``) on the same seeded stores (http_load's: SecantusDB and MariaDB,
``--wallpapers`` documents, default 10,000; ``--quick`` 300), one storing with the shipped dictionary
(``config/dictionaries/wallpaper-1.zdict``, trained on data the stores do not hold) and one without, each in a
namespace of its own in Redis DB 13. Every detail and every 20-item list page is requested once (so stored), then:

- Redis: per entry kind, the stored value's bytes (``STRLEN``, header included) and ``MEMORY USAGE`` (what Redis
  spends on the key: value, key, and its own overhead), averaged over every entry of that kind;
- the wire: the body bytes of a sample of answers (200 details, 50 list pages, the category list) as
  ``identity``, ``gzip``, ``zstd`` (the stored frame, the service without a dictionary) and ``dcz`` (the stored
  frame behind 40 bytes, the service with it, to a client that holds the dictionary).

Targets (issue 17): stored list page <= 0.25 x its JSON and detail <= 0.35 x, with the dictionary; a dcz detail on
the wire <= 0.5 x the zstd one. Results: ``benchmarks/results/wire_bytes.{md,json}``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from benchmarks._common import RESULTS_DIR, environment, format_table, markdown_table, write_json, write_text
from benchmarks.http_load import REDIS_DB_URL, _flush_redis, config_text, ensure_seeded, running
from service.dictionary import SHIPPED

API = "/client/v3/wallpaper_4d"
KINDS = ("detail", "list", "categories")
REPRESENTATIONS = ("identity", "gzip", "zstd", "dcz")
LIMITS = {"list_stored_vs_json": 0.25, "detail_stored_vs_json": 0.35, "dcz_vs_zstd_detail": 0.5}


def _config(database: str, namespace: str, dictionary: Path | None) -> str:
    text = config_text(database).replace('namespace = "wpbench"', f'namespace = "{namespace}"')
    if dictionary is not None:
        text = text.replace("[cache]\n", f'[cache]\ndictionaries = ["{dictionary}"]\n', 1)
    return text


def _fetch(url: str, headers: dict[str, str]) -> tuple[bytes, str | None]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:  # an http URL of our own server
        return answer.read(), answer.headers.get("Content-Encoding")


def _paths(wallpapers: int) -> dict[str, list[str]]:
    return {
        "detail": [f"{API}/wallpaper/{i}.json" for i in range(1, wallpapers + 1)],
        "list": [f"{API}/wallpaperList.json?pageSize=20&page={p}" for p in range(1, wallpapers // 20 + 1)],
        "categories": [f"{API}/categories.json"],
    }


SAMPLE = {"detail": 200, "list": 50}


def _sample(paths: dict[str, list[str]]) -> dict[str, list[str]]:
    return {kind: found[:: max(1, len(found) // SAMPLE.get(kind, 1))] for kind, found in paths.items()}


def _redis_bytes(namespace: str) -> dict[str, dict[str, float]]:
    """Per kind: mean STRLEN and MEMORY USAGE of the stored values of ``namespace``."""
    client = redis.Redis.from_url(REDIS_DB_URL)
    sizes: dict[str, list[tuple[int, int]]] = {kind: [] for kind in KINDS}
    try:
        for raw in client.scan_iter(match=f"{namespace}:{{*}}", count=1000):
            key = raw.decode()
            kind = next((k for k in KINDS if f".{k}@" in key), None)
            if kind is None:
                continue
            sizes[kind].append((int(client.strlen(key)), int(client.memory_usage(key) or 0)))
    finally:
        client.close()
    return {
        kind: {
            "entries": len(found),
            "stored": statistics.fmean(s for s, _ in found) if found else 0.0,
            "memory_usage": statistics.fmean(m for _, m in found) if found else 0.0,
        }
        for kind, found in sizes.items()
    }


def measure(wallpapers: int, workdir: Path) -> dict[str, Any]:
    database = ensure_seeded(wallpapers, workdir)
    _flush_redis()
    paths = _paths(wallpapers)
    sample = _sample(paths)
    dictionary = SHIPPED.read_bytes()
    held = base64.b64encode(hashlib.sha256(dictionary).digest()).decode()
    result: dict[str, Any] = {"wallpapers": wallpapers, "variants": {}}
    for variant, file in (("plain", None), ("dictionary", SHIPPED)):
        namespace = f"wire-{variant}"
        config = workdir / f"{variant}.toml"
        config.write_text(_config(database, namespace, file))
        with running(config, workdir / f"{variant}.log", "asyncio", 1) as server:
            started = time.monotonic()
            for found in paths.values():
                for path in found:
                    _fetch(server.base + path, {"Accept-Encoding": "identity"})
            warm_s = time.monotonic() - started
            wire: dict[str, dict[str, float]] = {}
            json_bytes: dict[str, float] = {}
            for kind, found in sample.items():
                bodies = [_fetch(server.base + path, {"Accept-Encoding": "identity"})[0] for path in found]
                json_bytes[kind] = statistics.fmean(len(body) for body in bodies)
                wire[kind] = {}
                for representation in REPRESENTATIONS:
                    headers = {"Accept-Encoding": representation}
                    if representation == "dcz":
                        headers["Available-Dictionary"] = f":{held}:"
                    got = [_fetch(server.base + path, headers) for path in found]
                    # A representation the server did not give (zstd of a dictionary frame, dcz without one) is
                    # no figure: the client got something else.
                    if all(coding == (None if representation == "identity" else representation) for _, coding in got):
                        wire[kind][representation] = statistics.fmean(len(body) for body, _ in got)
        result["variants"][variant] = {
            "redis": _redis_bytes(namespace),
            "json": json_bytes,
            "wire": wire,
            "warm_seconds": round(warm_s, 1),
        }
    plain, with_dict = result["variants"]["plain"], result["variants"]["dictionary"]
    result["list_stored_vs_json"] = with_dict["redis"]["list"]["stored"] / with_dict["json"]["list"]
    result["detail_stored_vs_json"] = with_dict["redis"]["detail"]["stored"] / with_dict["json"]["detail"]
    result["dcz_vs_zstd_detail"] = with_dict["wire"]["detail"]["dcz"] / plain["wire"]["detail"]["zstd"]
    return result


def rows(result: dict[str, Any]) -> list[list[object]]:
    plain, with_dict = result["variants"]["plain"], result["variants"]["dictionary"]
    table: list[list[object]] = []
    for kind in KINDS:
        json_size = with_dict["json"][kind]
        table.append([
            kind,
            round(json_size),
            round(plain["redis"][kind]["stored"]),
            round(with_dict["redis"][kind]["stored"]),
            round(with_dict["redis"][kind]["stored"] / json_size, 3),
            round(plain["redis"][kind]["memory_usage"]),
            round(with_dict["redis"][kind]["memory_usage"]),
            round(plain["wire"][kind].get("gzip", 0)) or "-",
            round(plain["wire"][kind].get("zstd", 0)) or "-",
            round(with_dict["wire"][kind].get("dcz", 0)) or "-",
        ])  # fmt: skip
    return table


HEADERS = [
    "kind", "JSON B", "stored B", "stored B, dict", "stored/JSON, dict", "MEMORY USAGE B", "MEMORY USAGE B, dict",
    "wire gzip B", "wire zstd B", "wire dcz B",
]  # fmt: skip


def targets(result: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(f"{name} <= {limit} ({result[name]:.3f})", result[name] <= limit) for name, limit in LIMITS.items()]


def report(result: dict[str, Any], command: str) -> str:
    checks = targets(result)
    return "\n".join([
        "# Bytes per cached answer: Redis and the wire",
        "",
        f"Command: `{command}`. {result['wallpapers']} wallpapers; means over every stored entry of a kind (Redis) and "
        "over a sample of answers (200 details, 50 list pages, the category list) on the wire. `stored B`: the value "
        "in Redis (26-byte header included); `MEMORY USAGE`: what Redis reports for the key. Wire: body bytes "
        "(gzip and zstd from the service without a dictionary, dcz from the one with it, to a client holding it).",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')}: `{environment(['redis', 'zstandard', 'tornado'])}`",
        "",
        markdown_table(HEADERS, rows(result)),
        "",
        "## Targets",
        "",
        *[f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks],
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wire_bytes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wallpapers", type=int, help="documents in the stores (default 10000; --quick 300)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "wire_bytes.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS_DIR / "wire_bytes.md")
    args = parser.parse_args(argv)
    wallpapers = args.wallpapers or (300 if args.quick else 10_000)
    with tempfile.TemporaryDirectory(prefix="wire-bytes-") as tmp:
        result = measure(wallpapers, Path(tmp))
    print(format_table(HEADERS, rows(result)))
    checks = targets(result)
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    command = "python -m benchmarks.wire_bytes" + (" --quick" if args.quick else "")
    write_json(args.json, result)
    write_text(args.markdown, report(result, command))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
