"""YouCook2 (Zhou et al., AAAI 2018): cooking videos with temporally localised procedure steps. Caption-only.

Published format (confirmed): ``youcookii_annotations_trainval.json`` from http://youcook2.eecs.umich.edu/download
(the format YouCook2-JP, github.com/nlab-mpg/YouCook2-JP, says it mirrors; sample entries in public code, e.g.
github.com/i-m-vivek/iGibson ``igibson_usage/sample.py``)::

    {"database": {"<youtube id>": {"duration": 241.64, "subset": "training" | "validation",
                                   "recipe_type": "212", "video_url": "https://www.youtube.com/watch?v=...",
                                   "annotations": [{"id": 0, "segment": [25, 37],
                                                    "sentence": "cut the onion in half and dice"}, ...]}}}

Mapping: uid = the video id, video = ``<id><video_ext>`` (flat under video_root; YouCook2's own download script
nests ``<subset>/<recipe_type>/``, so point video_root at a flat copy or symlink farm), duration, one Segment
per annotation in ``id`` order, category = ``recipe_type``. ``subset="training"`` (or ``"validation"``) keeps one
split; the others are counted as filtered, not as malformed. Spans past the duration are clamped to it; bad
segments are dropped and counted, a video with none left is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.sources._common import (
    SourceFormatError,
    SourceStats,
    load_json,
    require,
    seconds,
    text,
    video_file,
)
from data_pipeline.sources.record import Segment, SourceRecord

SOURCE = "youcook2"
FORMAT = ('a JSON object {"database": {"<id>": {"duration", "subset", "recipe_type", '
          '"annotations": [{"segment": [s, e], "id", "sentence"}]}}}')


def read(path: Path, stats: SourceStats, subset: str | None = None, video_ext: str = ".mp4") -> Iterator[SourceRecord]:
    top = load_json(path, dict, FORMAT)
    database = top.get("database")
    if not isinstance(database, dict):
        raise SourceFormatError(path, f"expected {FORMAT}: no 'database' object")
    return _records(database, stats, subset, video_ext)


def _records(database: dict[str, Any], stats: SourceStats, subset: str | None,
             video_ext: str) -> Iterator[SourceRecord]:
    for key, entry in database.items():
        if subset is not None and isinstance(entry, dict) and entry.get("subset") != subset:
            stats.filtered += 1
            continue
        record = stats.guard(f"video {key!r}", _record, key, entry, stats, video_ext)
        if record is not None:
            yield record


def _record(key: str, entry: Any, stats: SourceStats, video_ext: str) -> SourceRecord:
    duration = seconds(require(entry, "duration"), "duration")
    annotations = require(entry, "annotations")
    if not isinstance(annotations, list):
        raise ValueError("annotations must be a list")
    segments = []
    for i, ann in enumerate(sorted(annotations, key=_order)):
        segment = stats.guard(f"video {key!r} annotation {i}", _segment, ann, duration, part=True)
        if segment is not None:
            segments.append(segment)
    if not segments:
        raise ValueError("no valid annotation")
    extra = {k: entry[k] for k in ("subset", "recipe_type", "video_url") if entry.get(k) is not None}
    recipe = entry.get("recipe_type")
    return SourceRecord(uid=key, source=SOURCE, video=video_file(key, video_ext), duration=duration,
                        segments=segments, category=str(recipe) if recipe is not None else None, extra=extra)


def _order(ann: Any) -> int:
    """The step's ``id`` (steps are numbered in order); a malformed one sorts first and fails on its own."""
    step = ann.get("id") if isinstance(ann, dict) else None
    return step if isinstance(step, int) else -1


def _segment(ann: Any, duration: float) -> Segment:
    span = require(ann, "segment")
    if not isinstance(span, list) or len(span) != 2:
        raise ValueError(f"segment must be [start, end], got {span!r}")
    start, end = seconds(span[0], "start"), seconds(span[1], "end")
    return Segment(start, min(end, duration) if duration > 0 else end, text(require(ann, "sentence"), "sentence"))
