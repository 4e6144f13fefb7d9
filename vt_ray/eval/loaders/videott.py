"""Video-TT, the Video Thinking Test (Zhang et al., ICCV 2025, arXiv 2507.15028): 1,000 YouTube Shorts, each
with one primary open-ended question and four adversarial variants (5,000 QA pairs, 18 question types).

Format: PARTLY CONFIRMED. The authors' lmms-eval task (github.com/ZhangYuanhan-AI/lmms-eval
``lmms_eval/tasks/hardvideo/utils.py``, the benchmark's pre-release name "hardvideo") reads records with
``video_id``, ``question``, ``question_prompt`` (the option lines, appended to the question for
multiple-choice variants), ``answer`` (a letter for multiple choice, text for open-ended) and ``capability``
(the question type, e.g. "Element Counting"); videos are ``Benchmark-AllVideos-LQ/<video_id>.mp4`` (also
.MP4/.mkv), so ``video_root`` defaults to ``<file dir>/Benchmark-AllVideos-LQ``. We could not see a released
annotation file: the id and variant fields are assumptions. We take the uid from ``qid`` / ``question_id`` /
``id`` when present (else ``<video_id>#<record index>``), the variant from ``type`` / ``question_type`` when
present (kept in ``extra``), and options from an ``options`` field when present, else from ``question_prompt``
lines ``A. text``. A record with options is multiple choice; one without is free text (open-ended, scored by
normalised exact match here; the benchmark itself grades open-ended answers with an LLM judge).
"""

from __future__ import annotations

from pathlib import Path

from vt_ray.data.schema import VideoSample
from vt_ray.eval.loaders._common import (
    answer_letter,
    field,
    make_sample,
    options_from_text,
    options_list,
    read_records,
    video_file,
)


def load(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    path = Path(path)
    records = read_records(path)
    root = Path(video_root) if video_root else path.parent / "Benchmark-AllVideos-LQ"
    samples = []
    for i, rec in enumerate(records):
        video_id = str(field(rec, "video_id", path, i))
        raw_options = field(rec, "options", path, i, default=None)
        prompt = str(field(rec, "question_prompt", path, i, default=""))
        options = options_list(raw_options, path, i) if raw_options else options_from_text(prompt)
        answer = field(rec, "answer", path, i)
        uid = field(rec, ("qid", "question_id", "id"), path, i, default=f"{video_id}#{i}")
        variant = field(rec, ("type", "question_type"), path, i, default=None)
        samples.append(
            make_sample(
                path,
                i,
                uid=str(uid),
                video=video_file(root, video_id),
                question=str(field(rec, "question", path, i)),
                options=options,
                answer=answer_letter(answer, options, path, i) if options else str(answer).strip(),
                answer_type="multiple_choice" if options else "free_text",
                category=str(field(rec, "capability", path, i, default="")),
                source="videott",
                extra={"variant": variant} if variant is not None else {},
            )
        )
    return samples
