"""The service's shape, pinned: no import cycle inside service/ (lazy imports inside functions count too: a cycle
they hide is still one), and no handler module reaching back into the process code.

The graph is read from the source (ast), as tests/test_architecture.py reads cachelayer's: importing the modules
would not show an edge a lazy import makes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import service
from tests._imports import import_cycles

PACKAGE = Path(service.__file__).parent
ROOT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of service/ that ``module`` imports, wherever in it (type-checking and lazy imports too)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import x`, `from .repositories import mysql`: x is a module
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                elif target in known:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
    return found - {module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, set(modules)) for name, path in modules.items()}


def test_the_graph_sees_the_imports() -> None:
    # A resolver that found nothing would make the acyclic test below pass vacuously.
    graph = _graph()
    assert {"service.services", "service.app", "service.http_edges"} <= graph["service.runtime"]
    assert "service.services" in graph["service.routes"]
    assert "service.repositories" in graph["service.services"]
    assert "service.repositories.mysql" in graph["service.seed"]
    assert "service.demo_data" in graph["service.seed"]  # from . import demo_data
    assert "service.repositories._budget" in graph["service.repositories.mongo"]


def test_no_import_cycle_inside_the_service() -> None:
    assert import_cycles(_graph()) == [], "import cycles in service/"


def test_the_cycle_finder_finds_cycles() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_requests_do_not_reach_the_process_code() -> None:
    # runtime.py (fork, signals, serve) and __main__ sit on top: nothing a request runs imports them.
    graph = _graph()
    top = {"service.runtime", "service.__main__"}
    reaching = sorted(name for name, imported in graph.items() if imported & top and name not in top)
    assert reaching == [], f"{reaching} import the process code"
