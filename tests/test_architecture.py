"""The library's shape, pinned: no import cycle inside cachelayer/, redis-py imported only by the Redis modules,
OpenTelemetry only by _otel.py and _otel_direct.py, and the packages a user installs import nothing of the
repository's own."""

from __future__ import annotations

import ast
from pathlib import Path

import cachelayer
from tests._imports import import_cycles

PACKAGE = Path(cachelayer.__file__).parent
REDIS_MODULES = {"_redis_backend", "_redis_clients", "_redis_cluster", "_redis_inspect", "_redis_pubsub", "_redis_urls"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules of cachelayer imported, top-level packages imported from outside), type-checking imports too."""
    inner: set[str] = set()
    outer: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    inner.add(node.module.split(".")[0])
                else:
                    inner.update(alias.name for alias in node.names)
            elif node.level == 0 and node.module:
                outer.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outer.update(alias.name.split(".")[0] for alias in node.names)
    return inner, outer


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path)[0] for path in PACKAGE.glob("*.py")}


def test_no_import_cycle_inside_the_library() -> None:
    cycles = import_cycles(_graph())
    assert cycles == [], f"import cycles: {cycles}"


def test_only_the_redis_modules_import_redis_and_only_the_otel_modules_import_opentelemetry() -> None:
    for path in PACKAGE.glob("*.py"):
        outer = _imports(path)[1]
        if path.stem not in REDIS_MODULES:
            assert "redis" not in outer, f"{path.name} imports redis-py: only {sorted(REDIS_MODULES)} may"
        if path.stem not in ("_otel", "_otel_direct", "__init__"):
            assert "opentelemetry" not in outer, f"{path.name} imports opentelemetry: only _otel*.py may"


def test_the_library_imports_nothing_of_the_repository() -> None:
    for path in PACKAGE.glob("*.py"):
        outer = _imports(path)[1]
        assert not outer & {"service", "benchmarks", "harness", "tests"}, path.name
