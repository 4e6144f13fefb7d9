"""VRBench (Yu et al. 2025, arXiv 2506.10857): multi-step reasoning on long narrative videos.

Published format (confirmed from github.com/OpenGVLab/VRBench ``inference/data/VRBench_debug.jsonl``, a sample
of the release on huggingface.co/datasets/OpenGVLab/VRBench): JSON lines, one per *video*, with ``video_id``,
``video_path`` (relative, e.g. ``VRBench/videos/v001/<id>.mp4``), ``video_summary`` and ``mcq``: a dict
``{"qa1": {...}, ...}`` of multiple-choice questions, each with ``question``, ``options``
(``{"A": text, ...}``), ``answer`` (letter), ``reasoning_type`` and ``reasoning_process``
(``{"1": "step text [HH:MM:SS->HH:MM:SS]", ...}``).

Each question becomes one sample with uid ``<video_id>/<qa key>``. The timestamped reasoning steps give the
evidence windows, and their texts (timestamp removed) the reference descriptions, so VRBench also feeds the
grounding and captioning metrics. Steps without a timestamp are left out of both. ``video_path`` resolves
against ``video_root`` (default: the annotation file's directory). Open-ended questions (the release's other
question set, not in the sample) are not loaded: the paper reports VRBench multiple-choice accuracy.
"""

from __future__ import annotations

import re
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
)
from vt_ray.trace import parse_time_point

_STAMP_RE = re.compile(r"\[\s*(\d+(?::\d{1,2}){1,2}(?:\.\d+)?)\s*-+>\s*(\d+(?::\d{1,2}){1,2}(?:\.\d+)?)\s*\]")


def _steps(process: Any, path: Path, index: str) -> tuple[list[list[float]], list[str]]:
    if not process:
        return [], []
    if not isinstance(process, dict):
        raise BenchmarkFormatError(path, index, f"reasoning_process must be a dict, got {type(process).__name__}")
    windows, captions = [], []
    for key in sorted(process, key=lambda k: (len(str(k)), str(k))):
        text = str(process[key])
        m = _STAMP_RE.search(text)
        if not m:
            continue
        start, end = parse_time_point(m.group(1)), parse_time_point(m.group(2))
        if start is None or end is None or start > end:
            raise BenchmarkFormatError(path, index, f"bad timestamp in reasoning step {key!r}: {m.group(0)}")
        windows.append([start, end])
        captions.append(" ".join(_STAMP_RE.sub(" ", text).split()).rstrip(" ."))
    return windows, captions


def load(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    path = Path(path)
    records = read_records(path)
    root = root_of(path, video_root)
    samples = []
    for i, rec in enumerate(records):
        video_id = str(field(rec, "video_id", path, i))
        rel = str(field(rec, "video_path", path, i, default=f"{video_id}.mp4"))
        video = rel if Path(rel).is_absolute() else str(root / rel)
        mcq = field(rec, "mcq", path, i)
        if not isinstance(mcq, dict):
            raise BenchmarkFormatError(path, i, f"mcq must be a dict of questions, got {type(mcq).__name__}")
        for qkey in sorted(mcq, key=lambda k: (len(k), k)):
            qa = mcq[qkey]
            where = f"{i} ({qkey})"
            options = options_list(field(qa, "options", path, where), path, where)
            windows, captions = _steps(qa.get("reasoning_process"), path, where)
            samples.append(
                make_sample(
                    path,
                    where,
                    uid=f"{video_id}/{qkey}",
                    video=video,
                    question=str(field(qa, "question", path, where)),
                    options=options,
                    answer=answer_letter(field(qa, "answer", path, where), options, path, where),
                    windows=windows,
                    captions=captions,
                    category=str(qa.get("reasoning_type") or ""),
                    source="vrbench",
                )
            )
    return samples
