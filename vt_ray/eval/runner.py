"""Evaluate a checkpoint on the recipe's benchmarks through rollout actors (vLLM), resumably.

For each benchmark and each frame count of the sweep, items not yet in ``results.jsonl`` are generated in
chunks across the rollout workers and scored with :func:`vt_ray.eval.metrics.score_item`; every chunk is
appended as soon as it is scored, so a killed evaluation resumes where it stopped and never re-runs a finished
(benchmark, uid, frames). Unreadable or over-long videos are recorded in ``skipped.jsonl`` (and not retried).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from vt_ray.common.progress import Progress, echo
from vt_ray.config.schema import RecipeConfig
from vt_ray.eval.loaders import load_benchmark
from vt_ray.eval.metrics import score_item
from vt_ray.eval.records import iter_results, read_results, write_results
from vt_ray.eval.report import ReportOptions, build_report
from vt_ray.rollout.types import SamplingSettings

CHUNK = 32  # items per round trip: progress is saved at least this often


def eval_sampling(cfg: RecipeConfig) -> SamplingSettings:
    e = cfg.eval
    temperature = 0.0 if e.greedy else e.temperature
    return SamplingSettings(n=1, temperature=temperature, top_p=1.0 if e.greedy else e.top_p,
                            max_tokens=e.max_tokens, stop=list(cfg.rollout.stop))


def viewer_extras(sample: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """What the run report's rollout viewer shows next to an eval response: the video and the frames seen."""
    indices = [int(i) for i in meta.get("frames_indices") or []]
    fps = float(meta.get("fps") or 0.0)
    return {"video": sample.video, "question": sample.question, "options": list(sample.options),
            "duration": sample.duration if sample.duration is not None else meta.get("duration"),
            "frame_indices": indices, "frame_times": [round(i / fps, 3) for i in indices] if fps > 0 else []}


def _skipped_keys(path: Path) -> set[tuple[str, str, int]]:
    if not path.is_file():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return {(r["benchmark"], r["uid"], r["frames"]) for r in rows}


def evaluate(cfg: RecipeConfig, rollout_group: Any = None, num_workers: int | None = None) -> dict[str, Any]:
    """Run (or finish) the evaluation and write the report; returns the summary. Uses ``rollout_group`` when
    given (e.g. the trainer's engines), else starts one on the current Ray cluster for ``model.path``."""
    out = Path(cfg.eval.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path, skipped_path = out / "results.jsonl", out / "skipped.jsonl"
    done = {r.key() for r in iter_results(results_path)} if results_path.is_file() else set()
    done |= _skipped_keys(skipped_path)
    benches = [(b, load_benchmark(b.format, b.path, b.video_root or None, limit=b.limit)) for b in cfg.eval.benchmarks]
    owned = rollout_group is None
    if owned:
        from vt_ray.rollout.group import RolloutGroup

        rollout_group = RolloutGroup(cfg, num_workers=num_workers or cfg.resources.rollout.num_workers,
                                     num_cpus=cfg.resources.rollout.cpus_per_worker,
                                     num_gpus=cfg.resources.rollout.gpus_per_worker)
    sampling = eval_sampling(cfg)
    start, generated, correct = time.perf_counter(), 0, 0
    total = sum((b.name, s.uid, f) not in done
                for b, samples in benches for f in cfg.eval.frame_counts for s in samples)
    bar = Progress("eval", total, unit="item")
    try:
        for bench, samples in benches:
            for frames in cfg.eval.frame_counts:
                video = dataclasses.replace(cfg.video, num_frames=frames, max_frames=max(frames, cfg.video.max_frames),
                                            min_frames=min(cfg.video.min_frames, frames))
                todo = [s for s in samples if (bench.name, s.uid, frames) not in done]
                by_uid = {s.uid: s for s in todo}
                for i in range(0, len(todo), CHUNK):
                    batch = rollout_group.generate(todo[i : i + CHUNK], sampling, video)
                    items = []
                    for r in batch.results:
                        item = score_item(by_uid[r.uid], r.completions[0].text, benchmark=bench.name, frames=frames)
                        item.extra.update(prompt_tokens=len(r.prompt_token_ids),
                                          response_tokens=len(r.completions[0].token_ids),
                                          frames_used=len(r.video_metadata.get("frames_indices", [])),
                                          **viewer_extras(by_uid[r.uid], r.video_metadata))
                        items.append(item)
                    write_results(results_path, items, append=True)
                    with skipped_path.open("a") as f:
                        for s in batch.skipped:
                            f.write(json.dumps({"benchmark": bench.name, "uid": s.uid, "frames": frames,
                                                "reason": s.reason, "detail": s.detail}) + "\n")
                    generated += len(items)
                    correct += sum(item.correct for item in items)
                    bar.advance(len(items) + len(batch.skipped), acc=correct / max(generated, 1))
                    echo(f"[eval] {bench.name} @ {frames} frames: {min(i + CHUNK, len(todo))}/{len(todo)}")
    finally:
        bar.close()
        if owned:
            rollout_group.shutdown()
    all_results = read_results(results_path) if results_path.is_file() else []
    summary = build_report(all_results, out, ReportOptions.from_config(cfg.eval))
    for bench, samples in benches:
        if bench.format == "video_r1":  # also in Video-R1's own output shape, so its users can diff
            from vt_ray.eval.video_r1_output import write_outputs

            paths = write_outputs(out, bench.name, samples, all_results)
            summary.setdefault("video_r1_outputs", {})[bench.name] = [str(p) for p in paths]
    summary["run"] = {"generated_now": generated, "seconds": round(time.perf_counter() - start, 1),
                      "skipped_total": len(_skipped_keys(skipped_path)), "model": cfg.model.path}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary
