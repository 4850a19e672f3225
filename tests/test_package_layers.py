"""Every arrow between flwrmtls's packages points one way: read from the sources (nothing is
imported), a module's imports folded to top-level packages (``flwrmtls.link.server`` is
``link``, ``flwrmtls.heap`` is ``heap``) form no cycle (docs/architecture.md). Generated
protobuf code and the app template are left out, as a lower layer every package may use and
files that are not part of the package. The control: the same check finds a cycle made by
hand."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "flwrmtls"


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "flwrmtls" or len(parts) < 2 or parts[1] == "proto":
        return None
    return parts[1]


def _imported(node: ast.AST, here: list[str], is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the module's own package upwards
            base = here[: len(here) - node.level + (1 if is_package else 0)]
            return [".".join(base + ([node.module] if node.module else []))]
        return [node.module] if node.module else []
    return []


def package_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Package -> the packages its modules import (anywhere in a module, a function's import
    included)."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        if "_pb2" in path.name or "templates" in path.parts:
            continue
        here = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = here[-1] == "__init__"
        if is_package:
            here = here[:-1]
        source = _package(".".join(here))
        if source is None:
            continue
        graph.setdefault(source, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for module in _imported(node, here, is_package):
                target = _package(module)
                if target is not None and target != source:
                    graph[source].add(target)
    return graph


def test_the_packages_form_no_cycle() -> None:
    graph = package_graph()
    assert {"link", "node", "app", "objects", "wire"} <= graph.keys()  # it read the tree
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_a_cycle_made_by_hand_is_found(tmp_path: Path) -> None:
    root = tmp_path / "flwrmtls"
    for package, imports in (("a", "from flwrmtls.b import x"), ("b", "import flwrmtls.a.y")):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text(f"def f():\n    {imports}\n")
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(package_graph(root)).prepare()
