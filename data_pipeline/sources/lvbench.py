"""LVBench (Wang et al. 2024, arXiv 2406.08035): multiple-choice QA on hour-long YouTube videos. QA-only.

Published format (confirmed in part): ``video_info.meta.jsonl`` from https://huggingface.co/datasets/THUDM/LVBench
(now zai-org/LVBench; the github.com/THUDM/LVBench README says to download it into ``data/``), one JSON object per
video per line. The release's own scripts read ``key`` (the YouTube id; ``scripts/save_video_txt.py`` builds
``https://www.youtube.com/watch?v=<key>``) and ``qa[*].uid`` (``scripts/construct_random_answers.py``); the rest
is as public evaluation code reads it (a VLMEvalKit LVBench dataset class documenting uid / question with the
options inline / answer letter / question_type list / time_reference string, VideoMind's ``lvbench`` loader,
and the HF card of shuzhig/LVBench-temporal: ``key``, ``type``, ``video_info``, ``qa``)::

    {"key": "<youtube id>", "type": "<genre>", "video_info": {...},
     "qa": [{"uid": "...", "question": "What ...?\\n(A) ...\\n(B) ...\\n(C) ...\\n(D) ...", "answer": "B",
             "question_type": ["key information retrieval", ...], "time_reference": "00:15-00:19"}, ...]}

Options are embedded in the question as ``(A) text`` lines; they are split off with the eval loaders' helper.
``time_reference`` is parsed with :func:`vt_ray.trace.parse_window` (``MM:SS-MM:SS``, ``H:MM:SS-...``; several
ranges separated by ``,``/``;``); one that does not parse (or is empty) leaves ``windows`` empty and is kept
verbatim in ``extra``, the question is still good. NOT CONFIRMED: the exact ``time_reference`` syntax (the
``MM:SS-MM:SS`` form above is assumed) and the fields inside ``video_info``; the
duration is taken from ``video_info.duration`` (seconds) or ``video_info.duration_minutes`` when present,
else left unknown.

Mapping: uid = ``qa.uid``; video = ``<key><video_ext>``; category = the first ``question_type``; extra keeps the
genre, all question types and the raw time reference. A malformed QA is skipped alone; a malformed line
(not JSON, no ``key``, no ``qa`` list) skips that video's questions and counts once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.sources._common import (
    SourceStats,
    check_json_lines,
    iter_json_lines,
    require,
    seconds,
    text,
    video_file,
)
from data_pipeline.sources.record import SourceRecord
from vt_ray.eval.loaders._common import answer_letter, options_from_text
from vt_ray.trace import parse_window

SOURCE = "lvbench"
FORMAT = 'one JSON object per line {"key", "type", "video_info", "qa": [{"uid", "question", "answer", ...}]}'
_RANGE_SPLIT_RE = re.compile(r"\s*[,;]\s*")


def read(path: Path, stats: SourceStats, video_ext: str = ".mp4") -> Iterator[SourceRecord]:
    check_json_lines(path, FORMAT)
    return _records(path, stats, video_ext)


def _records(path: Path, stats: SourceStats, video_ext: str) -> Iterator[SourceRecord]:
    for lineno, video in iter_json_lines(path, stats):
        context = stats.guard(f"line {lineno}", _video, video)
        if context is None:
            continue
        key, qas, duration = context
        for i, qa in enumerate(qas):
            record = stats.guard(f"line {lineno} ({key}) qa {i}", _record, qa, key, video, duration, path, video_ext)
            if record is not None:
                yield record


def _video(video: Any) -> tuple[str, list[Any], float | None]:
    if not isinstance(video, dict):
        raise TypeError(f"expected a JSON object per line, got {type(video).__name__}")
    key = text(str(video.get("key") or video.get("video_id") or ""), "key")
    qas = require(video, "qa")
    if not isinstance(qas, list):
        raise ValueError("qa must be a list")
    return key, qas, _duration(video.get("video_info"))


def _duration(info: Any) -> float | None:
    if not isinstance(info, dict):
        return None
    if info.get("duration") is not None:
        return seconds(info["duration"], "video_info.duration")
    if info.get("duration_minutes") is not None:
        return seconds(info["duration_minutes"], "video_info.duration_minutes") * 60.0
    return None


def _record(qa: Any, key: str, video: dict[str, Any], duration: float | None, path: Path,
            video_ext: str) -> SourceRecord:
    uid = text(str(require(qa, "uid")), "uid")
    stem, options = split_options(text(require(qa, "question"), "question"))
    letter = answer_letter(require(qa, "answer"), options, path, uid)
    types = qa.get("question_type") or []
    types = [types] if isinstance(types, str) else [str(t) for t in types]
    reference = str(qa.get("time_reference") or "").strip()
    extra = {"video_id": key, "video_type": video.get("type"), "question_type": types,
             "time_reference": reference or None}
    return SourceRecord(uid=uid, source=SOURCE, video=video_file(key, video_ext), duration=duration, question=stem,
                        options=options, answer=letter, windows=parse_time_reference(reference),
                        category=types[0] if types else None, extra={k: v for k, v in extra.items() if v is not None})


def split_options(question: str) -> tuple[str, list[str]]:
    """``("What ...?", [option texts])`` from a question with ``(A) text`` lines; ValueError if fewer than 2."""
    lines = question.splitlines()
    first = next((i for i, line in enumerate(lines) if options_from_text(line)), None)
    options = options_from_text("\n".join(lines[first:])) if first is not None else []
    if first is None or len(options) < 2:
        raise ValueError("the question has no embedded options '(A) ...' (at least 2)")
    stem = "\n".join(lines[:first]).strip()
    if not stem:
        raise ValueError("the question has options but no question text")
    return stem, options


def parse_time_reference(reference: str) -> list[list[float]]:
    """Windows from ``"00:15-00:19"`` (several ranges separated by , or ;); [] when it does not parse."""
    windows = []
    for part in _RANGE_SPLIT_RE.split(reference.strip()):
        window = parse_window(part) if part else None
        if window is None:
            return []  # one unreadable range makes the whole reference unreliable: keep it raw in extra only
        windows.append([window[0], window[1]])
    return windows
