"""Video-Holmes (Cheng et al. 2025, arXiv 2505.21374): 1,837 multiple-choice questions on 270 suspense films.

Published format (confirmed from the official evaluation script, github.com/TencentARC/Video-Holmes
``evaluate.py``, which reads ``Benchmark/test_Video-Holmes.json`` and ``Benchmark/videos/<video ID>.mp4``; the
file is on huggingface.co/datasets/TencentARC/Video-Holmes): a JSON array of objects with keys
``"Question ID"``, ``"video ID"``, ``"Question Type"`` (SR, IMC, TCI, TA, MHR, PAR, CTI), ``"Question"``,
``"Options"`` (``{"A": text, ...}``), ``"Answer"`` (a letter) and ``"Explanation"``.

No evidence windows: Video-Holmes is accuracy only. ``video_root`` defaults to ``<file dir>/videos``.
"""

from __future__ import annotations

from pathlib import Path

from vt_ray.data.schema import VideoSample
from vt_ray.eval.loaders._common import answer_letter, field, make_sample, options_list, read_records, video_file


def load(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    path = Path(path)
    records = read_records(path)
    root = Path(video_root) if video_root else path.parent / "videos"
    samples = []
    for i, rec in enumerate(records):
        options = options_list(field(rec, "Options", path, i), path, i)
        explanation = field(rec, "Explanation", path, i, default="")
        samples.append(
            make_sample(
                path,
                i,
                uid=str(field(rec, "Question ID", path, i)),
                video=video_file(root, str(field(rec, "video ID", path, i))),
                question=str(field(rec, "Question", path, i)),
                options=options,
                answer=answer_letter(field(rec, "Answer", path, i), options, path, i),
                category=str(field(rec, "Question Type", path, i, default="")),
                source="video_holmes",
                extra={"explanation": explanation} if explanation else {},
            )
        )
    return samples
