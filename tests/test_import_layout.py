"""How the packages may import each other: no cycles, and the device plugin carries only itself.

Read from the source (``ast``), not by importing: an import inside a function counts as much as
one at the top, so a cycle cannot hide behind a late import.  Imports under ``if TYPE_CHECKING:``
are left out (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# import package -> folder
PACKAGES = {
    "neuron_cores": "cores",
    "neuron_runtime": "runtime",
    "neuron_device_plugin": "device_plugin",
    "neuron_dra_driver": "dra_driver",
    "neuron_operator": "operator",
    "neuron_localcluster": "localcluster",
}


def module_files() -> dict[str, Path]:
    """module name -> file, for every first-party module of ``PACKAGES``."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: the bodies of ``if TYPE_CHECKING:`` are skipped."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield child
                yield from _runtime_nodes(child)
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_modules(module: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The first-party modules ``module`` imports.

    ``from pkg import mod`` names ``pkg.mod`` when that is a module and ``pkg`` otherwise; the
    parent packages Python initialises on the way are not counted (as import linters do), or
    every module of a package whose ``__init__`` re-exports would be in a cycle with it.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for name in names:
            target = name
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = module_files()
    return {module: imported_modules(module, path, known) for module, path in known.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
    ids=["chain", "two-module-cycle", "three-module-cycle"],
)
def test_cycles_finds_every_loop_and_only_loops(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert cycles(graph) == expected


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    source = tmp_path / "demo.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import hidden\n"
        "def run() -> None:\n    from pkg.cli import ensure_up\n    from pkg import VERSION, util\n"
    )
    known = {
        "pkg": tmp_path,
        "pkg.cli": tmp_path,
        "pkg.demo": source,
        "pkg.hidden": tmp_path,
        "pkg.util": tmp_path,
    }
    assert imported_modules("pkg.demo", source, known) == {"pkg", "pkg.cli", "pkg.util"}


def test_no_package_has_an_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_device_plugin_imports_nothing_of_the_local_cluster() -> None:
    """An installed device plugin carries only the device plugin (its test kubelet lives in
    neuron_localcluster)."""
    graph = import_graph()
    leaks = {
        module: sorted(t for t in targets if t.startswith("neuron_localcluster"))
        for module, targets in graph.items()
        if module.startswith("neuron_device_plugin")
    }
    assert {m: t for m, t in leaks.items() if t} == {}


def test_the_serving_front_ends_sit_on_the_service_and_not_on_each_other() -> None:
    """REST and gRPC share one data plane (``service``), as KServe's both sit on its own;
    neither imports the other, and ``server`` (assembly) knows no runtime: ``runtime_binding``
    is above it."""
    graph = import_graph()
    serving = "neuron_runtime.serving"
    for front, other in (("http_frontend", "grpc_frontend"), ("grpc_frontend", "http_frontend")):
        targets = graph[f"{serving}.{front}"]
        assert f"{serving}.{other}" not in targets
        assert f"{serving}.service" in targets
    assert f"{serving}.runtime_binding" not in graph[f"{serving}.server"]
