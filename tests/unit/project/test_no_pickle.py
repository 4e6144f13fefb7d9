"""No pickle anywhere we load (issue 21, item 5): a scan of the source that fails on any new way to unpickle.

Checkpoints, caches and data live on shared volumes; unpickling a file from one runs whatever code its writer
put in it. So every load under ``vt_ray/``, ``data_pipeline/`` and ``cluster/`` is JSON, safetensors,
``torch.load(weights_only=True)`` or a restricted unpickler named in :data:`ALLOWED` with the reason. (Ray moves
objects between our own processes with pickle: that is transport inside the cluster, not loading a file, and
not something this scan can see.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCANNED = ("vt_ray", "data_pipeline", "cluster")

# (file, finding) -> why it is safe. Keep it short: every entry is a place a reviewer has to trust.
ALLOWED: dict[tuple[str, str], str] = {
    ("vt_ray/learner/safe_dcp.py", "pickle.Unpickler"):
        "restricted unpickler for torch DCP's .metadata index: find_class admits only DCP metadata types",
    ("vt_ray/common/weight_share.py", "pickle.Unpickler"):
        "restricted unpickler for the weight-sync buffer handles: find_class admits only the handle types, "
        "reduce_tensor's CUDA rebuild function and its argument types, and torch dtypes",
    ("vt_ray/cluster/manifests.py", "yaml.load with Loader=loader"):
        "loader is yaml.CSafeLoader or yaml.SafeLoader, chosen on the line above (the C one is 10x faster)",
}

UNPICKLING_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
    ("cloudpickle", "load"), ("cloudpickle", "loads"), ("dill", "load"), ("dill", "loads"),
    ("marshal", "load"), ("marshal", "loads"), ("shelve", "open"), ("joblib", "load"),
    ("pd", "read_pickle"), ("pandas", "read_pickle"), ("yaml", "unsafe_load"), ("yaml", "unsafe_load_all"),
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def findings(source: str) -> list[tuple[int, str]]:
    """(line, what) for every way ``source`` could unpickle: an unpickling call or class, ``torch.load``
    without ``weights_only=True``, ``weights_only=False`` or ``allow_pickle=True`` anywhere, ``yaml.load``
    with an unsafe loader, and ``from pickle import load``-style imports."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if tuple(name.rsplit(".", 1)) in UNPICKLING_CALLS:
                out.append((node.lineno, name))
        elif isinstance(node, ast.ImportFrom) and node.module in {m for m, _ in UNPICKLING_CALLS}:
            for alias in node.names:
                if (node.module, alias.name) in UNPICKLING_CALLS:
                    out.append((node.lineno, f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.keyword) and node.arg in ("weights_only", "allow_pickle"):
            value = node.value.value if isinstance(node.value, ast.Constant) else None
            if ((node.arg == "weights_only" and value is not True)
                    or (node.arg == "allow_pickle" and value is not False)):
                out.append((node.value.lineno, f"{node.arg}={ast.unparse(node.value)}"))
        if isinstance(node, ast.Call):
            func = _dotted(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            if func.endswith("torch.load"):
                if "weights_only" not in kwargs:
                    out.append((node.lineno, "torch.load without weights_only=True"))
            if func in ("yaml.load", "yaml.load_all"):
                loader = (_dotted(kwargs["Loader"]) if "Loader" in kwargs
                          else (_dotted(node.args[1]) if len(node.args) > 1 else ""))
                if not loader.endswith(("SafeLoader", "CSafeLoader")):
                    out.append((node.lineno, f"{func} with Loader={loader or 'default'}"))
    return sorted(out)


def _sources() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_unpickling_outside_the_allow_list() -> None:
    found = []
    used = set()
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for line, what in findings(path.read_text()):
            if (rel, what) in ALLOWED:
                used.add((rel, what))
            else:
                found.append(f"{rel}:{line}: {what}")
    assert not found, (
        "unpickling loads (use JSON/safetensors/weights_only=True, or justify in ALLOWED):\n" + "\n".join(found)
    )
    assert used == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used}"


def test_no_pickle_flags_in_scripts_and_manifests() -> None:
    """Shell snippets in manifests, Dockerfiles and scripts can load too (``python -c ...``)."""
    pattern = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|allow_pickle\s*=\s*True")
    hits = [
        f"{p.relative_to(ROOT)}:{i}" for d in SCANNED for p in (ROOT / d).rglob("*")
        if p.is_file() and p.suffix in {".sh", ".yaml", ".yml", ".toml", ""} and "crds" not in p.parts
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)
    ]
    assert not hits, hits


@pytest.mark.parametrize("snippet, what", [
    ("import pickle\npickle.load(open('f', 'rb'))", "pickle.load"),
    ("import pickle as p\nx = pickle.loads(b'')", "pickle.loads"),
    ("from pickle import loads\n", "pickle.loads"),
    ("import torch\ntorch.load('x.pt')", "torch.load without weights_only=True"),
    ("import torch\ntorch.load('x.pt', weights_only=False)", "weights_only=False"),
    ("import numpy as np\nnp.load('x.npy', allow_pickle=True)", "allow_pickle=True"),
    ("import yaml\nyaml.load(open('x'), Loader=yaml.Loader)", "yaml.load with Loader=yaml.Loader"),
    ("import yaml\nyaml.unsafe_load('a: 1')", "yaml.unsafe_load"),
    ("import pandas as pd\npd.read_pickle('x')", "pd.read_pickle"),
    ("class U(pickle.Unpickler): pass", "pickle.Unpickler"),
])
def test_the_scan_catches_each_way_to_unpickle(snippet: str, what: str) -> None:
    assert what in [w for _, w in findings(snippet)]


def test_the_scan_accepts_safe_loads() -> None:
    safe = ("import torch, yaml, json\ntorch.load('x', weights_only=True)\nyaml.safe_load('a: 1')\n"
            "yaml.load('a', Loader=yaml.SafeLoader)\njson.loads('1')\nimport numpy as np\nnp.load('x.npy')\n")
    assert findings(safe) == []
