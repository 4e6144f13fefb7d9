"""The learning benchmark: does GRPO raise held-out accuracy on a task that needs the pixels?

    .venv/bin/python -m benchmarks.learning_curve --seeds 0 1 2 --option-order fixed shuffled

For each option order and seed: tiny random Qwen2.5-VL -> SFT (format, true captions, random answer letters)
-> GRPO with validation every few steps, and the same GRPO on blank frames as the control
(:mod:`vt_ray.learning`). Writes ``OUT/learning_curve.json`` (every curve, per-run summaries, settings) and
``OUT/learning_curve_<order>.png`` (against step) and ``..._wallclock.png`` (against seconds), and prints a
table. ``key=value`` arguments override the recipe (``recipes/learn_color_cpu.yaml``), e.g.
``trainer.total_steps=60 learner.lr=1e-4``. Nothing here asserts: a run that does not learn is reported as
``NO RISE``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vt_ray.data.learnable import SFT_ANSWERS
from vt_ray.learning import BASES, CHANCE, RECIPE, LearningSpec, check_spec, run_learning

PANELS = (  # (curve key, title, x key) per subplot
    ("val_accuracy", "held-out accuracy (greedy)", "val"),
    ("val_caption_similarity", "held-out caption similarity (ROUGE-L)", "val"),
    ("train_reward", "train reward (total: accuracy + format + any weighted extra)", "train"),
    ("train_format", "train format reward", "train"),
    ("kl_to_reference", "KL to reference (k3)", "train"),
    ("entropy", "policy entropy", "train"),
    ("response_length", "response length (tokens)", "train"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.learning_curve", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--option-order", nargs="+", choices=("fixed", "shuffled"), default=["fixed"])
    p.add_argument("--out", default="outputs/bench/learning")
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--num-train", type=int, default=192)
    p.add_argument("--num-val", type=int, default=64)
    p.add_argument("--model-size", default="tiny")
    p.add_argument("--target", type=float, default=0.9, help="held-out accuracy whose first crossing is timed")
    p.add_argument("--no-control", action="store_true", help="skip the blank-frame control runs")
    p.add_argument("--task", choices=("color", "order"), default="color",
                   help="color: which colour fills the screen; order: which colour came first")
    p.add_argument("--base", choices=BASES, default="random",
                   help="random: the tiny random model; reader: first taught to read lettered options on text "
                        "(vt_ray.trainer.reading), SFT keeps --lookups look-ups (for shuffled options)")
    p.add_argument("--lookups", type=int, default=192, help="dark-video look-ups in SFT's data with --base reader")
    p.add_argument("--sft-answers", choices=SFT_ANSWERS, default="random",
                   help="what SFT teaches at the task traces' answer: random (a seeded random letter), withheld "
                        "(no loss on it) or uniform (every option letter, each at 1/k weight)")
    p.add_argument("--withhold-answers", dest="sft_answers", action="store_const", const="withheld",
                   help="the same as --sft-answers withheld")
    p.add_argument("--lookup-answer-weight", type=float, default=1.0,
                   help="SFT's loss weight on a look-up's answer token with --base reader (one token of ~48)")
    p.add_argument("--video-lookups", type=int, default=0,
                   help="with --base reader: SFT this many look-ups alone over the dark video before the task's SFT "
                        "(carries the reading into a prompt with a video)")
    p.add_argument("--video-lookup-epochs", type=int, default=6, help="epochs of that look-up SFT")
    p.add_argument("--sft-override", action="append", default=[], metavar="key=value",
                   help="a recipe override for the SFT stages only (repeatable), e.g. learner.warmup_steps=50")
    p.add_argument("--combine", nargs="+", metavar="JSON", default=None,
                   help="run nothing: merge earlier learning_curve.json files (e.g. seeds run separately) into "
                        "OUT's JSON, plots and table")
    return p.parse_args(argv)


def specs(args: argparse.Namespace) -> list[LearningSpec]:
    out = Path(args.out).resolve()
    return [
        LearningSpec(out=out / order / f"seed{seed}", seed=seed, option_order=order, num_train=args.num_train,
                     num_val=args.num_val, model_size=args.model_size, recipe=Path(args.recipe),
                     overrides=list(args.overrides), control=not args.no_control, target=args.target, task=args.task,
                     base=args.base, lookups=args.lookups, sft_answers=args.sft_answers,
                     video_lookups=args.video_lookups, video_lookup_epochs=args.video_lookup_epochs,
                     sft_overrides=list(args.sft_override),
                     lookup_answer_weight=args.lookup_answer_weight)
        for order in args.option_order for seed in args.seeds
    ]


def plot(results: list[dict[str, Any]], order: str, out: Path) -> list[str]:
    """Two PNGs per option order: every panel against step, and held-out accuracy against wall-clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r["option_order"] == order]
    written = []
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    axes.flat[-1].set_visible(False)  # seven panels
    for ax, (key, title, kind) in zip(axes.flat, PANELS):
        for color, style, label, c in _series(runs):
            xs = c["val_step"] if kind == "val" else c["step"]
            pts = [(x, y) for x, y in zip(xs, c.get(key) or []) if y is not None]  # older JSON may lack a key
            if pts:
                ax.plot(*zip(*pts), style, color=color, marker="o" if kind == "val" else None, ms=3, label=label)
        if not ax.lines:  # e.g. KL with algorithm.kl_coef 0: say so instead of an empty frame
            ax.text(0.5, 0.5, f"not logged in these runs\n({'algorithm.kl_coef is 0' if 'kl' in key else 'absent'})",
                    ha="center", va="center", transform=ax.transAxes, color="grey")
        if key == "val_accuracy":
            ax.axhline(CHANCE, color="grey", lw=1, ls=":", label="chance")
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GRPO step")
    fig.suptitle(f"Learnable colour task, options {order}: GRPO (solid) vs blank-frame control (dashed)")
    written.append(_save(fig, out / f"learning_curve_{order}.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, style, label, c in _series(runs):
        ax.plot(c["val_elapsed_s"], c["val_accuracy"], style, color=color, marker="o", ms=3, label=label)
    ax.axhline(CHANCE, color="grey", lw=1, ls=":", label="chance")
    ax.set_xlabel("seconds since GRPO start (incl. actor start-up)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"Held-out accuracy against wall clock, options {order}")
    written.append(_save(fig, out / f"learning_curve_{order}_wallclock.png"))
    return written


def _series(runs: list[dict[str, Any]]) -> Iterator[tuple[str, str, str, dict[str, list[Any]]]]:
    """(colour, line style, label, curve) per seed: GRPO solid, its blank-frame control dashed, same colour."""
    for i, r in enumerate(runs):
        for name, style in (("grpo", "-"), ("control", "--")):
            if name in r:
                label = f"seed {r['seed']}" + (" blank frames" if name == "control" else "")
                yield f"C{i}", style, label, r[name]["curve"]


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'order':<16}{'seed':>5}{'SFT acc':>9}{'final acc [95% CI]':>22}{'letter':>8}{'best':>7}{'t->target':>11}"
            f"{'GRPO s':>8}{'control final':>15}  verdict")
    lines = [head]
    for r in results:
        g = r["grpo"]["summary"]
        c = r.get("control", {}).get("summary", {})
        hit = f"{g['target_elapsed_s']:.0f}s@{g['target_step']}" if g.get("target_step") is not None else "-"
        ctrl = f"{c['final_accuracy']:.3f}" if c.get("final_accuracy") is not None else "-"
        lines.append(
            f"{_order_label(r):<16}{r['seed']:>5}{g['start_accuracy']:>9.3f}"
            f"{g['final_accuracy']:>10.3f} [{g['final_ci95'][0]:.2f}-{g['final_ci95'][1]:.2f}]"
            f"{(g['final_accuracy_letter'] or 0):>8.3f}{g['best_accuracy']:>7.3f}{hit:>11}{r['times_s']['grpo']:>8.0f}"
            f"{ctrl:>15}  {g['verdict'].split(':')[0]}{_by_letter(g)}"
        )
    return "\n".join(lines)


def _by_letter(summary: dict[str, Any]) -> str:
    """Final letter-only accuracy per gold letter ("A .75 B .25 ..."): which option positions the policy reads."""
    by = summary.get("final_accuracy_by_gold_letter") or {}
    return ("  (by gold letter: " + " ".join(f"{g} {v:.2f}" for g, v in by.items()) + ")") if by else ""


def _order_label(run: dict[str, Any]) -> str:
    """The option order, and the base when it is not the random model (older JSON has no base)."""
    base = run.get("base", "random")
    return run["option_order"] if base == "random" else f"{run['option_order']}+{base}"


def combine(paths: list[str], out: Path) -> int:
    """One report from several runs of this benchmark (the runs are copied as they are)."""
    results = [run for path in paths for run in json.loads(Path(path).read_text())["runs"]]
    out.mkdir(parents=True, exist_ok=True)
    orders = sorted({r["option_order"] for r in results})
    report = {"benchmark": "learning_curve", "combined_from": paths, "chance": CHANCE, "runs": results,
              "plots": [p for order in orders for p in plot(results, order, out)]}
    (out / "learning_curve.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"wrote {out / 'learning_curve.json'} and {', '.join(report['plots'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        return combine(args.combine, Path(args.out).resolve())
    runs = specs(args)
    first = check_spec(runs[0])  # bad overrides fail here, naming the key, before any work
    for spec in runs[1:]:
        check_spec(spec)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vt_ray.cluster.session import ray_session

    results: list[dict[str, Any]] = []
    report = {
        "benchmark": "learning_curve",
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.learning_curve", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "chance": CHANCE,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": results,
    }
    started = time.perf_counter()
    with ray_session(first):
        for spec in runs:
            print(f"[learning] options {spec.option_order}, seed {spec.seed} -> {spec.out}", flush=True)
            results.append(run_learning(spec))
            report["total_s"] = round(time.perf_counter() - started, 1)
            (out / "learning_curve.json").write_text(json.dumps(report, indent=1) + "\n")
            print(table(results), flush=True)
    report["plots"] = [p for order in args.option_order for p in plot(results, order, out)]
    (out / "learning_curve.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"wrote {out / 'learning_curve.json'} and {', '.join(report['plots'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
