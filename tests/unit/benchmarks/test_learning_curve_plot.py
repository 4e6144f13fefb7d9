"""The learning benchmark's curves and plots: the caption-similarity curve is read, and a JSON written before it
existed (``--combine`` of older runs) still plots."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.learning_curve import plot
from vt_ray.learning import read_curve


def _metrics(path: Path) -> Path:
    rows = []
    for i in range(4):
        rows.append({"step": i + 1, "reward/total": 1.0 + i / 4, "time/elapsed_s": 2.0 * i, "response/length_mean": 47})
        rows.append({"step": i * 2, "val/accuracy": 0.25 + i / 8, "val/accuracy_letter": 0.25 + i / 8,
                     "val/samples": 64.0, "val/caption_similarity": 1.0 - i / 20, "time/elapsed_s": 2.0 * i})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_the_caption_curve_is_read_and_older_json_without_it_still_plots(tmp_path: Path) -> None:
    curve = read_curve(_metrics(tmp_path / "metrics.jsonl"))
    assert curve["val_caption_similarity"] == [1.0, 0.95, 0.9, 0.85]  # the seeing, step by step
    older = {k: v for k, v in curve.items() if k != "val_caption_similarity"}
    results = [{"seed": s, "option_order": "shuffled", "grpo": {"curve": c}} for s, c in ((0, curve), (1, older))]
    written = plot(results, "shuffled", tmp_path)
    assert [Path(p).name for p in written] == ["learning_curve_shuffled.png", "learning_curve_shuffled_wallclock.png"]
    assert all(Path(p).stat().st_size > 10_000 for p in written)
