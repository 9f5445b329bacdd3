"""Instructions per request of the wallpaper service, counted by valgrind: a figure the shared machine cannot move.

Timings on this 2-core machine move by 10-25 % with whatever else runs (docs/performance.md); an instruction count
does not. Each variant's server (``python -m service serve``, one process, the configuration
``benchmarks.http_load`` gives it) runs under ``valgrind --tool=cachegrind --cache-sim=no`` twice: ``ab -k -c 16``
sends it ``--warmup`` requests in one run and ``--warmup`` + ``--requests`` in the other; the difference of the
two runs' totals over ``--requests`` is what one request costs, start-up and shutdown cancelled out (start-up
alone varies by ~1-2 % between runs: +-15k instructions a request at the default 4,000).

Variants: ``ceiling`` (the bench route: the list page's bytes from memory in a bare Tornado handler), ``cached``
(the list page, a Redis hit), ``cached-zstd`` (asked as Chromium asks before it holds a dictionary,
``Accept-Encoding: gzip, deflate, br, zstd``), ``cached-dcz`` (a server that stores with the shipped dictionary,
asked as the same browser holding it), ``cached-l1`` (a local-tier hit).
``--baseline DIR`` counts the same variants with another tree's service/ and cachelayer/ (e.g. ``git worktree add
DIR <commit>``): the rows say what a change costs.

Instructions are not time: a request that touches more code and data also misses caches more often (the wrk
figures of ``benchmarks.http_load`` put ``cached-l1`` further from ``ceiling`` than this count does). Use it to
find and check a change on the request path, and ``http_load`` on a quiet machine for the req/s targets.

The servers run with ``PYTHONHASHSEED=0`` unless the environment sets it: dict layouts move a request by a few
thousand instructions from one hash seed to another, more than some changes worth counting (docs/performance.md).

Results: ``benchmarks/results/instructions.{md,json}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import RESULTS_DIR, environment, format_table, markdown_table, write_json, write_text
from .http_load import (
    CEILING_PATH,
    LIST_PATH,
    REPO,
    ZSTD_BROWSER_ENCODINGS,
    config_text,
    dcz_headers,
    ensure_seeded,
    free_port,
    shipped_dictionaries,
)

#: variant -> (configuration, path, request headers); "dcz" headers are those of a client holding the dictionary
VARIANTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ceiling": ("cache", CEILING_PATH, ()),
    "cached": ("cache", LIST_PATH, ()),
    "cached-zstd": ("cache", LIST_PATH, (f"Accept-Encoding: {ZSTD_BROWSER_ENCODINGS}",)),
    "cached-dcz": ("dcz", LIST_PATH, ("dcz",)),
    "cached-l1": ("local", LIST_PATH, ()),
}
_I_REFS = re.compile(rb"I\s+refs:\s+([\d,]+)")


@dataclass(frozen=True)
class Count:
    variant: str
    tree: str
    per_request: float  # instructions
    totals: tuple[int, int]  # the two runs' totals (warm-up only, warm-up + requests)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            response.read()
            return bool(response.status == 200)
    except OSError:
        return False


def count_run(config: Path, path: str, headers: Sequence[str], requests: int, source: Path, log: Path) -> int:
    """Total instructions of one server process that answered ``requests`` requests for ``path`` (plus start-up
    and shutdown)."""
    port, admin = free_port(), free_port()
    env = {"WALLPAPER_ADMIN__HOST": "127.0.0.1", "WALLPAPER_ADMIN__PORT": str(admin), "PYTHONPATH": str(source)}
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    cmd += [sys.executable, "-m", "service", "serve", "--config", str(config), "--port", str(port), "--processes", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=source, env={**_base_env(), **env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}{path}"
            deadline = time.monotonic() + 300  # start-up under valgrind: ~10-30 s here
            while not _answers(url):  # (a first request without the headers: it fills the cache all the same)
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server under valgrind did not answer {url}: see {log}")
                time.sleep(0.5)
            options = [arg for header in headers for arg in ("-H", header)]
            ab = subprocess.run(
                ["ab", "-q", "-k", "-c", "16", "-s", "120", *options, "-n", str(requests), url],
                capture_output=True, text=True, timeout=1800, check=False,
            )  # fmt: skip
            if ab.returncode != 0 or "Failed requests:        0" not in ab.stdout:
                raise RuntimeError(f"ab against the server under valgrind: {ab.stdout[-500:]}{ab.stderr[-500:]}")
        finally:
            proc.terminate()
            proc.wait(120)
    found = _I_REFS.search(log.read_bytes())
    if found is None:
        raise RuntimeError(f"no instruction total in {log}")
    return int(found.group(1).replace(b",", b""))


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLPAPER_")}
    env.setdefault("PYTHONHASHSEED", "0")  # one seed for every run: see the module docstring
    return env


def count_variant(
    variant: str, configs: dict[str, Path], tree: str, source: Path, warmup: int, requests: int, workdir: Path
) -> Count:
    config_name, path, headers = VARIANTS[variant]
    config = configs[config_name]
    if headers == ("dcz",):
        headers = dcz_headers(shipped_dictionaries()[0].read_bytes())
    stem = f"{variant}-{tree}".replace("/", "_")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the two runs side by side: 2 cores
        short = pool.submit(count_run, config, path, headers, warmup, source, workdir / f"{stem}-short.log")
        long = pool.submit(count_run, config, path, headers, warmup + requests, source, workdir / f"{stem}-long.log")
        totals = (short.result(), long.result())
    return Count(variant, tree, (totals[1] - totals[0]) / requests, totals)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests counted (default 4000)")
    parser.add_argument("--warmup", type=int, default=300, help="requests both runs answer (default 300)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument(
        "--baseline", type=Path, help="also count the variants with this tree's service/ and cachelayer/"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where instructions.{md,json} go")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    if args.requests < 100 or args.warmup < 10:
        parser.error("--requests must be at least 100 and --warmup at least 10")
    for tool in ("valgrind", "ab"):
        if shutil.which(tool) is None:
            print(f"instructions: {tool} is not installed", file=sys.stderr)
            return 2
    trees = [("this", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    started = time.monotonic()
    counts: list[Count] = []
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        workdir = Path(tmp)
        database = ensure_seeded(40, workdir)
        configs = {"cache": workdir / "cache.toml", "local": workdir / "local.toml", "dcz": workdir / "dcz.toml"}
        configs["cache"].write_text(config_text(database, namespace="bench-instructions"))
        configs["local"].write_text(config_text(database, namespace="bench-instructions", local=True))
        dictionaries = shipped_dictionaries()
        configs["dcz"].write_text(config_text(database, namespace="bench-instructions-dcz", dictionaries=dictionaries))
        for variant in variants:
            for tree, source in trees:
                count = count_variant(variant, configs, tree, source, args.warmup, args.requests, workdir)
                counts.append(count)
                print(f"  {variant:10} {tree:9} {count.per_request / 1000:8.1f}k instructions per request", flush=True)
    data = report(counts, args, time.monotonic() - started)
    print()
    print(format_table(data["headers"], data["rows"]))
    write_json(args.results_dir / "instructions.json", data)
    write_text(args.results_dir / "instructions.md", render(data))
    return 0


def report(counts: Sequence[Count], args: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    ceiling = {c.tree: c.per_request for c in counts if c.variant == "ceiling"}
    rows = []
    for c in counts:
        ratio = f"{c.per_request / ceiling[c.tree]:.3f}" if c.tree in ceiling else ""
        rows.append([c.variant, c.tree, round(c.per_request / 1000, 1), ratio])
    variants = getattr(args, "variants", None)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.instructions"
        + (f" --baseline {args.baseline}" if args.baseline else "")
        + (f" --requests {args.requests}" if args.requests != 4000 else "")
        + (f" --variants {variants}" if variants not in (None, ",".join(VARIANTS)) else ""),
        "hash_seed": _base_env()["PYTHONHASHSEED"],
        "requests": args.requests,
        "warmup": args.warmup,
        "baseline": str(args.baseline.resolve()) if args.baseline else None,
        "elapsed_s": round(elapsed, 1),
        "headers": ["variant", "tree", "k instructions / request", "x ceiling (same tree)"],
        "rows": rows,
        "counts": [
            {"variant": c.variant, "tree": c.tree, "per_request": c.per_request, "totals": c.totals} for c in counts
        ],
        "environment": environment(["tornado", "redis"]),
    }


def render(data: dict[str, Any]) -> str:
    baseline = f" `baseline`: {data['baseline']}." if data["baseline"] else ""
    return "\n".join(
        [
            "# Instructions per request (valgrind)",
            "",
            f"`{data['command']}` ({data['date']}, {data['elapsed_s']:.0f} s): each variant's server run twice under "
            f"`valgrind --tool=cachegrind --cache-sim=no`, answering {data['warmup']} and {data['warmup']} + "
            f"{data['requests']} requests (`ab -k -c 16`); the difference over {data['requests']} is one request "
            f"(`PYTHONHASHSEED={data.get('hash_seed', '?')}`). "
            f"`this`: this tree.{baseline} Instructions are not time: see the module docstring and "
            "docs/performance.md.",
            "",
            markdown_table(data["headers"], data["rows"]),
            "",
            f"Environment: `{data['environment']}`",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
