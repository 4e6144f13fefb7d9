"""The learnable colour task: the answer is in the pixels, letters are balanced, SFT targets carry no answer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vt_ray.data.learnable import TASK_COLORS, LearnableTaskConfig, make_learnable_dataset
from vt_ray.data.schema import OPTION_LETTERS, read_samples
from vt_ray.data.synthetic import COLORS
from vt_ray.eval.stats import format_accuracy, wilson_interval
from vt_ray.learning import read_curve, summarize
from vt_ray.trace import parse_trace
from vt_ray.video.reader import read_video


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("learnable")
    cfg = LearnableTaskConfig(num_train=32, num_val=16, option_order="shuffled", seed=3)
    make_learnable_dataset(root / "real", cfg)
    make_learnable_dataset(root / "blank", cfg, blank=True)
    return root / "real", root / "blank"


def _dominant(frames: np.ndarray) -> str:
    """The task colour nearest to the median pixel (the colour covering most of the frame)."""
    median = np.median(frames.reshape(-1, 3), axis=0)
    return min(TASK_COLORS, key=lambda c: float(np.abs(median - np.array(COLORS[c])).sum()))


def test_the_answer_is_the_colour_that_fills_the_frames(shuffled: tuple[Path, Path]) -> None:
    from vt_ray.config.schema import VideoConfig

    real, _ = shuffled
    video_cfg = VideoConfig(num_frames=8, max_frames=8, max_pixels=12544)
    for s in read_samples(real / "val.jsonl")[:6]:
        frames = read_video(str(real / s.video), video_cfg).frames
        gold = s.options[OPTION_LETTERS.index(s.answer)]
        assert _dominant(frames) == gold == s.extra["color"]
        assert parse_trace(s.trace).violations == ()  # the SFT target is a valid trace


def test_letters_balanced_and_sft_answers_carry_no_colour_association(shuffled: tuple[Path, Path]) -> None:
    real, _ = shuffled
    train = read_samples(real / "train.jsonl")
    assert Counter(s.answer for s in train) == {x: 8 for x in "ABCD"}
    sft_letters = Counter((s.extra["color"], parse_trace(s.trace).answer) for s in train)
    assert sft_letters == {(c, x): 2 for c in TASK_COLORS for x in "ABCD"}  # uniform given the colour
    assert len({tuple(s.options) for s in train}) > 4  # shuffled per sample


def test_fixed_order_makes_the_letter_a_function_of_the_colour(tmp_path: Path) -> None:
    make_learnable_dataset(tmp_path, LearnableTaskConfig(num_train=16, num_val=8, option_order="fixed"))
    for s in read_samples(tmp_path / "train.jsonl"):
        assert s.options == list(TASK_COLORS)
        assert s.answer == OPTION_LETTERS[TASK_COLORS.index(s.extra["color"])]


def test_blank_control_has_the_same_samples_and_no_pixels(shuffled: tuple[Path, Path]) -> None:
    from vt_ray.config.schema import VideoConfig

    real, blank = shuffled
    a, b = read_samples(real / "val.jsonl"), read_samples(blank / "val.jsonl")
    strip = lambda s: (s.uid, s.question, s.options, s.answer, s.trace)  # noqa: E731
    assert [strip(s) for s in a] == [strip(s) for s in b]
    frames = read_video(str(blank / b[0].video), VideoConfig(num_frames=8, max_frames=8, max_pixels=12544)).frames
    assert frames.std() < 2.0  # uniform: nothing to see


def test_train_and_val_videos_differ(shuffled: tuple[Path, Path]) -> None:
    real, _ = shuffled
    train = {(real / s.video).read_bytes() for s in read_samples(real / "train.jsonl")}
    assert not any((real / s.video).read_bytes() in train for s in read_samples(real / "val.jsonl"))


@pytest.mark.parametrize("kwargs", [{"num_train": 30}, {"num_val": 0}, {"option_order": "random"}])
def test_bad_task_sizes_and_orders_fail_clearly(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LearnableTaskConfig(**kwargs)


def test_wilson_interval_brackets_the_estimate_and_shrinks_with_n() -> None:
    lo, hi = wilson_interval(16, 64)
    assert lo < 0.25 < hi and 0.15 < lo and hi < 0.37
    lo2, hi2 = wilson_interval(160, 640)
    assert hi2 - lo2 < (hi - lo) / 2
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert format_accuracy(0.5, 64).startswith("0.500 [")


def test_curve_summary_tells_a_rise_from_no_rise(tmp_path: Path) -> None:
    import json

    def write(accs: list[float]) -> Path:
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.jsonl"
        rows = [{"step": 5 * i, "val/accuracy": a, "val/samples": 64.0, "time/elapsed_s": 10.0 * i,
                 "reward/total": 1.0} for i, a in enumerate(accs)]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 9")  # truncated last line
        return path

    rise = summarize(read_curve(write([0.25, 0.5, 0.95, 0.97])), target=0.9)
    assert rise["learned"] and rise["target_step"] == 10 and rise["target_elapsed_s"] == 20.0
    flat = summarize(read_curve(write([0.25, 0.27, 0.22, 0.28])), target=0.9)
    assert not flat["learned"] and flat["target_step"] is None and flat["verdict"].startswith("NO RISE")


def test_benchmark_refuses_non_integer_seeds_and_steps_before_any_work(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.learning_curve import parse_args
    from vt_ray.common.errors import ConfigError
    from vt_ray.learning import LearningSpec, check_spec

    with pytest.raises(SystemExit):
        parse_args(["--seeds", "zero"])
    assert "--seeds" in capsys.readouterr().err
    for override, key in (("trainer.total_steps=1.5", "trainer.total_steps"), ("run.seed=abc", "run.seed")):
        with pytest.raises(ConfigError, match=key):
            check_spec(LearningSpec(out=tmp_path, overrides=[override]))
    assert not any(tmp_path.iterdir())  # nothing was built


def test_order_task_needs_the_order_of_the_frames(tmp_path: Path) -> None:
    """Temporal-order variant: both option colours fill the frames (half each), the answer is the first one, so
    the set of colours seen gives at most 1 in 2 and shuffled frames give no more than that."""
    from vt_ray.config.schema import VideoConfig

    make_learnable_dataset(tmp_path, LearnableTaskConfig(num_train=48, num_val=16, task="order", seed=1))
    train = read_samples(tmp_path / "train.jsonl")
    assert Counter(s.answer for s in train) == {x: 12 for x in "ABCD"}
    assert len({(s.extra["color"], s.extra["then"]) for s in train}) == 12  # every ordered pair of colours
    sft_letters = Counter((s.extra["color"], parse_trace(s.trace).answer) for s in train)
    assert sft_letters == {(c, x): 3 for c in TASK_COLORS for x in "ABCD"}  # the SFT letter is no hint
    video_cfg = VideoConfig(num_frames=8, max_frames=8, max_pixels=12544)
    for s in train[:4]:
        assert s.extra["then"] != s.extra["color"] and s.question == "Which colour fills the screen first?"
        frames = read_video(str(tmp_path / s.video), video_cfg).frames
        assert _dominant(frames[:4]) == s.extra["color"] == s.options[OPTION_LETTERS.index(s.answer)]
        assert _dominant(frames[4:]) == s.extra["then"]
        assert parse_trace(s.trace).violations == ()
    with pytest.raises(ValueError, match="task must be one of"):
        LearnableTaskConfig(task="count")


def test_shuffled_options_are_graded_on_letters_only_unless_overridden(tmp_path: Path) -> None:
    """With shuffled options an answer that names the colour skips the binding the task tests: letters only."""
    from vt_ray.learning import LearningSpec, learning_recipe

    assert learning_recipe(LearningSpec(out=tmp_path, option_order="shuffled")).reward.answer_rules == "video_r1"
    assert learning_recipe(LearningSpec(out=tmp_path)).reward.answer_rules == "sample"  # fixed: the measured runs
    overridden = LearningSpec(out=tmp_path, option_order="shuffled", overrides=["reward.answer_rules=sample"])
    assert learning_recipe(overridden).reward.answer_rules == "sample"


def test_the_summary_reports_accuracy_by_gold_letter_when_validation_logged_it(tmp_path: Path) -> None:
    """A policy that reads the first and last options only (0.5 overall) shows in the per-letter figures."""
    import json

    from benchmarks.learning_curve import _by_letter

    row = {"step": 0, "val/accuracy": 0.5, "val/samples": 64.0, "time/elapsed_s": 1.0,
           **{f"val/accuracy_letter/{g}": v for g, v in zip("ABCD", (0.75, 0.25, 0.25, 0.75))}}
    (tmp_path / "new.jsonl").write_text(json.dumps(row) + "\n")
    summary = summarize(read_curve(tmp_path / "new.jsonl"), target=0.8)
    assert summary["final_accuracy_by_gold_letter"] == {"A": 0.75, "B": 0.25, "C": 0.25, "D": 0.75}
    assert _by_letter(summary) == "  (by gold letter: A 0.75 B 0.25 C 0.25 D 0.75)"
    older = {k: v for k, v in row.items() if "/accuracy_letter/" not in k}  # metrics from before the key
    (tmp_path / "old.jsonl").write_text(json.dumps(older) + "\n")
    old_summary = summarize(read_curve(tmp_path / "old.jsonl"), target=0.8)
    assert old_summary["final_accuracy_by_gold_letter"] == {} and _by_letter(old_summary) == ""
