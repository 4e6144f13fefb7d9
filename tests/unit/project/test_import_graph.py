"""The package layering holds: imports point one way, and no file or package is part of an import cycle.

Read from the source (the AST), so function-level imports count too: a lazy import is still a dependency, and
lazy imports were how the old cycles were hidden. Layers, lowest first (a package may import its own layer's
packages only without a cycle, and any lower layer):
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("vt_ray", "data_pipeline")
LAYERS: tuple[tuple[str, ...], ...] = (
    ("common", "testing", "trace", "models"),  # no vt_ray imports beyond their own layer
    ("algo", "rewards"),  # pure functions: GRPO math, reward scoring (with their own config sections)
    ("config",),  # the recipe: schema, loader, the sections of the roles above
    ("data", "video"),  # samples and their formats, decoding and token budgets
    ("prompts",),  # chat prompts and model inputs from samples and media
    ("rollout", "learner", "cluster", "interop"),  # the roles' workers and groups, Ray start-up, verl/EasyR1
    ("eval",),
    ("trainer", "report"),
    ("data_pipeline", "learning", "demo", "cli", "__main__"),  # applications and entry points
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
__doc__ += "".join(f"\n{i}. {', '.join(names)}" for i, names in enumerate(LAYERS))


def _modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports anywhere in the file. ``from pkg import sub`` depends on ``pkg.sub``
    only (Python runs ``pkg/__init__`` first, but that is loading, not a dependency of this file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
            found.update(subs if len(subs) == len(node.names) else [*subs, node.module])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in mods}


def _package(module: str) -> str:
    """``vt_ray.rollout.group`` -> rollout; ``vt_ray.demo`` -> demo; ``data_pipeline.steps`` -> data_pipeline."""
    parts = module.split(".")
    if parts[0] == "data_pipeline":
        return "data_pipeline"
    return parts[1] if len(parts) > 1 else "cli"


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for module, path in mods.items():
        g.add_edges_from((module, dep) for dep in _imports(path, mods) if dep != module)
    return g


def test_every_package_has_a_layer(graph: nx.DiGraph) -> None:
    assert sorted({_package(m) for m in graph} - set(LAYER)) == []


def test_no_file_is_in_an_import_cycle(graph: nx.DiGraph) -> None:
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert cycles == []


def test_imports_point_down_the_layers_and_packages_form_no_cycle(graph: nx.DiGraph) -> None:
    upward = sorted(f"{a} -> {b}" for a, b in graph.edges if LAYER[_package(b)] > LAYER[_package(a)])
    assert upward == []
    packages: dict[str, set[str]] = defaultdict(set)
    for a, b in graph.edges:
        if _package(a) != _package(b):
            packages[_package(a)].add(_package(b))
    pg = nx.DiGraph([(a, b) for a, deps in packages.items() for b in deps])
    assert [sorted(c) for c in nx.strongly_connected_components(pg) if len(c) > 1] == []


def test_the_checker_sees_a_lazy_upward_import(tmp_path: Path) -> None:
    """The analysis itself: an import inside a function is found, a submodule import is resolved."""
    mods = {"vt_ray.algo.x": tmp_path / "x.py", "vt_ray.trainer.driver": tmp_path / "d.py",
            "vt_ray.rewards": tmp_path / "r.py", "vt_ray.rewards.target": tmp_path / "t.py"}
    (tmp_path / "x.py").write_text("def f():\n    from vt_ray.trainer.driver import GRPOTrainer\n"
                                   "from vt_ray.rewards import target\n")
    assert _imports(tmp_path / "x.py", mods) == {"vt_ray.trainer.driver", "vt_ray.rewards.target"}
    assert LAYER[_package("vt_ray.trainer.driver")] > LAYER[_package("vt_ray.algo.x")]
