"""What the benchmarks read from the wallpaper service's admin port: ``/metrics`` and ``/readyz``.

The public port answers both 404; the admin port (``[admin] port``, ``WALLPAPER_ADMIN__PORT``; a benchmark gives
every service it starts a free one of its own, see ``http_load.Server``) answers them for the whole service
(docs/service.md, "Admin port"). Every forked worker binds it with SO_REUSEPORT and whichever answers a scrape
reports every live worker, so one scrape is the service's figures:

* counters and histograms are the workers' **sum** (a pod total, which never goes back when a worker restarts):
  ``cachelayer_loads_total{cache="wallpaper"}``, ``wallpaper_http_requests_total{route,method,status,x_cache}``;
* gauges are **per worker**, one series each with a ``worker`` label (the task id, ``"0"`` ... ``"N-1"``, not the
  pid): ``cachelayer_local_bytes{cache="wallpaper",worker="1"}``, ``process_resident_memory_bytes{worker="0"}``;
  ``wallpaper_workers`` is the number of live workers the scrape holds. With ``server.processes = 1`` the
  gauges carry no ``worker`` label.

A worker's figures computed when read (the cache's ``stats()``, ``process_*``) are copied into the shared files
every ``PUBLISH_S``: the answering worker's are current, another's up to that old.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "PUBLISH_S",
    "Sample",
    "by_worker",
    "cache_counters",
    "live_workers",
    "parse",
    "readiness",
    "requests_by_x_cache",
    "scrape",
    "total",
]

PUBLISH_S: Final = 1.0  # service/worker_metrics.py PUBLISH_SECONDS: how old another worker's copied figures may be
_LINE: Final = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL: Final = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPES: Final = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    """One line of the text exposition: ``name{labels} value``."""

    name: str
    labels: dict[str, str]
    value: float


def _unescape(value: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: _ESCAPES[m.group(0)], value)


def parse(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (comments and blank lines skipped)."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        labels = {k: _unescape(v) for k, v in _LABEL.findall(match.group(2) or "")}
        found.append(Sample(match.group(1), labels, float(match.group(3))))
    return found


def _matches(sample: Sample, name: str, labels: dict[str, str]) -> bool:
    return sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0.0 when there is none)."""
    return sum(s.value for s in samples if _matches(s, name, labels))


def by_worker(samples: list[Sample], name: str, **labels: str) -> dict[str, float]:
    """A gauge per worker: ``worker`` label -> value (``""`` for a single process's unlabelled series)."""
    found: dict[str, float] = defaultdict(float)
    for s in samples:
        if _matches(s, name, labels):
            found[s.labels.get("worker", "")] += s.value
    return dict(found)


def cache_counters(samples: list[Sample], cache: str = "wallpaper") -> dict[str, float]:
    """The cache's own counters (``cachelayer_<name>_total{cache=...}``, the workers' sum) -> ``<name>``. The
    per-function series (more labels than ``cache``) are not these."""
    return {
        s.name.removeprefix("cachelayer_").removesuffix("_total"): s.value
        for s in samples
        if s.name.startswith("cachelayer_") and s.name.endswith("_total") and s.labels == {"cache": cache}
    }


def requests_by_x_cache(samples: list[Sample], *routes: str) -> dict[str, float]:
    """``wallpaper_http_requests_total`` by ``x_cache`` (the answers' X-Cache; ``""``: not from the cache), over
    ``routes`` (every route when none is named)."""
    found: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name == "wallpaper_http_requests_total" and (not routes or s.labels.get("route") in routes):
            found[s.labels.get("x_cache", "")] += s.value
    return dict(found)


def live_workers(samples: list[Sample]) -> int:
    """``wallpaper_workers``: the live workers whose figures the scrape holds."""
    return round(total(samples, "wallpaper_workers"))


def scrape(admin: str, timeout: float = 5.0) -> list[Sample]:
    """GET ``<admin>/metrics`` (``admin``: ``http://127.0.0.1:<admin port>``), parsed; RuntimeError unless 200."""
    try:
        with urllib.request.urlopen(admin + "/metrics", timeout=timeout) as answer:  # our own loopback server
            return parse(answer.read().decode())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"GET {admin}/metrics answered {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"GET {admin}/metrics: {exc!r}") from exc


def readiness(admin: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET ``<admin>/readyz``: (status, the answer's ``data``: ``status``, ``dependencies``, ...)."""
    try:
        with urllib.request.urlopen(admin + "/readyz", timeout=timeout) as answer:
            status, body = int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, body = exc.code, exc.read()
    data = json.loads(body).get("data", {})
    return status, data if isinstance(data, dict) else {}
