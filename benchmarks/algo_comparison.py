"""The GRPO family compared on the learning benchmark: held-out accuracy against step and wall clock.

    .venv/bin/python -m benchmarks.algo_comparison --seeds 0 1 \\
        --families grpo dr_grpo gspo dapo tgrpo cispo grpo_2upd --out outputs/bench/algo trainer.total_steps=30

For each seed: the tiny model, the colour task and one SFT checkpoint (:mod:`vt_ray.learning`), then one GRPO
run per family from that same checkpoint, with the same seed, data order and validation schedule; only the
algorithm overrides differ (:data:`FAMILIES`, the table in docs/algorithms.md). Writes
``OUT/algo_comparison.json`` (every curve and summary), ``OUT/algo_comparison.png`` (accuracy against step
and against seconds) and prints a table. ``key=value`` arguments override the recipe for every family (e.g.
``trainer.total_steps=40``). Nothing here asserts: the figures are what they are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from vt_ray.learning import CHANCE, RECIPE, LearningSpec, build_inputs, check_spec, run_grpo_stage, run_sft_stage

# family -> recipe overrides on top of recipes/learn_color_cpu.yaml (KL off, 64 tokens, 128 responses/step)
FAMILIES: dict[str, tuple[str, ...]] = {
    "grpo": (),
    "dr_grpo": ("algorithm.adv_estimator=dr_grpo", "algorithm.loss_agg_mode=seq-mean-token-sum-norm"),
    # two updates per step (mini-batches of 64 responses): with one update GSPO's sequence ratio is 1
    "gspo": ("algorithm.policy_loss=gspo", "algorithm.loss_agg_mode=seq-mean-token-mean",
             "trainer.mini_batch_size=64"),
    "dapo": ("algorithm.dynamic_sampling=true", "algorithm.oversample_factor=2", "algorithm.clip_ratio_high=0.28",
             "algorithm.overlong_buffer_len=12"),
    "tgrpo": ("algorithm.tgrpo=true",),
    # T-GRPO's bonus goes to correct responses only: with a binary accuracy and GRPO's std normalisation it only
    # rescales a group's deviations and cancels (tests/unit/algo/test_algo_family.py); without std (Dr. GRPO) it
    # does not
    "tgrpo_dr": ("algorithm.tgrpo=true", "algorithm.adv_estimator=dr_grpo",
                 "algorithm.loss_agg_mode=seq-mean-token-sum-norm"),
    "cispo": ("algorithm.policy_loss=cispo",),
    # GRPO with GSPO's two updates per step: separates what the sequence-level ratio does from what the extra
    # update does
    "grpo_2upd": ("trainer.mini_batch_size=64",),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.algo_comparison", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every family")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    p.add_argument("--out", default="outputs/bench/algo_comparison")
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--target", type=float, default=0.9, help="held-out accuracy whose first crossing is timed")
    p.add_argument("--task", choices=("color", "order"), default="color",
                   help="order: which colour came first (shuffled frames destroy the answer; T-GRPO's case)")
    p.add_argument("--num-train", type=int, default=192)
    p.add_argument("--num-val", type=int, default=64)
    p.add_argument("--reuse-sft", action="store_true",
                   help="keep a seed's inputs and SFT checkpoint from an earlier run into the same --out")
    p.add_argument("--combine", nargs="+", metavar="JSON", default=None,
                   help="run nothing: merge earlier algo_comparison.json files (families per seed) into OUT")
    return p.parse_args(argv)


def run_seed(spec: LearningSpec, families: list[str], reuse_sft: bool = False) -> dict[str, Any]:
    """Inputs and SFT once, then one GRPO run per family from the same SFT checkpoint."""
    started = time.perf_counter()
    sft_dir = spec.out / "sft" / "hf"
    if reuse_sft and (sft_dir / "config.json").is_file():
        sft: dict[str, Any] = {"reused": str(sft_dir)}
    else:
        build_inputs(spec)
        sft_dir, sft = run_sft_stage(spec)
    out: dict[str, Any] = {"seed": spec.seed, "task": spec.task, "sft": sft,
                           "sft_s": round(time.perf_counter() - started, 1), "families": {}}
    for name in families:
        print(f"[algo_comparison] seed {spec.seed}: {name} {' '.join(FAMILIES[name]) or '(recipe as is)'}", flush=True)
        t0 = time.perf_counter()
        run = run_grpo_stage(spec, sft_dir, name, blank=False, extra=FAMILIES[name])
        run["overrides"] = list(FAMILIES[name])
        run["wall_s"] = round(time.perf_counter() - t0, 1)
        run["mean_step_s"] = _mean(run["curve"]["step_s"])
        out["families"][name] = run
    return out


def _mean(values: list[Any]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(sum(xs) / len(xs), 2) if xs else None


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'family':<9}{'seed':>5}{'SFT acc':>9}{'final acc [95% CI]':>22}{'best':>7}{'step->target':>14}"
             f"{'s->target':>11}{'s/step':>8}  verdict"]
    for r in results:
        for name, run in r["families"].items():
            g = run["summary"]
            step = g["target_step"] if g.get("target_step") is not None else "-"
            secs = f"{g['target_elapsed_s']:.0f}" if g.get("target_elapsed_s") is not None else "-"
            lines.append(f"{name:<9}{r['seed']:>5}{g['start_accuracy']:>9.3f}{g['final_accuracy']:>10.3f} "
                         f"[{g['final_ci95'][0]:.2f}-{g['final_ci95'][1]:.2f}]{g['best_accuracy']:>7.3f}{step:>14}"
                         f"{secs:>11}{run['mean_step_s'] or 0:>8.1f}  {g['verdict'].split(':')[0]}")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> str:
    """Held-out accuracy against GRPO step (left) and seconds (right): one colour per family, one line style
    per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = sorted({n for r in results for n in r["families"]}, key=list(FAMILIES).index)
    styles = ("-", "--", ":", "-.")
    for i, r in enumerate(results):
        for name, run in r["families"].items():
            c = run["curve"]
            kw = {"color": f"C{names.index(name)}", "ls": styles[i % len(styles)], "marker": "o", "ms": 3,
                  "label": f"{name} seed {r['seed']}"}
            by_step.plot(c["val_step"], c["val_accuracy"], **kw)
            by_time.plot(c["val_elapsed_s"], c["val_accuracy"], **kw)
    for ax, xlabel in ((by_step, "GRPO step"), (by_time, "seconds since GRPO start (incl. actor start-up)")):
        ax.axhline(CHANCE, color="grey", lw=1, ls=":", label="chance")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (greedy, n=64)")
    by_step.legend(fontsize=7, ncol=2)
    task = {"color": "colour", "order": "colour-order"}[results[0].get("task", "color")] if results else "colour"
    fig.suptitle(f"GRPO family on the learnable {task} task (same SFT checkpoint per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def combine(paths: list[str], out: Path) -> int:
    """One table and plot from several runs of this benchmark: each seed's families merged (later files win)."""
    by_seed: dict[int, dict[str, Any]] = {}
    for path in paths:
        for run in json.loads(Path(path).read_text())["runs"]:
            merged = by_seed.setdefault(run["seed"], {**run, "families": {}})
            merged["families"].update(run["families"])
    results = [by_seed[s] for s in sorted(by_seed)]
    out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "algo_comparison", "combined_from": paths, "chance": CHANCE,
              "task": results[0].get("task", "color") if results else "color",
              "families": {n: list(FAMILIES[n]) for r in results for n in r["families"]}, "runs": results,
              "plot": plot(results, out / "algo_comparison.png")}
    (out / "algo_comparison.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"wrote {out / 'algo_comparison.json'} and {report['plot']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    if args.combine:
        return combine(args.combine, out)
    specs = [LearningSpec(out=out / f"seed{seed}", seed=seed, recipe=Path(args.recipe), overrides=list(args.overrides),
                          control=False, target=args.target, task=args.task, num_train=args.num_train,
                          num_val=args.num_val) for seed in args.seeds]
    for spec in specs:  # every family's overrides are checked before any work (the error names the key)
        for name in args.families:
            check_spec(LearningSpec(**{**vars(spec), "overrides": [*spec.overrides, *FAMILIES[name]]}))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vt_ray.cluster.session import ray_session

    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "benchmark": "algo_comparison",
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.algo_comparison", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "task": args.task, "chance": CHANCE, "families": {n: list(FAMILIES[n]) for n in args.families}, "runs": results,
    }
    with ray_session(check_spec(specs[0])):
        for spec in specs:
            results.append(run_seed(spec, args.families, args.reuse_sft))
            (out / "algo_comparison.json").write_text(json.dumps(report, indent=1) + "\n")
            print(table(results), flush=True)
    report["plot"] = plot(results, out / "algo_comparison.png")
    (out / "algo_comparison.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"wrote {out / 'algo_comparison.json'} and {report['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
