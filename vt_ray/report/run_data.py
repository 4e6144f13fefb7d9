"""Everything the run report reads from a run directory, read tolerantly: a missing or damaged file becomes a
line in ``RunData.problems`` (shown at the top of the report), never an exception.

Layout read (all optional): ``metrics.jsonl``, ``rollouts.jsonl`` (:mod:`vt_ray.trainer.rollout_log`),
``recipe.yaml``, ``environment.json``, ``checkpoints/step_*`` (+ ``latest``, ``.tmp_*`` partial saves), ``hf/``,
SFT metrics from ``<run>/sft/metrics.jsonl`` or a given SFT directory; evaluation records
(``results.jsonl`` of :mod:`vt_ray.eval.records`) from ``<run>/eval*/`` or given directories.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Checkpoint:
    name: str
    path: str
    size_mb: float
    modified: float  # epoch seconds
    kind: str  # "grpo" | "grpo (partial, ignored)" | "hf" | "sft hf"
    latest: bool = False


@dataclass
class EvalRun:
    name: str
    path: str
    items: list[dict[str, Any]]


@dataclass
class RunData:
    run_dir: Path
    name: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    sft_metrics: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    rollouts_capped_at: int | None = None
    recipe_text: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    evals: list[EvalRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_jsonl(path: Path, problems: list[str], what: str) -> list[dict[str, Any]]:
    """JSON objects of ``path``, skipping (and reporting) lines that do not parse: a run killed mid-write
    leaves a truncated last line."""
    if not path.is_file():
        problems.append(f"{what}: {path} is missing")
        return []
    rows, bad = [], []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(lineno)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(lineno)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        problems.append(f"{what}: {len(bad)} line(s) of {path.name} are not valid JSON (truncated write?), "
                        f"skipped: line {shown}")
    return rows


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _checkpoints(run_dir: Path, sft_dir: Path | None) -> list[Checkpoint]:
    out: list[Checkpoint] = []
    root = run_dir / "checkpoints"
    latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else ""
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and (p.name.startswith("step_") or p.name.startswith(".tmp_")):
                kind = "grpo" if p.name.startswith("step_") else "grpo (partial, ignored)"
                out.append(Checkpoint(p.name, str(p), _dir_size_mb(p), p.stat().st_mtime, kind, p.name == latest))
    for kind, p in (("hf", run_dir / "hf"), ("sft hf", (sft_dir or run_dir / "sft") / "hf")):
        if p.is_dir():
            out.append(Checkpoint(p.name, str(p), _dir_size_mb(p), p.stat().st_mtime, kind))
    return out


def load_run(run_dir: str | Path, sft_dir: str | Path | None = None,
             eval_dirs: Sequence[str | Path] = ()) -> RunData:
    run_dir = Path(run_dir)
    data = RunData(run_dir=run_dir, name=run_dir.name)
    p = data.problems
    if not run_dir.is_dir():
        p.append(f"run directory {run_dir} does not exist")
        return data
    data.metrics = sorted(read_jsonl(run_dir / "metrics.jsonl", p, "curves"),
                          key=lambda r: r.get("step", 0) if isinstance(r.get("step"), int | float) else 0)
    if data.metrics and all("loss" in r and "reward/total" not in r for r in data.metrics):
        data.sft_metrics, data.metrics = data.metrics, []  # an SFT output directory: no rollouts to expect
        rollouts = []
    else:
        rollouts = read_jsonl(run_dir / "rollouts.jsonl", p, "rollout viewer")
    for row in rollouts:
        if row.get("capped"):
            data.rollouts_capped_at = int(row.get("step", -1))
    data.rollouts = [r for r in rollouts if not r.get("capped") and isinstance(r.get("responses"), list)]
    if rollouts and len(data.rollouts) + (data.rollouts_capped_at is not None) < len(rollouts):
        p.append("rollout viewer: some lines of rollouts.jsonl have no 'responses' list and were skipped")
    if data.rollouts_capped_at is not None:
        p.append(f"rollout viewer: rollouts.jsonl reached trainer.rollouts_max_mb at step {data.rollouts_capped_at};"
                 " later steps were not saved")
    if (run_dir / "recipe.yaml").is_file():
        data.recipe_text = (run_dir / "recipe.yaml").read_text(errors="replace")
    else:
        p.append(f"recipe: {run_dir / 'recipe.yaml'} is missing")
    env_path = run_dir / "environment.json"
    if env_path.is_file():
        try:
            data.environment = json.loads(env_path.read_text())
        except json.JSONDecodeError:
            p.append(f"environment: {env_path} is not valid JSON")
    else:
        from vt_ray.common.environment import capture_environment

        data.environment = {**capture_environment(), "note": "of the machine that made this report"}
        p.append("environment: environment.json is missing (run made before it was recorded); "
                 "showing the environment of the machine that made this report")
    sft = Path(sft_dir) if sft_dir else run_dir / "sft"
    if not data.sft_metrics and (sft / "metrics.jsonl").is_file():
        data.sft_metrics = read_jsonl(sft / "metrics.jsonl", p, "SFT curves")
    elif not data.sft_metrics and sft_dir:
        p.append(f"SFT curves: {sft / 'metrics.jsonl'} is missing")
    data.checkpoints = _checkpoints(run_dir, Path(sft_dir) if sft_dir else None)
    found = [Path(d) for d in eval_dirs] or sorted(d for d in run_dir.glob("eval*") if d.is_dir())
    for d in found:
        if d.is_dir():
            data.evals.append(EvalRun(d.name, str(d), read_jsonl(d / "results.jsonl", p, f"eval {d.name}")))
        else:
            p.append(f"eval: {d} does not exist")
    return data
