"""Fixed costs of the tiny recipe (issue 24, items 3 and 4): peak memory per role process and seconds per
start-up and shut-down phase, from one ``python -m vt_ray train`` run of ``recipes/tiny_cpu.yaml``.

The run writes ``memory.json`` (peak PSS per role, sampled by the driver every 2 s, the kernel's peak RSS, and
the peak of all of them at once: the whole process tree, the figure issue 24 quotes as 4.1 GiB) and
``phases.json`` (start-up, steps, shut-down by phase; Ray start and stop; CPU seconds per role at start-up);
this script adds the wall time of the whole command (interpreter start, imports and exit included).

Run: ``.venv/bin/python -m benchmarks.fixed_costs`` (about 2-3 minutes on 2 cores; the tiny model and data are
made once under ``--work``). ``--set rollout.kv_cache_gib=1`` reruns with the old fixed KV reservation;
``--label`` names the run in the JSON (``outputs/bench/fixed_costs/<label>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def prepare(work: Path) -> tuple[Path, Path]:
    """The tiny model and the synthetic data (48 videos, as the demo), made once."""
    from vt_ray.data.synthetic import make_synthetic_dataset
    from vt_ray.models.tiny import make_tiny_model

    model, data = work / "model", work / "data"
    if not (model / "config.json").is_file():
        make_tiny_model(model, seed=0)
    if not (data / "train.jsonl").is_file():
        make_synthetic_dataset(data, num_videos=48, seed=0, val_fraction=1 / 3)
    return model, data


def run_once(args: argparse.Namespace, model: Path, data: Path) -> dict[str, Any]:
    runs = Path(args.work) / "runs"
    run_dir = runs / args.label
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume
    cmd = [sys.executable, "-m", "vt_ray", "train", f"recipe={ROOT / 'recipes' / 'tiny_cpu.yaml'}",
           f"model.path={model}", f"data.train_file={data / 'train.jsonl'}", f"data.val_file={data / 'val.jsonl'}",
           f"run.output_dir={runs}", f"run.name={args.label}", "trainer.write_report=false", *args.set]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"}
    log_path = Path(args.work) / f"{args.label}.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"train exited with {code}; see {log_path}")
    memory = json.loads((run_dir / "memory.json").read_text())
    phases = json.loads((run_dir / "phases.json").read_text())
    phases.pop("timeline", None)
    fit = phases.get("fit_s", 0.0)
    outer = phases.get("outer", {})
    return {
        "label": args.label, "overrides": args.set, "wall_s": round(wall, 2),
        "python_start_and_exit_s": round(wall - fit - sum(outer.values()), 2),
        "roles": {role: {k: r[k] for k in ("peak_pss_gib", "peak_rss_gib")} for role, r in memory["roles"].items()},
        "roles_at_once_peak_pss_gib": memory["total"]["peak_pss_gib"], "memory_samples": memory["samples"],
        "phases": phases, "log": str(log_path),
    }


def show(result: dict[str, Any]) -> None:
    p = result["phases"]
    print(f"\n== {result['label']} {' '.join(result['overrides'])}")
    print(f"whole command {result['wall_s']:.1f} s; peak PSS of every process at once "
          f"{result['roles_at_once_peak_pss_gib']:.2f} GiB ({result['memory_samples']} samples)")
    print(f"{'role':<10} {'peak PSS GiB':>12} {'peak RSS GiB':>12}")
    for role, r in result["roles"].items():
        print(f"{role:<10} {r['peak_pss_gib']:>12.3f} {r['peak_rss_gib']:>12.3f}")
    outer = p.get("outer", {})
    print(f"python start + imports + exit {result['python_start_and_exit_s']:.1f} s; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in outer.items()))
    print("CPU seconds used when the roles were up: "
          + ", ".join(f"{k} {v:.1f}" for k, v in p.get("cpu_s_at_roles_started", {}).items()))
    for part in ("startup", "shutdown"):
        print(f"{part} {p[part]['seconds']:.1f} s: "
              + ", ".join(f"{k} {v:.2f}" for k, v in p[part]["phases"].items()))
    st = p["steps"]
    print(f"steps {st['count']}: first {st['first_s']:.2f} s, median after {st['median_after_first_s']:.2f} s; "
          f"untracked in fit {p.get('untracked_s', 0):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(ROOT / "outputs" / "bench" / "fixed_costs"))
    parser.add_argument("--label", default="tiny")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="recipe overrides")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, data = prepare(work)
    result = run_once(args, model, data)
    show(result)
    out = work / f"{args.label}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
