"""The tables of docs/metrics.md, generated from the code that defines the metrics (docs/_hooks.py inserts them).

Nothing here lists a metric: the library's families are what ``register_prometheus`` puts in a fresh registry, the
service's what ``service.app.make_app`` puts in the registry it serves at ``/metrics`` (no port, no server, no
store: a ``Services`` over a cache that never connects). Each table row is one family of ``registry.collect()``,
which is what a scrape shows: its name, type, help text, and label names (from its samples, or, for a labelled
family with no child yet, from the ``prometheus_client`` metric that defines it).

``python docs/_metrics_table.py`` prints the Markdown (run from the repository root).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import types
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")

# Sample labels that belong to the type, not to the family (histogram buckets, summary quantiles).
_TYPE_LABELS = frozenset({"le", "quantile"})
# What a scrape shows for one family, by type: the sample names after the family name.
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "info": ("_info",),
}


class MetricsTableError(RuntimeError):
    """The code no longer looks the way the generator reads it: fix docs/_metrics_table.py."""


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    when: str = "always"

    @property
    def key(self) -> tuple[str, str, str, tuple[str, ...]]:
        return (self.name, self.type, self.help, self.labels)

    def exposed(self) -> str:
        """The sample names a scrape shows, as Markdown."""
        suffixes = _SUFFIXES.get(self.type, ("",))
        if len(suffixes) == 1:
            return f"`{self.name}{suffixes[0]}`"
        return f"`{self.name}` (" + ", ".join(f"`{s}`" for s in suffixes) + ")"


def families_of(registry: Any) -> list[Family]:
    """Every family ``registry.collect()`` yields, in order (a name yielded twice is listed twice)."""
    found: list[Family] = []
    for metric in registry.collect():
        labels: dict[str, None] = {}  # ordered set
        for sample in metric.samples:
            labels.update(dict.fromkeys(name for name in sample.labels if name not in _TYPE_LABELS))
        if not metric.samples:
            # A family a collector yields declares its labels itself (service.metrics.HttpMetrics before a request).
            declared = getattr(metric, "_labelnames", None) or _declared_labels(registry, metric.name)
            labels = dict.fromkeys(declared)
        found.append(Family(metric.name, metric.type, tuple(labels), metric.documentation))
    return found


def _declared_labels(registry: Any, name: str) -> tuple[str, ...]:
    """The label names of a family that has no sample yet: a labelled ``Counter``/``Histogram``/... before its
    first ``.labels()``. prometheus_client keeps them on the metric (``_labelnames``); a collector of our own
    always yields samples."""
    collector = getattr(registry, "_names_to_collectors", {}).get(name)
    labelnames = getattr(collector, "_labelnames", None)
    if labelnames is None:
        raise MetricsTableError(f"{name}: no samples and no declared label names; cannot tell its labels")
    return tuple(labelnames)


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(make())


# --- the library: register_prometheus --------------------------------------------------------------------------


async def _library_registry(*, guarded: bool, local: bool, hooks: bool) -> list[Family]:
    from prometheus_client import CollectorRegistry

    from cachelayer import Cache, Guard, GuardedBackend, LocalCache, MemoryBackend, register_prometheus

    store: Any = MemoryBackend()
    if guarded:
        store = GuardedBackend(store, Guard())
    cache = Cache(store, local=LocalCache() if local else None)
    try:
        registry = CollectorRegistry()
        register_prometheus("cache", cache.stats, registry, cache=cache if hooks else None)
        return families_of(registry)
    finally:
        await cache.aclose()


# Each optional part of a cache, the variant that has only it, and how the table says so.
_LIBRARY_VARIANTS: tuple[tuple[str, dict[str, bool]], ...] = (
    ("`register_prometheus(..., cache=cache)`", {"hooks": True}),
    ("a guarded store (every Redis store; `GuardedBackend`)", {"guarded": True}),
    ("a local tier (`Cache(local=LocalCache(...))`)", {"local": True}),
)


def library_families() -> list[Family]:
    """What ``register_prometheus`` exports, with when: ``always`` (an in-process store, no options), or the
    optional part of the cache whose figures add the family."""

    async def collect() -> tuple[list[Family], list[Family], list[tuple[str, set[str]]]]:
        base = await _library_registry(guarded=False, local=False, hooks=False)
        full = await _library_registry(guarded=True, local=True, hooks=True)
        variants = []
        for when, options in _LIBRARY_VARIANTS:
            flags = {"guarded": False, "local": False, "hooks": False, **options}
            variants.append((when, {f.name for f in await _library_registry(**flags)}))
        return base, full, variants

    base, full, variants = _run(collect)
    always = {f.name for f in base}
    rows = []
    for family in full:
        if family.name in always:
            rows.append(family)
            continue
        whens = [when for when, names in variants if family.name in names]
        if not whens:
            raise MetricsTableError(f"{family.name}: exported by no single optional part of a cache")
        rows.append(dataclasses.replace(family, when=" or ".join(whens)))
    _check_unique(rows, "register_prometheus")
    return rows


def _check_unique(families: Iterable[Family], where: str) -> None:
    seen: set[str] = set()
    for family in families:
        if family.name in seen:
            raise MetricsTableError(f"{where} exports {family.name} twice")
        seen.add(family.name)


# --- the service: service.app.make_app's registry ---------------------------------------------------------------


async def _service_registry(*, local: bool) -> list[Family]:
    """The families of the registry a scrape of one service process renders, for the shipped configuration
    (``cache.local`` as given), after ``make_app`` registered them: a ``Services`` whose cache is built as
    ``Services.start`` builds it but never connects, whose MySQL pool is a stand-in with the pool's figures, and
    with no MongoDB client (the metrics read neither)."""
    if str(ROOT) not in sys.path:  # service/ runs from the repository (it is not installed)
        sys.path.insert(0, str(ROOT))
    from service.app import make_app
    from service.config import DEFAULT_CONFIG, load_settings
    from service.repositories import MySQLRepository
    from service.services import Services, build_cache

    settings = load_settings(DEFAULT_CONFIG, cache={"local": local}, log={"sink": "none", "access_log": False})
    cache = build_cache(settings)
    try:
        pool: Any = types.SimpleNamespace(size=0, freesize=0, maxsize=settings.mysql.pool_max)
        services = Services(settings, cache, None, None, MySQLRepository(pool))  # type: ignore[arg-type]
        make_app(services)  # registers the process's metrics, as runtime.py's server does
        registry = services.metrics.registry  # what a lone process's scrape renders (exposition.py)
        return families_of(registry)
    finally:
        await cache.aclose()


@dataclasses.dataclass(frozen=True)
class ServiceMetrics:
    own: list[Family]  # what the service adds to the library's families
    library: list[Family]  # the library's families the scrape carries
    missing: list[Family]  # the library's families it does not carry
    twice: list[str]  # family names one scrape carries more than once


def service_families(library: list[Family]) -> ServiceMetrics:
    async def collect() -> tuple[list[Family], list[Family]]:
        return await _service_registry(local=False), await _service_registry(local=True)

    shipped, with_local = _run(collect)
    shipped_keys = {f.key for f in shipped}
    library_keys = {f.key for f in library}
    own: list[Family] = []
    for family in with_local:
        if family.key in library_keys:
            continue
        when = "always" if family.key in shipped_keys else "`cache.local = true`"
        own.append(dataclasses.replace(family, when=when))
    carried = {f.key for f in with_local}
    names = [f.name for f in with_local]
    return ServiceMetrics(
        own=own,
        library=[f for f in library if f.key in carried],
        missing=[f for f in library if f.key not in carried],
        twice=sorted({name for name in names if names.count(name) > 1}),
    )


# --- Markdown ----------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(families: Iterable[Family]) -> str:
    lines = ["| metric | type | labels | description | exported |", "|---|---|---|---|---|"]
    for f in families:
        labels = ", ".join(f"`{label}`" for label in f.labels) or "(none)"
        lines.append(f"| {f.exposed()} | {f.type} | {labels} | {_cell(f.help)} | {f.when} |")
    return "\n".join(lines)


def library_markdown(library: list[Family] | None = None) -> str:
    library = library_families() if library is None else library
    return f"{table(library)}\n\n{len(library)} families."


def service_markdown(library: list[Family] | None = None) -> str:
    library = library_families() if library is None else library
    service = service_families(library)
    parts = [table(service.own)]
    carried = f"The scrape also carries {len(service.library)} of the {len(library)} library families above"
    if service.missing:
        carried += " (not " + ", ".join(f"`{f.name}`" for f in service.missing) + ")"
    parts.append(carried + ', with `cache="wallpaper"`.')
    if service.twice:
        names = ", ".join(f"`{name}`" for name in service.twice)
        parts.append(
            '!!! warning "A family exported twice"\n'
            f"    With the settings in the last column, one scrape carries {names} more than once (once from "
            "`register_prometheus`, once from `service/app.py`). `promtool check metrics` refuses such a scrape "
            '("second HELP line for metric name"). This note is generated: it goes when the code exports each '
            "family once."
        )
    return "\n\n".join(parts)


def main() -> None:
    library = library_families()
    print("## register_prometheus\n")
    print(library_markdown(library))
    print("\n## service /metrics\n")
    print(service_markdown(library))


if __name__ == "__main__":
    main()
