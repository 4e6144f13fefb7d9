"""Video-MME (Fu et al. 2024, arXiv 2405.21075): 2,700 multiple-choice questions on 900 videos.

Two published formats, both confirmed and both accepted:

* The Hugging Face release (huggingface.co/datasets/lmms-lab/Video-MME, ``videomme/test-*.parquet``; its
  dataset card lists the features): flat records with ``video_id``, ``duration`` (short/medium/long),
  ``domain``, ``sub_category``, ``url``, ``videoID`` (the YouTube id the video file is named after),
  ``question_id``, ``task_type``, ``question``, ``options`` (``["A. text", ...]``) and ``answer`` (letter).
  Parquet, JSON array or JSONL.
* The official evaluation template (github.com/BradyFU/Video-MME ``evaluation/output_test_template.json``):
  a JSON array of videos with ``video_id``, ``duration_category``, ``video_category``, ``video_subcategory``
  and ``questions``: ``[{question_id, task_type, question, choices: ["A. text", ...], answer}, ...]``.

Videos are ``<video_root>/<videoID>.mp4`` (the template has only ``video_id``, used instead). ``category`` is
the ``task_type``; the duration bucket and domain are kept in ``extra`` for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vt_ray.data.schema import VideoSample
from vt_ray.eval.loaders._common import (
    BenchmarkFormatError,
    answer_letter,
    field,
    make_sample,
    options_list,
    read_records,
    root_of,
    video_file,
)


def _sample(q: Any, video: dict[str, Any], path: Path, where: int | str, root: Path) -> VideoSample:
    options = options_list(field(q, ("options", "choices", "candidates"), path, where), path, where)
    extra = {k: v for k, v in video.items() if v is not None}
    return make_sample(
        path,
        where,
        uid=str(field(q, "question_id", path, where)),
        video=video_file(root, str(video["file_id"])),
        question=str(field(q, "question", path, where)),
        options=options,
        answer=answer_letter(field(q, "answer", path, where), options, path, where),
        category=str(field(q, "task_type", path, where, default="")),
        source="videomme",
        extra={k: v for k, v in extra.items() if k != "file_id"},
    )


def load(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    path = Path(path)
    records = read_records(path)
    root = root_of(path, video_root)
    samples = []
    for i, rec in enumerate(records):
        if isinstance(rec, dict) and "questions" in rec:  # official template: one record per video
            video = {
                "file_id": field(rec, ("videoID", "video_id"), path, i),
                "duration": rec.get("duration_category") or rec.get("duration"),
                "domain": rec.get("video_category"),
                "sub_category": rec.get("video_subcategory"),
            }
            questions = rec["questions"]
            if not isinstance(questions, list):
                raise BenchmarkFormatError(path, i, "questions must be a list")
            samples += [_sample(q, video, path, f"{i}.{j}", root) for j, q in enumerate(questions)]
        else:
            video = {
                "file_id": field(rec, ("videoID", "video_id"), path, i),
                "duration": field(rec, "duration", path, i, default=None),
                "domain": field(rec, "domain", path, i, default=None),
                "sub_category": field(rec, "sub_category", path, i, default=None),
            }
            samples.append(_sample(rec, video, path, i, root))
    return samples
