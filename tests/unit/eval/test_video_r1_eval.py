"""Evaluation on Video-R1's eval files: the loader, per-item scoring by Video-R1's definitions, and the
results written in Video-R1's output shape (results + final_acc with mean_acc / mean_mra)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vt_ray.config.loader import load_config
from vt_ray.eval.loaders import BenchmarkFormatError, load_benchmark
from vt_ray.eval.metrics import score_item
from vt_ray.eval.video_r1_output import write_outputs

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "formats" / "video_r1_eval.json"


@pytest.fixture
def eval_file(tmp_path: Path) -> Path:
    shutil.copyfile(FIXTURE, tmp_path / "eval_videomme.json")
    return tmp_path / "eval_videomme.json"


def test_loader_reads_records_and_refuses_a_bad_one(eval_file: Path, tmp_path: Path) -> None:
    samples = load_benchmark("video_r1", eval_file)  # videos need not exist: the runner skips missing ones
    assert [(s.answer_type, s.answer) for s in samples] == [("multiple_choice", "B"), ("regression", "4")]
    rows = json.loads(eval_file.read_text())
    rows[1]["solution"] = "4"
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    with pytest.raises(BenchmarkFormatError, match="record 1: no_answer_tags"):
        load_benchmark("video_r1", tmp_path / "bad.json")


def test_output_file_in_video_r1_shape(eval_file: Path, tmp_path: Path) -> None:
    mc, reg = load_benchmark("video_r1", eval_file)
    results = [
        score_item(reg, "<think>about 4.4 s</think><answer>4.4</answer>", benchmark="VideoMME", frames=16),
        score_item(mc, "<think>two move</think><answer>B</answer>", benchmark="VideoMME", frames=16),
    ]
    assert results[0].extra["video_r1_reward"] == pytest.approx(0.8)  # MRA: rel 0.1 passes 0.50..0.85
    assert results[1].correct and not results[0].correct
    [path] = write_outputs(tmp_path / "out", "VideoMME", [mc, reg], results)
    assert path.name == "eval_VideoMME_16frames_greedy_output.json"
    data = json.loads(path.read_text())
    assert set(data) == {"results", "final_acc"}
    first, second = data["results"]  # in the eval file's order
    assert first["videoID"] == "clip" and first["problem_type"] == "multiple choice"  # the record is kept
    assert (first["prediction"], first["reward"], first["correct"]) == ("B", 1.0, True)
    assert first["process"] == "<think>two move</think>" and first["output"].endswith("</answer>")
    assert second["reward"] == pytest.approx(0.8)
    assert data["final_acc"] == [{"mean_acc": 1.0, "mean_mra": pytest.approx(0.8)}]


def test_eval_recipe_loads_with_video_r1_settings() -> None:
    cfg = load_config(ROOT / "recipes" / "eval_video_r1.yaml", [])
    assert [b.format for b in cfg.eval.benchmarks] == ["video_r1"] * 6
    assert [b.name for b in cfg.eval.benchmarks] == ["mvbench", "tempcompass", "videomme", "videommmu",
                                                     "vsibench", "mmvu"]
    assert (cfg.eval.greedy, cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_tokens) == (False, 0.1, 0.001, 1024)
    assert cfg.prompt.style == "video_r1_eval"
