"""benchmarks/scaling.py's pure parts: which settings run, the summary, the planner comparisons, table and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.scaling import (
    Setting,
    axis_deltas,
    compare_with_plan,
    plot,
    prompt_tokens,
    report,
    settings,
    summarise,
)


def test_settings_vary_one_axis_at_a_time_and_calibrate_every_learner_count() -> None:
    base = Setting("small", 8, 4, 2)
    got = settings(base, ["tiny", "small", "big"], [8, 16], [4, 8], [1, 2])
    assert got == [
        ("base", base),
        ("size", Setting("tiny", 8, 4, 2)), ("size", Setting("big", 8, 4, 2)),
        ("frames", Setting("small", 16, 4, 2)),
        ("group", Setting("small", 8, 8, 2)),
        ("learners", Setting("small", 8, 4, 1)),
        ("calibration", Setting("tiny", 8, 4, 1)),  # tiny at 2 learners is already the size axis's point
    ]


def test_prompt_tokens_counts_merged_video_patches_and_text() -> None:
    # 8 frames at 224 x 224: 4 temporal patches x 16 x 16 patches, merged 2 x 2 -> 256 tokens
    assert prompt_tokens(8, 236) == 256 + 236
    assert prompt_tokens(32, 0) == 1024


def _row(axis: str, size: str, frames: int, group: int, learners: int, learner_peak: float, plan_learner: float,
         engine_peak: float, plan_weights: float, kv: float) -> dict[str, Any]:
    step = {"rep": 0, "step_s": 3.0, "rollout_s": 1.0, "reward_s": 0.1, "logprobs_s": 0.5, "update_s": 1.2,
            "weight_sync_s": 0.2, "responses": 16.0, "driver_peak_gib": 0.5, "engine_peak_gib": engine_peak,
            "reward_peak_gib": 0.1, **{f"learner{r}_peak_gib": learner_peak - 0.01 * r for r in range(learners)}}
    return {"axis": axis, "size": size, "frames": frames, "group": group, "learners": learners,
            "parameters": 1e6, "plan_learner_gib": plan_learner, "plan_vllm_weights_gib": plan_weights,
            "engine_kv_gib": kv, "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 1.0, 1.0],
            "steps": [step, {**step, "rep": 1, "step_s": 5.0}]}


def _rows() -> list[dict[str, Any]]:
    return [summarise(r) for r in (
        _row("base", "small", 8, 4, 2, 1.6, 1.0, 1.2, 0.1, 0.1),
        _row("size", "tiny", 8, 4, 2, 0.7, 0.1, 0.9, 0.0, 0.0),
        _row("frames", "small", 16, 4, 2, 2.2, 1.5, 1.3, 0.1, 0.2),
    )]


def test_summary_takes_medians_and_the_largest_learner_rank() -> None:
    row = _rows()[0]
    assert row["step_s"] == pytest.approx(4.0)
    assert row["learner_peak_gib"] == pytest.approx(1.6)  # rank 0; rank 1 is 0.01 lower


def test_planner_comparison_subtracts_the_tiny_models_overhead_and_the_kv_cache() -> None:
    compared = {r["frames"]: r for r in compare_with_plan(_rows()) if r["size"] == "small"}
    # overhead = tiny's 0.7 measured - 0.1 planned = 0.6; small: 1.6 - 0.6 = 1.0 against 1.0 planned
    assert compared[8]["learner_model_gib"] == pytest.approx(1.0)
    assert compared[8]["learner_ratio"] == pytest.approx(1.0)
    # engine overhead = 0.9 - 0 - 0; small: 1.2 - 0.9 - 0.1 kv = 0.2 against 0.1 planned weights
    assert compared[8]["engine_ratio"] == pytest.approx(2.0)


def test_axis_deltas_compare_growth_from_the_base_point() -> None:
    deltas = {d["axis"]: d for d in axis_deltas(_rows())}
    assert deltas["frames"]["learner_delta_gib"] == pytest.approx(0.6)
    assert deltas["frames"]["learner_delta_ratio"] == pytest.approx(0.6 / 0.5)
    assert deltas["frames"]["engine_delta_ratio"] is None  # the weights do not move with frames


def test_report_prints_every_setting_and_draws_one_plot_per_axis_with_two_points(tmp_path: Path) -> None:
    text = report({"summary": _rows()}, tmp_path)
    assert text.count("| small |") >= 2 and "| tiny |" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaling_frames.png", "scaling_size.png"]
    assert plot([_rows()[0]], tmp_path / "none") == []  # the base point alone: nothing to draw
