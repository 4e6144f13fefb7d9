"""SciVideoBench (Deng et al. 2025): 1,000 multiple-choice questions on scientific experiment videos (JoVE).

Published format (confirmed from github.com/dengandong/SciVideoBench ``README.md`` (example record),
``scivideobench.yaml`` (reads ``scivideobench_1k.json``) and ``scivideobench/utils.py`` (lmms-eval task); data
on huggingface.co/datasets/groundmore/scivideobench): a JSON array of objects with ``video_id``,
``question_id``, ``question``, ``options`` (``{"A": text, ...}`` or a list; up to 10 options A-J), ``answer``
(letter; ``utils.py`` also reads ``ground_truth``), ``question_type`` (Conceptual / Quantitative /
Hypothetical Reasoning), ``discipline``, ``subject``, optional ``category`` and ``video_duration``. Videos are
``<video_root>/jove_<video_id>.mp4`` (``utils.py`` also tries .MP4 and .mkv); ``video_root`` defaults to
``<file dir>/video_with_text_pil`` as in ``utils.py``.

Questions cite times like ``02:22 and 02:33``; lmms-eval rewrites them into frame indices for frame-based
models, we keep the text as published (the trace format speaks in seconds).
"""

from __future__ import annotations

from pathlib import Path

from vt_ray.data.schema import VideoSample
from vt_ray.eval.loaders._common import answer_letter, field, make_sample, options_list, read_records, video_file


def load(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    path = Path(path)
    records = read_records(path)
    root = Path(video_root) if video_root else path.parent / "video_with_text_pil"
    samples = []
    for i, rec in enumerate(records):
        video_id = str(field(rec, "video_id", path, i))
        qid = field(rec, "question_id", path, i, default=i)
        options = options_list(field(rec, "options", path, i), path, i)
        duration = field(rec, "video_duration", path, i, default=None)
        extra = {k: rec[k] for k in ("discipline", "subject", "category") if rec.get(k) is not None}
        samples.append(
            make_sample(
                path,
                i,
                uid=f"{video_id}/{qid}",
                video=video_file(root, f"jove_{video_id}"),
                question=str(field(rec, "question", path, i)),
                options=options,
                answer=answer_letter(field(rec, ("answer", "ground_truth"), path, i), options, path, i),
                duration=float(duration) if isinstance(duration, (int, float)) else None,
                category=str(field(rec, ("question_type", "category"), path, i, default="")),
                source="scivideobench",
                extra=extra,
            )
        )
    return samples
