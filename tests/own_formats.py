"""A team's own data format and benchmark loader, plugged in by import path (``data.format: own_formats:convert``,
``eval.benchmarks[].format: own_formats:load``) with no edit of vt_ray: what
tests/unit/data/test_data_formats.py loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vt_ray.data.formats.errors import RowError
from vt_ray.data.formats.media import resolve_media
from vt_ray.data.schema import VideoSample

LETTERS = "ABCDEFGH"


def convert(row: dict[str, Any], index: int, file: Path, root: Path) -> VideoSample:
    """``{"clip": path, "q": question, "choices": [...], "gold": index}`` -> a multiple-choice sample."""
    choices, gold = row.get("choices"), row.get("gold")
    if not isinstance(choices, list) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise RowError("bad_gold", f"gold {gold!r} is not an index into {choices!r}")
    return VideoSample(uid=f"{file.stem}:{index}", video=str(resolve_media(row["clip"], root)), question=row["q"],
                       answer=LETTERS[gold], options=[str(c) for c in choices])


def load(path: str | Path, video_root: str | Path | None) -> list[VideoSample]:
    """The same records as a benchmark file (one JSON array)."""
    path = Path(path)
    rows = json.loads(path.read_text())
    root = Path(video_root or path.parent).resolve()
    return [convert(row, i, path, root) for i, row in enumerate(rows)]
