"""ScaleLong (M-A-P / ByteDance, arXiv 2505.23922): multi-timescale multiple-choice QA on long videos
(avg. 86 min; questions at clip / shot / event / story timescales within the same video). QA-only.

FORMAT NOT CONFIRMED. The official release (github.com/multimodal-art-projection/ScaleLong, per the paper's
abstract) could not be read here, so its annotation layout is unknown. What was readable is the annotation tool
public at github.com/dma2077/scalelong_anno, whose ``questions_converted.jsonl`` holds ScaleLong-style questions
as ONE JSON OBJECT PER LINE mapping a YouTube video id to that video's questions::

    {"uIj03RsGrJA": [{"data_id": 0, "question": "How many matches did ... ?", "question_type": "Counting Problem",
                      "options": {"A": "...", "B": "...", "C": "...", "D": "..."}, "answer": "C"}, ...]}

This reader ASSUMES that layout: JSON lines of ``{video_id: [question, ...]}`` (a whole file that is one such
object is accepted too). Assumed further: ``options`` is ``{"A": text, ...}`` or a list; ``answer`` a letter (or
the option's text); the timescale, if the release carries it, in one of ``timescale`` / ``time_scale`` /
``granularity`` / ``scale`` / ``level`` (the tool's code says a "granularity" field was removed from its copy).

Mapping: uid = ``<video_id>-<data_id>`` (the question's index when ``data_id`` is absent); video =
``<video_id><video_ext>``; category = the timescale when present, else ``question_type``; windows = the explicit
clock ranges written in the question ("from 08:59 to 09:19"), else none (the release gives no evidence
windows; the caption step then needs the video's duration). Check the real file against this before a run:
a file in another layout fails with a SourceFormatError (no valid entry), not with silent garbage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from data_pipeline.sources._common import (
    SourceFormatError,
    SourceStats,
    iter_json_lines,
    json_type,
    require,
    text,
    video_file,
)
from data_pipeline.sources.record import SourceRecord
from vt_ray.eval.loaders._common import answer_letter, options_list
from vt_ray.trace import parse_time_point

SOURCE = "scalelong"
FORMAT = 'JSON lines of {"<video_id>": [{"data_id", "question", "question_type", "options", "answer"}, ...]}'
TIMESCALE_KEYS = ("timescale", "time_scale", "granularity", "scale", "level")
_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?"
_RANGE_RE = re.compile(rf"({_CLOCK})\s*(?:-|–|—|~|to)\s*({_CLOCK})", re.IGNORECASE)


def read(path: Path, stats: SourceStats, video_ext: str = ".mp4") -> Iterator[SourceRecord]:
    return _records(_videos(path, stats), path, stats, video_ext)


def _videos(path: Path, stats: SourceStats) -> Iterable[tuple[str, Any, Any]]:
    """``(where, video_id, questions)`` from a JSON-lines file or from one JSON object."""
    try:
        whole = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        whole = None  # several lines: JSON lines, read line by line below
    if whole is not None and not isinstance(whole, dict):
        raise SourceFormatError(path, f"expected {FORMAT}, got one JSON {json_type(whole)}")
    if isinstance(whole, dict):
        return [(f"video {vid!r}", vid, qs) for vid, qs in whole.items()]
    return _line_videos(path, stats)


def _line_videos(path: Path, stats: SourceStats) -> Iterator[tuple[str, Any, Any]]:
    for lineno, obj in iter_json_lines(path, stats):
        if not isinstance(obj, dict) or not obj:
            stats.skip(f"line {lineno}", f"expected an object {{video_id: [questions]}}, got {obj!r:.60}")
            continue
        for vid, questions in obj.items():
            yield f"line {lineno} video {vid!r}", vid, questions


def _records(videos: Iterable[tuple[str, Any, Any]], path: Path, stats: SourceStats,
             video_ext: str) -> Iterator[SourceRecord]:
    for where, vid, questions in videos:
        if not isinstance(questions, list):
            stats.skip(where, f"expected a list of questions, got {type(questions).__name__}")
            continue
        for i, q in enumerate(questions):
            record = stats.guard(f"{where} question {i}", _record, vid, i, q, path, video_ext)
            if record is not None:
                yield record


def _record(vid: str, index: int, q: Any, path: Path, video_ext: str) -> SourceRecord:
    vid = text(vid, "video id")
    question = text(require(q, "question"), "question")
    data_id = q.get("data_id")
    uid = f"{vid}-{data_id if data_id is not None else index}"
    options = options_list(require(q, "options"), path, uid)
    letter = answer_letter(require(q, "answer"), options, path, uid)
    timescale = next((str(q[k]) for k in TIMESCALE_KEYS if q.get(k)), None)
    question_type = q.get("question_type")
    extra = {"video_id": vid, "data_id": data_id, "question_type": question_type, "timescale": timescale}
    return SourceRecord(uid=uid, source=SOURCE, video=video_file(vid, video_ext), question=question, options=options,
                        answer=letter, windows=windows_in_text(question),
                        category=timescale or (str(question_type) if question_type else None),
                        extra={k: v for k, v in extra.items() if v is not None})


def windows_in_text(question: str) -> list[list[float]]:
    """Clock ranges the question names ("during the time from 11:52 to 12:10"), in seconds."""
    windows = []
    for m in _RANGE_RE.finditer(question):
        start, end = parse_time_point(m.group(1)), parse_time_point(m.group(2))
        if start is not None and end is not None and start <= end:
            windows.append([start, end])
    return windows
