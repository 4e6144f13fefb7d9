"""Step time of the trainer modes side by side: sync against one_step_off and async, on the tiny recipe.

    .venv/bin/python -m benchmarks.async_modes --tokens 64 256 --modes sync one_step_off async2

For each generation length and mode, ``--repeats`` runs (interleaved across modes, in one run of this script:
a shared machine's load drifts) of ``python -m vt_ray train`` on the tiny recipe with issue 24's settings
(about 32 training prompts, G = 4, 4 prompts per step, lr 1e-4, KL 0.04, 12 steps). From every run's
metrics.jsonl: the median over steps 3..N of the step time, responses/s and generated tokens/s, the rollout
phase alone and log-probs + update alone (the essential compute; in sync mode the step's overhead above them),
the seconds the learners waited for rollouts, and the whole command's wall time; each figure is the median
over the repeats. Writes ``OUT/async_modes.json`` and prints a table. ``key=value`` arguments override the
recipe for every run (e.g. ``rollout.min_tokens=64 rollout.ignore_eos=true``). ``--learning`` plots
learning-benchmark runs of different modes instead. Nothing here asserts: the figures are what they are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES: dict[str, tuple[str, ...]] = {
    "sync": ("trainer.mode=sync",),
    "one_step_off": ("trainer.mode=one_step_off",),
    "async2": ("trainer.mode=async", "trainer.max_staleness=2"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.async_modes", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every run")
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 256], help="rollout.max_tokens values")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2,
                   help="runs per mode and length, interleaved (A B C A B C): a shared machine's load drifts")
    p.add_argument("--skip-steps", type=int, default=2, help="steps left out of the medians (warm-up)")
    p.add_argument("--out", default="outputs/bench/async_modes")
    p.add_argument("--learning", nargs="+", metavar="LABEL=JSON", default=None,
                   help="run nothing: plot held-out accuracy against step and seconds from learning_curve.json "
                        "files of benchmarks.learning_curve runs (e.g. sync=... one_step_off=...) into OUT")
    return p.parse_args(argv)


def plot_learning(pairs: list[str], out: Path) -> dict[str, Any]:
    """Held-out accuracy of learning-benchmark runs in different modes, against GRPO step and wall clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    summary: dict[str, Any] = {}
    for pair in pairs:
        label, _, path = pair.partition("=")
        if not path:
            raise SystemExit(f"--learning wants LABEL=JSON, got {pair!r}")
        for run in json.loads(Path(path).read_text())["runs"]:
            curve, name = run["grpo"]["curve"], f"{label} (seed {run['seed']})"
            by_step.plot(curve["val_step"], curve["val_accuracy"], marker="o", label=name)
            by_time.plot(curve["val_elapsed_s"], curve["val_accuracy"], marker="o", label=name)
            s = run["grpo"]["summary"]
            summary[name] = {"final_accuracy": s["final_accuracy"], "target_step": s["target_step"],
                             "target_elapsed_s": s["target_elapsed_s"], "grpo_s": run["times_s"]["grpo"],
                             "median_step_s": statistics.median(curve["step_s"][2:] or curve["step_s"])}
    for ax, xlabel in ((by_step, "GRPO step"), (by_time, "seconds since the GRPO run started")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (greedy, 64 videos)")
        ax.axhline(0.25, color="grey", linestyle=":", label="chance")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "async_learning.png", dpi=110)
    (out / "async_learning.json").write_text(json.dumps(summary, indent=1))
    for name, row in summary.items():
        reached = (f"step {row['target_step']} / {row['target_elapsed_s']:.0f} s" if row["target_step"] is not None
                   else "never")
        print(f"{name}: final {row['final_accuracy']:.3f}, target reached at {reached}, GRPO {row['grpo_s']:.0f} s, "
              f"median step {row['median_step_s']:.2f} s")
    return summary


def ensure_inputs(out: Path) -> tuple[Path, Path]:
    """The tiny model and about 32 training prompts (made once per --out)."""
    model, data = out / "model", out / "data"
    if not (model / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "vt_ray", "make-tiny-model", "--out", str(model)], check=True, cwd=ROOT)
    if not (data / "train.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "vt_ray", "make-synthetic-data", "--out", str(data),
                        "--num-videos", "36", "--val-fraction", "0.12"], check=True, cwd=ROOT)
    return model, data


