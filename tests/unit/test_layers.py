"""The package's layers point one way, and no modules import each other.

Every import in ``collabtrio/`` is read from the source (``TYPE_CHECKING`` imports
included, since they are a dependency of the reader too) and checked against the
layering of docs/architecture.md: protocol <- transport <- rooms / application <-
surfaces, storage below rooms.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "collabtrio"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [prefix, *(f"{prefix}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


GRAPH = _imports()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# layer -> layers it must never import
FORBIDDEN: dict[str, set[str]] = {
    "protocol": {"transport", "rooms", "app", "http", "storage", "auth", "server", "cli",
                 "testing", "client"},
    "auth": {"transport", "rooms", "app", "http", "storage", "server"},
    "storage": {"transport", "rooms", "app", "http", "auth", "server"},
    "transport": {"rooms", "app", "http", "storage", "auth", "server"},
    "rooms": {"transport", "app", "http", "server"},
    "app": {"http", "server"},
}


def test_the_import_graph_is_read() -> None:
    assert "collabtrio.rooms.room" in GRAPH
    assert "collabtrio.protocol.outgoing" in GRAPH["collabtrio.rooms.room"]


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_layers_point_one_way(module: str) -> None:
    banned = FORBIDDEN.get(_layer(module), set())
    wrong = sorted(dep for dep in GRAPH[module] if _layer(dep) in banned)
    assert wrong == [], f"{module} imports a higher layer"
