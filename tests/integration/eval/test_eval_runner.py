"""The eval command end to end on the tiny model: synthetic held-out split as a project-format benchmark, a
frame-count sweep through a vLLM rollout actor, a report, and resume (a finished item is not run again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vt_ray.config.loader import load_config
from vt_ray.eval.records import read_results

ROOT = Path(__file__).resolve().parents[3]


def _cfg(tiny_model_dir: Path, synthetic_dir: Path, out: Path, bench_path: Path):
    return load_config(ROOT / "recipes/tiny_cpu.yaml", [
        f"model.path={tiny_model_dir}",
        f"eval.output_dir={out}",
        "eval.frame_counts=[4,8]",
        "eval.max_tokens=32",
        f"eval.benchmarks=[{{name: synthetic-heldout, format: project, path: '{bench_path}'}}]",
    ])


def test_missing_benchmark_file_is_named(tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    from vt_ray.eval.runner import evaluate

    cfg = _cfg(tiny_model_dir, synthetic_dir, tmp_path / "eval", tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        evaluate(cfg, rollout_group=object())


@pytest.mark.slow
def test_eval_sweep_report_and_resume(tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    import ray

    from vt_ray.eval.runner import evaluate

    out = tmp_path / "eval"
    cfg = _cfg(tiny_model_dir, synthetic_dir, out, synthetic_dir / "val.jsonl")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = evaluate(cfg, num_workers=1)
        items = read_results(out / "results.jsonl")
        assert sorted({i.frames for i in items}) == [4, 8]
        assert len(items) == 2 * 3  # 3 held-out videos x 2 frame counts
        assert {i.extra["frames_used"] for i in items} == {4, 8}
        # What the run report's viewer shows next to each response: the video and the frames the model saw.
        assert all(len(i.extra["frame_indices"]) == len(i.extra["frame_times"]) == i.frames for i in items)
        from vt_ray.report.run_data import load_run
        from vt_ray.report.viewer import build_viewer

        view = build_viewer([], load_run(tmp_path, eval_dirs=[out]).evals)
        assert view.responses == 6 and view.problems == []
        assert all(len(view.frames[g["frames_key"]]) == len(g["frame_indices"]) for g in view.groups)
        assert summary["run"]["generated_now"] == 6
        assert (out / "report.md").read_text().count("synthetic-heldout") >= 1
        assert (out / "plots").is_dir() and any((out / "plots").glob("*.png"))
        saved = json.loads((out / "summary.json").read_text())
        assert "accuracy" in saved and "grounding" in saved
        again = evaluate(cfg, num_workers=1)  # resume: nothing left to generate
        assert again["run"]["generated_now"] == 0
        assert len(read_results(out / "results.jsonl")) == 6
    finally:
        ray.shutdown()
