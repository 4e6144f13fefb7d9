"""Video-R1's evaluation files ``eval_{mvbench,tempcompass,videomme,videommmu,vsibench,mmvu}.json``.

Format: the Video-R1 record (tulerfeng/Video-R1@59d65c3 ``src/eval_bench.py`` reads problem, options,
problem_type, data_type, path, solution), often with the benchmark's own fields kept beside it (Video-RTS
copies of eval_videomme.json / eval_mmvu.json); ``path`` is "./..." relative to the Evaluation directory or
absolute. Read through :mod:`vt_ray.data.formats.video_r1`; each sample keeps its record in
``extra["record"]`` so the results can be written back in Video-R1's output shape
(:mod:`vt_ray.eval.video_r1_output`). Missing videos are not checked here: the runner skips and records
them. A malformed record raises BenchmarkFormatError naming the file and index.
"""

from __future__ import annotations

from pathlib import Path

from vt_ray.data.formats import load_data
from vt_ray.data.schema import VideoSample
from vt_ray.eval.loaders._common import BenchmarkFormatError, check_file


def load(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    path = check_file(path)
    # Absolute paths in eval files (Video-RTS rewrites them) must lie under video_root: set it to their common
    # parent when they live elsewhere.
    report = load_data(path, "video_r1", root=video_root or path.parent, check_media=False)
    if report.bad_rows:
        bad = report.bad_rows[0]
        raise BenchmarkFormatError(path, bad.index, f"{bad.reason}: {bad.detail} "
                                   f"({len(report.bad_rows)} bad records in all)")
    return report.samples