def train_command(model: Path, data: Path, out: Path, name: str, mode: str, tokens: int, steps: int,
                  overrides: list[str]) -> list[str]:
    """``vt_ray train`` on the tiny recipe with issue 24's settings, in ``mode``, writing ``OUT/runs/NAME``."""
    return [sys.executable, "-m", "vt_ray", "train", f"recipe={ROOT / 'recipes/tiny_cpu.yaml'}",
            f"model.path={model}", f"data.train_file={data / 'train.jsonl'}", f"data.val_file={data / 'val.jsonl'}",
            f"run.output_dir={out / 'runs'}", f"run.name={name}", f"trainer.total_steps={steps}",
            f"trainer.save_every={steps}", "trainer.val_samples=1", "trainer.wandb_mode=disabled",
            "trainer.write_report=false", f"rollout.max_tokens={tokens}", *MODES[mode], *overrides]


def step_rows(out: Path, name: str) -> list[dict[str, Any]]:
    """The training steps' rows of a finished run's metrics.jsonl."""
    rows = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] >= 1]


def run_one(model: Path, data: Path, out: Path, name: str, mode: str, tokens: int, steps: int,
            overrides: list[str]) -> dict[str, Any]:
    cmd = train_command(model, data, out, name, mode, tokens, steps, overrides)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return {"wall_s": wall, "rows": step_rows(out, name)}


def summarize(rows: list[dict[str, Any]], skip: int) -> dict[str, float]:
    kept = [r for r in rows if r["step"] > skip] or rows

    def med(key: str) -> float:
        return statistics.median(float(r.get(key, 0.0)) for r in kept)

    step = med("time/step_s")
    responses = med("data/responses")
    tokens = statistics.median(float(r["response/length_mean"]) * float(r["data/responses"]) for r in kept)
    essential = med("time/rollout_s") + med("time/reward_s") + med("time/logprobs_s") + med("time/update_s")
    return {
        "step_s": step, "responses_per_s": responses / step, "gen_tok_per_s": tokens / step,
        "rollout_s": med("time/rollout_s"), "reward_s": med("time/reward_s"),
        "logprobs_update_s": med("time/logprobs_s") + med("time/update_s"),
        "weight_sync_s": med("time/weight_sync_s") + med("time/weight_probe_s"),
        "rollout_wait_s": med("time/rollout_wait_s"), "engines_wait_s": med("time/engines_wait_s"),
        "essential_s": essential,
        "overhead_share": step / essential - 1.0, "response_len": med("response/length_mean"),
        "staleness_max": max(float(r.get("rollout/staleness", 0.0)) for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.learning:
        plot_learning(args.learning, out)
        return 0
    model, data = ensure_inputs(out)
    runs: dict[str, list[dict[str, Any]]] = {}
    for tokens in args.tokens:
        for repeat in range(args.repeats):
            for mode in args.modes:
                name = f"{mode}_{tokens}"
                print(f"[async_modes] {name} run {repeat + 1}/{args.repeats}", flush=True)
                run = run_one(model, data, out, f"{name}_r{repeat}", mode, tokens, args.steps, args.overrides)
                runs.setdefault(name, []).append({"wall_s": run["wall_s"], **summarize(run["rows"], args.skip_steps),
                                                  "steps": run["rows"]})
    results: dict[str, Any] = {}
    for name, repeats in runs.items():  # the median over repeats of each run's medians
        mode, _, tokens_text = name.rpartition("_")
        figures = {k: statistics.median(r[k] for r in repeats) for k in repeats[0] if k != "steps"}
        results[name] = {"mode": mode, "max_tokens": int(tokens_text), **figures, "repeats": repeats}
    header = ("| max tokens | mode | s/step | responses/s | gen tok/s | vs sync | rollout s | logprobs+update s | "
              "sync+probe s | learners waited s | overhead vs essential | staleness max | whole run s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results.values():
        base = results.get(f"sync_{r['max_tokens']}")
        ratio = r["responses_per_s"] / base["responses_per_s"] if base else float("nan")
        lines.append(f"| {r['max_tokens']} | {r['mode']} | {r['step_s']:.2f} | {r['responses_per_s']:.2f} | "
                     f"{r['gen_tok_per_s']:.0f} | {ratio:.2f}x | {r['rollout_s']:.2f} | {r['logprobs_update_s']:.2f} | "
                     f"{r['weight_sync_s']:.2f} | {r['rollout_wait_s']:.2f} | {r['overhead_share']:+.0%} | "
                     f"{r['staleness_max']:.0f} | {r['wall_s']:.0f} |")
    table = "\n".join(lines)
    print(table, flush=True)
    write_report(out / "async_modes.json", {"steps": args.steps, "skip_steps": args.skip_steps,
                                            "overrides": args.overrides}, table, results)
    return 0


def write_report(path: Path, settings: dict[str, Any], table: str, runs: dict[str, Any]) -> None:
    """The benchmark's JSON: its settings with the machine and the load at the end, the table, every run."""
    machine = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "load_avg_end": os.getloadavg()}
    path.write_text(json.dumps({"settings": {**settings, **machine}, "table": table, "runs": runs}, indent=1))
    print(f"[{path.stem}] wrote {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
