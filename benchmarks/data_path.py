"""Pixels through the driver against pixels by reference, on the same Ray roles in one run (issue 17, item 2).

* ``driver`` (old, ``trainer.pixel_path: driver``): rollout workers return decoded frames, the driver runs the
  processor and puts float32 ``pixel_values_videos``, one copy per response, into every learner call's shards.
* ``rollout`` (new, the default): each rollout worker encodes its prompts once (uint8 patches) as returns of its
  own call, which the driver owns and never fetches; learners fetch and normalise them (docs/data-path.md).

One GRPO trainer (tiny model, HF rollout engine: the data path does not depend on the engine; 2 FSDP learner
ranks, a reference model, 1 scorer), real ``train_step``s. Per frame count the roles start once (the rollout
workers' frame sampling is fixed at start); per G and repetition both paths run alternately, each step after
resetting the driver's peak RSS. Printed and written to JSON per step: step time, the driver's peak RSS above
its resting RSS, the object store's peak and what is left in it 1 s after the step (Ray frees asynchronously;
growth over steps would be a leak).

Run: ``.venv/bin/python -m benchmarks.data_path`` (defaults: 224 x 224 synthetic videos, frames 8 and 16, G 4
and 8, 4 prompts per step, 2 repetitions: a few minutes on 2 cores). ``--frames 8 --groups 4 --reps 1`` is a
quick check. ``--modes rollout`` measures the new path alone (the driver path's steps leave the driver's
allocator holding freed memory, which raises its resting RSS for the steps after them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.weight_sync import PlasmaPeak, _plasma_mib, read_peak, reset_peak

ROOT = Path(__file__).resolve().parents[1]
MODES = ("driver", "rollout")


def _set(trainer: Any, mode: str, group: int) -> None:
    """The path and G of the next steps: the trainer's recipe (frozen) replaced; the roles keep theirs (neither
    setting is read by an actor)."""
    from dataclasses import replace

    cfg = trainer.cfg
    trainer.cfg = replace(cfg, trainer=replace(cfg.trainer, pixel_path=mode), rollout=replace(cfg.rollout, n=group))
    trainer.tc = trainer.cfg.trainer


def measure_frames(frames: int, args: argparse.Namespace, work: Path, model_dir: Path, data_dir: Path
                   ) -> list[dict[str, Any]]:
    """Every (G, mode, repetition) step on one set of roles started for ``frames`` frames per video."""
    from vt_ray.cluster.session import init_ray
    from vt_ray.config.loader import load_config
    from vt_ray.trainer.driver import GRPOTrainer

    pixels = args.size * args.size
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [
        f"model.path={model_dir}", f"data.train_file={data_dir / 'train.jsonl'}",
        f"data.val_file={data_dir / 'none.jsonl'}", f"run.output_dir={work / 'runs'}", f"run.name=f{frames}",
        "rollout.backend=hf", "rollout.max_tokens=16", "rollout.probe_every=0", "trainer.wandb_mode=disabled",
        f"trainer.prompts_per_step={args.prompts}", f"video.num_frames={frames}", f"video.max_frames={frames}",
        f"video.max_pixels={pixels}", "data.max_prompt_tokens=4096", "rollout.max_model_len=8192",
        "trainer.save_rollouts_every=0",
    ])
    cluster = init_ray(cfg)
    trainer = GRPOTrainer(cfg)
    rows: list[dict[str, Any]] = []
    try:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        trainer._load_data()
        trainer._start_roles()
        _set(trainer, "rollout", min(args.groups))
        trainer.train_step()  # warm-up, untimed: first-call costs of every role
        for rep in range(args.reps):
            for g in args.groups:
                for mode in args.modes:
                    _set(trainer, mode, g)
                    rest = reset_peak()
                    start = time.perf_counter()
                    with PlasmaPeak() as plasma:
                        metrics = trainer.train_step()
                    step_s = time.perf_counter() - start
                    time.sleep(1.0)  # Ray frees released objects asynchronously (borrowers report back)
                    row = {
                        "frames": frames, "group": g, "mode": mode, "rep": rep,
                        "step_s": step_s,
                        "driver_peak_gib": (read_peak() - rest) / 2**30,
                        "driver_rest_gib": rest / 2**30,
                        "object_store_peak_mib": plasma.peak_mib,
                        "object_store_added_mib": plasma.peak_mib - plasma.start_mib,
                        "object_store_after_mib": _plasma_mib(),
                        "logprobs_s": metrics.get("time/logprobs_s", 0.0),
                        "update_s": metrics.get("time/update_s", 0.0),
                        "responses": metrics["data/responses"],
                    }
                    rows.append(row)
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)
    finally:
        trainer.shutdown()
        if cluster is not None:
            cluster.stop()
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (frames, G, mode)."""
    out = []
    keys = ("step_s", "driver_peak_gib", "object_store_added_mib", "object_store_after_mib", "logprobs_s")
    for frames in sorted({r["frames"] for r in rows}):
        for g in sorted({r["group"] for r in rows}):
            for mode in MODES:
                got = [r for r in rows if (r["frames"], r["group"], r["mode"]) == (frames, g, mode)]
                if got:
                    out.append({"frames": frames, "group": g, "mode": mode,
                                **{k: statistics.median(r[k] for r in got) for k in keys}})
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| frames | G | path | step s | driver peak MiB | object store added MiB | left after step MiB |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['frames']} | {s['group']} | {s['mode']} | {s['step_s']:.2f} | "
                     f"{s['driver_peak_gib'] * 1024:.0f} | {s['object_store_added_mib']:.0f} | "
                     f"{s['object_store_after_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--size", type=int, default=224, help="synthetic video side (pixels) = video.max_pixels")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="one mode alone: the driver's resting RSS is not inflated by the other's steps")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs/bench/data_path")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/data-path/data_path.json")
    args = parser.parse_args(argv)

    from vt_ray.data.synthetic import VideoSpec, make_synthetic_dataset
    from vt_ray.models.tiny import make_tiny_model

    model_dir, data_dir = args.work / "model", args.work / f"data_{args.size}"
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, seed=0)
    if not (data_dir / "train.jsonl").exists():
        make_synthetic_dataset(data_dir, 12, seed=0, val_fraction=0.1, spec=VideoSpec(args.size, args.size))
    rows = [row for frames in args.frames for row in measure_frames(frames, args, args.work, model_dir, data_dir)]
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "summary": summary, "runs": rows}, indent=1) + "\n")
    print(table(summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
