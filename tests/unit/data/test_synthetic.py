"""Synthetic data: valid schema, parseable gold traces, balanced answers, determinism, and answers that are
really in the pixels (so a model must look at the video)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import numpy as np

from vt_ray.data.schema import OPTION_LETTERS, read_samples
from vt_ray.data.synthetic import COLORS, make_synthetic_dataset
from vt_ray.trace import parse_trace


def _samples(d: Path) -> list:
    return read_samples(d / "train.jsonl") + read_samples(d / "val.jsonl")


def _frame_at(path: Path, t: float) -> np.ndarray:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    return frames[min(int(t * 8), len(frames) - 1)]


def _colour_pixels(frame: np.ndarray, colour: str) -> int:
    return int((np.abs(frame.astype(int) - COLORS[colour]).max(axis=-1) < 45).sum())


def test_files_and_schema(synthetic_dir: Path) -> None:
    train, val = read_samples(synthetic_dir / "train.jsonl"), read_samples(synthetic_dir / "val.jsonl")
    assert len(train) == 13 and len(val) == 3
    assert len({s.uid for s in train + val}) == 16
    for s in train + val:
        assert (synthetic_dir / s.video).stat().st_size > 1000
        assert len(s.options) == 4 and len(set(s.options)) == 4
        assert s.windows and len(s.captions) == len(s.windows)
        assert all(0 <= a <= b <= s.duration for a, b in s.windows)


def test_gold_traces_parse_cleanly_and_match_the_annotations(synthetic_dir: Path) -> None:
    for s in _samples(synthetic_dir):
        parsed = parse_trace(s.trace)
        assert parsed.violations == (), (s.uid, parsed.violations)
        assert parsed.answer == s.answer
        assert parsed.captions == s.captions
        assert parsed.complete_triples() == len(s.windows)
        for (ps, pe), (gs, ge) in zip(parsed.windows, s.windows):  # MM:SS in the trace: whole seconds
            assert abs(ps - gs) <= 0.5 and abs(pe - ge) <= 0.5


def test_answers_are_balanced_per_split(tmp_path: Path) -> None:
    stats = make_synthetic_dataset(tmp_path, num_videos=40, seed=3)
    for split in ("train", "val"):
        counts = Counter(s.answer for s in read_samples(tmp_path / f"{split}.jsonl"))
        assert set(counts) <= set("ABCD")
        assert max(counts.values()) - min(counts.get(x, 0) for x in "ABCD") <= 1, counts
        assert stats["splits"][split]["answers"] == dict(sorted(counts.items()))
    kinds = Counter(s.category for s in read_samples(tmp_path / "train.jsonl"))
    assert set(kinds) == {"sequence", "count", "color_change", "direction"}


def test_same_seed_same_dataset(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path / "a", num_videos=6, seed=11)
    make_synthetic_dataset(tmp_path / "b", num_videos=6, seed=11)
    make_synthetic_dataset(tmp_path / "c", num_videos=6, seed=12)
    a, b, c = ((tmp_path / d / "train.jsonl").read_text() for d in "abc")
    assert a == b and a != c


def test_answers_are_in_the_pixels(synthetic_dir: Path) -> None:
    """The correct colour is on screen in the last evidence window, and the moving shape moves the right way."""
    checked = Counter()
    for s in _samples(synthetic_dir):
        correct = s.options[OPTION_LETTERS.index(s.answer)]
        path = synthetic_dir / s.video
        if s.category in ("sequence", "color_change"):
            start, end = s.windows[-1]
            assert _colour_pixels(_frame_at(path, (start + end) / 2), correct) > 100, s.uid
            checked[s.category] += 1
        elif s.category == "direction":
            start, end = s.windows[0]
            colour = s.question.split("the ")[1].split()[0]
            centres = []
            for t in (start + 0.3, end - 0.3):
                ys, xs = np.nonzero(np.abs(_frame_at(path, t).astype(int) - COLORS[colour]).max(axis=-1) < 45)
                centres.append((xs.mean(), ys.mean()))
            dx, dy = centres[1][0] - centres[0][0], centres[1][1] - centres[0][1]
            moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert moved == correct, s.uid
            checked["direction"] += 1
        elif s.category == "count":
            assert int(correct) == s.extra["left_to_right"]
            checked["count"] += 1
    assert all(checked[k] >= 1 for k in ("sequence", "color_change", "direction", "count")), checked


def test_cli_writes_dataset(tmp_path: Path) -> None:
    from vt_ray.cli import main

    assert main(["make-synthetic-data", "--out", str(tmp_path), "--num-videos", "4", "--seed", "1"]) == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["train"]["samples"] + stats["splits"]["val"]["samples"] == 4
