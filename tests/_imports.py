"""The cycles of an import graph (module -> the modules it imports): the architecture tests of the library
(``tests/test_architecture.py``) and of the service (``tests/service/test_structure.py``) share it."""

from __future__ import annotations

__all__ = ["import_cycles"]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, each as the modules around it (the first repeated at the end)."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "visiting"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "visiting":
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles
