"""CG-Bench (Chen et al. 2024, arXiv 2412.12075): clue-grounded multiple-choice QA on long videos.

Published format (confirmed from github.com/CG-Bench/CG-Bench ``run/save_as_jsons.py`` and ``run/utils.py``,
which read ``cgbench.json`` / ``cgbench_mini.json`` from huggingface.co/datasets/CG-Bench/CG-Bench, and from
VideoMind's loader, huggingface.co/spaces/yeliudev/VideoMind-2B ``videomind/dataset/sub_classes/cgbench.py``):
a JSON array of objects with ``qid``, ``video_uid``, ``question``, ``choices`` (list of option texts),
``right_answer`` (letter), ``answer`` (the correct option's text), ``clue_intervals`` (``[[start, end], ...]``
seconds: the evidence windows), ``duration`` (seconds), ``domain`` and ``sub_category``. Videos are
``<video_root>/<video_uid>.mp4``.

**CG-Bench-Reasoning** (the Video-Thinker paper's benchmark) is not a separate release: we take it to be the
CG-Bench questions of the *reasoning* type (CG-Bench's question types are perception, reasoning and
hallucination). NOT CONFIRMED: which field holds that type in the released JSON. :func:`load_reasoning` keeps
records whose ``task_type`` / ``question_type`` / ``type`` field contains "reason"; when no record has such a
field it assumes the file was already filtered to the reasoning subset, keeps everything and warns.
"""

from __future__ import annotations

import warnings
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

TYPE_FIELDS = ("task_type", "question_type", "type")


def _windows(value: Any, path: Path, index: int) -> list[list[float]]:
    try:
        windows = [[float(s), float(e)] for s, e in value]
    except (TypeError, ValueError) as err:
        raise BenchmarkFormatError(path, index, f"clue_intervals must be [[start, end], ...]: {value!r}") from err
    return windows


def _sample(rec: Any, path: Path, index: int, root: Path) -> VideoSample:
    options = options_list(field(rec, "choices", path, index), path, index)
    gold = field(rec, ("right_answer", "answer"), path, index)
    duration = field(rec, "duration", path, index, default=None)
    extra = {k: rec[k] for k in ("domain", "sub_category", *TYPE_FIELDS) if rec.get(k) is not None}
    return make_sample(
        path,
        index,
        uid=str(field(rec, "qid", path, index)),
        video=video_file(root, str(field(rec, "video_uid", path, index))),
        question=str(field(rec, "question", path, index)),
        options=options,
        answer=answer_letter(gold, options, path, index),
        windows=_windows(field(rec, "clue_intervals", path, index, default=[]), path, index),
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        category=str(field(rec, ("sub_category", "task_type", "domain"), path, index, default="")),
        source="cg_bench",
        extra=extra,
    )


def load(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    path = Path(path)
    records = read_records(path)
    root = root_of(path, video_root)
    return [_sample(rec, path, i, root) for i, rec in enumerate(records)]


def load_reasoning(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    """CG-Bench-Reasoning: the reasoning-type questions (see the module docstring for what is assumed)."""
    path = Path(path)
    records = read_records(path)
    root = root_of(path, video_root)
    typed = [any(isinstance(r, dict) and r.get(k) for k in TYPE_FIELDS) for r in records]
    if not any(typed):
        warnings.warn(
            f"{path}: no record has a question-type field {TYPE_FIELDS}; assuming the file is already the "
            "CG-Bench reasoning subset and keeping all records",
            stacklevel=2,
        )
        return [_sample(rec, path, i, root) for i, rec in enumerate(records)]
    out = []
    for i, rec in enumerate(records):
        kind = next((str(rec[k]) for k in TYPE_FIELDS if isinstance(rec, dict) and rec.get(k)), "")
        if "reason" in kind.lower():
            out.append(_sample(rec, path, i, root))
    return out
