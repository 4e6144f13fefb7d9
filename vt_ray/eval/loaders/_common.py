"""Shared helpers for the benchmark loaders: reading JSON/JSONL/Parquet, options, video paths, errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vt_ray.data.schema import OPTION_LETTERS, VideoSample

VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")
_OPTION_PREFIX_RE = re.compile(r"^\s*\(?([A-Z])\s*[.):：]\s*")
_OPTION_LINE_RE = re.compile(r"^\s*\(?([A-Z])\s*[.):：]\s*(.+?)\s*$")


class BenchmarkFormatError(ValueError):
    """A benchmark record does not follow the published format; names the file and the record index."""

    def __init__(self, path: str | Path, index: int | str, message: str) -> None:
        self.path, self.index = Path(path), index
        super().__init__(f"{path}: record {index}: {message}")


def check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark annotation file not found: {path}")
    return path


def read_records(path: str | Path) -> list[Any]:
    """Records of a JSON array, a JSONL file, or a Parquet file (Hugging Face dataset exports)."""
    path = check_file(path)
    if path.suffix == ".parquet":
        import pandas as pd

        return [_plain(r) for r in pd.read_parquet(path).to_dict(orient="records")]
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BenchmarkFormatError(path, "-", f"not valid JSON: {err}") from err
        return list(data)
    if stripped.startswith("{") and path.suffix == ".json":
        try:  # a single JSON object: the records are its only list value (e.g. {"data": [...]})
            data = json.loads(text)
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1:
                return lists[0]
        except json.JSONDecodeError:
            pass  # fall through: JSON lines in a .json file
    records: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise BenchmarkFormatError(path, f"line {lineno}", f"not valid JSON: {err}") from err
    return records


def _plain(value: Any) -> Any:
    """numpy arrays/scalars from pandas -> Python lists/scalars."""
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def field(record: Any, keys: str | Sequence[str], path: Path, index: int | str, *, default: Any = ...) -> Any:
    """The first present key of ``keys``; a missing required field names the file, record and key."""
    if not isinstance(record, Mapping):
        raise BenchmarkFormatError(path, index, f"expected a JSON object, got {type(record).__name__}")
    names = [keys] if isinstance(keys, str) else list(keys)
    for k in names:
        if k in record and record[k] is not None:
            return record[k]
    if default is ...:
        raise BenchmarkFormatError(path, index, f"missing field {' / '.join(map(repr, names))}")
    return default


def strip_option_letter(text: str) -> str:
    return _OPTION_PREFIX_RE.sub("", str(text), count=1).strip()


def options_list(options: Any, path: Path, index: int | str) -> list[str]:
    """Option texts in letter order from ``{"A": text, ...}`` or ``["A. text", ...]`` / ``[text, ...]``."""
    if isinstance(options, Mapping):
        keys = sorted(options)
        if keys != list(OPTION_LETTERS[: len(keys)]):
            raise BenchmarkFormatError(path, index, f"option keys must be A, B, ... in order, got {keys}")
        return [str(options[k]).strip() for k in keys]
    if isinstance(options, (list, tuple)) and options:
        texts = [str(o) for o in options]
        prefixed = all(_OPTION_PREFIX_RE.match(t) for t in texts)
        return [strip_option_letter(t) if prefixed else t.strip() for t in texts]
    raise BenchmarkFormatError(path, index, f"options must be a non-empty dict or list, got {options!r}")


def options_from_text(text: str) -> list[str]:
    """Options written as lines ``A. text`` / ``(B) text`` in a prompt string, in letter order; [] if none."""
    found: list[str] = []
    for line in str(text).splitlines():
        m = _OPTION_LINE_RE.match(line)
        if m and m.group(1) == OPTION_LETTERS[len(found)]:
            found.append(m.group(2))
    return found


def answer_letter(answer: Any, options: Sequence[str], path: Path, index: int | str) -> str:
    """The gold option letter from ``"C"``, ``"C. text"``, an index, or the option text itself."""
    if isinstance(answer, int) and 0 <= answer < len(options):
        return OPTION_LETTERS[answer]
    text = str(answer).strip()
    m = _OPTION_PREFIX_RE.match(text + ".") if len(text) == 1 else _OPTION_PREFIX_RE.match(text)
    if m and m.group(1) in OPTION_LETTERS[: len(options)]:
        return m.group(1)
    for i, option in enumerate(options):
        if text.lower() == option.lower():
            return OPTION_LETTERS[i]
    raise BenchmarkFormatError(path, index, f"answer {answer!r} is not one of {len(options)} options")


def video_file(video_root: Path, stem_or_rel: str) -> str:
    """``video_root/stem_or_rel`` with the first existing video extension when it has none; .mp4 when none
    exists (the runner reports missing videos, loading does not need them)."""
    base = video_root / stem_or_rel
    if base.suffix.lower() in {e.lower() for e in VIDEO_EXTENSIONS}:
        return str(base)
    for ext in VIDEO_EXTENSIONS:
        candidate = base.with_name(base.name + ext)
        if candidate.exists():
            return str(candidate)
    return str(base.with_name(base.name + ".mp4"))


def root_of(path: Path, video_root: str | Path | None) -> Path:
    return Path(video_root) if video_root else path.parent


def make_sample(path: Path, index: int | str, **kwargs: Any) -> VideoSample:
    """A VideoSample, turning its validation error into one that names the file and record."""
    try:
        return VideoSample(**kwargs)
    except (TypeError, ValueError) as err:
        raise BenchmarkFormatError(path, index, str(err)) from err


Loader = Callable[[str | Path, str | Path | None], list[VideoSample]]
