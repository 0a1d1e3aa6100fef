"""Imports point one way: the package's layers, no cycles, and data and models only meeting in core.

Layers, low to high: ``core`` < ``data`` < ``features`` < ``callbacks`` < ``models`` < the top (the CLI, commands,
export, inference, the RotNet audit, the demo). A module imports from its own layer or lower ones; ``data`` and
``models`` never import each other (they share types and codecs through ``core``), and nothing imports in a circle.
Every ``import`` counts, at module level or inside a function (a lazy import still ties the modules together).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = "lit_transfer"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
LAYERS: tuple[tuple[str, ...], ...] = (
    ("lit_transfer.core",),
    ("lit_transfer.data",),
    ("lit_transfer.features",),
    ("lit_transfer.callbacks",),
    ("lit_transfer.models",),
)  # every other module is in the top layer
TOP = len(LAYERS)
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("lit_transfer.data", "lit_transfer.models"),
    ("lit_transfer.models", "lit_transfer.data"),
)
Graph = Mapping[str, Iterable[str]]


def module_name(path: Path, root: Path = ROOT) -> str:
    """``lit_transfer/data/base.py`` → ``lit_transfer.data.base``; a package's ``__init__.py`` is the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_within(module: str, prefix: str) -> bool:
    """Whether ``module`` is ``prefix`` or inside it."""
    return module == prefix or module.startswith(prefix + ".")


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` (the text of ``module``) imports anywhere, relative ones resolved.

    ``from pkg import name`` is an import of ``pkg.name`` when that is a module, else of ``pkg``.
    """
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
        else:
            continue
        for target in targets:
            # ``import lit_transfer.data.base`` binds the top package, but depends on the module it names
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != module:
                found.add(target)
    return found


def package_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Every module of the package under ``root`` and the package modules it imports."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {name: imports_of(p.read_text(), name, p.name == "__init__.py", known) for name, p in files.items()}


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int:
    """The index of ``module``'s layer (``len(layers)`` for the top)."""
    for index, prefixes in enumerate(layers):
        if any(is_within(module, p) for p in prefixes):
            return index
    return len(layers)


def find_cycle(graph: Graph) -> list[str] | None:
    """A cycle of ``graph`` as a path ``[a, b, …, a]``, or ``None`` when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def layer_violations(
    graph: Graph,
    layers: tuple[tuple[str, ...], ...] = LAYERS,
    forbidden: tuple[tuple[str, str], ...] = FORBIDDEN,
) -> list[str]:
    """Every import against the layer order (a lower layer importing a higher one) or between a forbidden pair."""
    problems = []
    for module in sorted(graph):
        for target in sorted(graph[module]):
            here, there = layer_of(module, layers), layer_of(target, layers)
            if there > here:
                problems.append(f"{module} (layer {here}) imports {target} (layer {there}, higher)")
            for source, sink in forbidden:
                if is_within(module, source) and is_within(target, sink):
                    problems.append(f"{module} imports {target}: {source} must not import {sink}")
    return problems


def architecture_problems(graph: Graph) -> list[str]:
    """Everything wrong with ``graph``: its first cycle, then every import against the layers."""
    problems = []
    cycle = find_cycle(graph)
    if cycle is not None:
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems + layer_violations(graph)


# --- the checker itself ------------------------------------------------------------------------------------------


def test_checker_finds_a_cycle_and_an_upward_import() -> None:
    graph = {
        "lit_transfer.core.a": {"lit_transfer.models.m"},  # core importing models: upward
        "lit_transfer.models.m": {"lit_transfer.callbacks.c", "lit_transfer.data.d"},  # models → data: forbidden
        "lit_transfer.callbacks.c": {"lit_transfer.models.m"},  # callbacks → models: upward, and a cycle
        "lit_transfer.data.d": set(),
    }
    assert find_cycle(graph) == ["lit_transfer.callbacks.c", "lit_transfer.models.m", "lit_transfer.callbacks.c"]
    problems = architecture_problems(graph)
    assert problems[0] == "import cycle: lit_transfer.callbacks.c -> lit_transfer.models.m -> lit_transfer.callbacks.c"
    assert any("lit_transfer.core.a (layer 0) imports lit_transfer.models.m" in p for p in problems)
    assert any("lit_transfer.callbacks.c (layer 3) imports lit_transfer.models.m" in p for p in problems)
    assert any("lit_transfer.models must not import lit_transfer.data" in p for p in problems)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert architecture_problems({"lit_transfer.models.m": {"lit_transfer.core.x"}, "lit_transfer.cli": set()}) == []


def test_imports_are_read_everywhere_and_resolved(tmp_path: Path) -> None:
    root = tmp_path / "lit_transfer"
    (root / "data").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("from .base import X\n")
    (root / "data" / "base.py").write_text(
        "def late():\n    from ..models import head\n    import lit_transfer.models.head.deep\n"
    )
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "head.py").write_text("from lit_transfer import data\nfrom lit_transfer.data.base import late\n")
    graph = package_graph(root)
    assert graph["lit_transfer.data"] == {"lit_transfer.data.base"}
    assert graph["lit_transfer.data.base"] == {"lit_transfer.models.head"}  # lazy, relative and dotted imports
    assert graph["lit_transfer.models.head"] == {"lit_transfer.data", "lit_transfer.data.base"}
    assert find_cycle(graph) == [
        "lit_transfer.data",
        "lit_transfer.data.base",
        "lit_transfer.models.head",
        "lit_transfer.data",
    ]
    assert len(layer_violations(graph)) == 4  # data.base → models (upward and forbidden), models → data twice


# --- the package -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    built = package_graph()
    assert "lit_transfer.core.errors" in built and "lit_transfer.models.classifier" in built
    return built


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_follow_the_layers(graph: dict[str, set[str]]) -> None:
    assert layer_violations(graph) == []


def test_data_and_models_meet_only_in_core(graph: dict[str, set[str]]) -> None:
    crossing = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if (is_within(module, "lit_transfer.data") and is_within(target, "lit_transfer.models"))
        or (is_within(module, "lit_transfer.models") and is_within(target, "lit_transfer.data"))
    ]
    assert crossing == []


def test_core_is_a_leaf(graph: dict[str, set[str]]) -> None:
    outside = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if is_within(module, "lit_transfer.core")
        for target in targets
        if not is_within(target, "lit_transfer.core")
    ]
    assert outside == []
