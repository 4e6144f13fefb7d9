"""Shared plumbing of the source adapters: file loading, per-entry error accounting, time values.

Error policy (the same for every source):

* missing file -> FileNotFoundError naming the path;
* a file that is not the format at all (invalid JSON, wrong top-level type, or not a single valid entry) ->
  :class:`SourceFormatError` (a ValueError) naming the file and what was expected;
* a malformed entry inside a good file -> skipped and counted in :class:`SourceStats` (with the first error
  messages), and a warning with the counts is logged when the file is done. A bad entry never crashes the
  run and is never silently lost.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vt_ray.trace import parse_time_point

log = logging.getLogger("data_pipeline.sources")

MAX_ERRORS_KEPT = 20
ENTRY_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)
"""What converting one malformed entry may raise (a missing key, a wrong type, a bad value)."""

T = TypeVar("T")


class SourceFormatError(ValueError):
    """The annotation file as a whole is not in the source's published format."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


@dataclass
class SourceStats:
    """What one read of one annotation file produced and what it had to skip (and why)."""

    source: str
    path: str
    records: int = 0
    """Records yielded."""
    skipped: int = 0
    """Malformed entries skipped whole (a video, a question, a JSON line)."""
    skipped_parts: int = 0
    """Malformed parts dropped from otherwise good entries (e.g. one bad caption segment of a video)."""
    filtered: int = 0
    """Good entries left out on purpose by a reader option (e.g. YouCook2 ``subset``)."""
    errors: list[str] = field(default_factory=list)
    """The first error messages, ``<where>: <error>``."""

    def skip(self, where: str, err: BaseException | str, part: bool = False) -> None:
        if part:
            self.skipped_parts += 1
        else:
            self.skipped += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
            self.errors.append(f"{where}: {message}")

    def guard(self, where: str, fn: Callable[..., T], *args: Any, part: bool = False) -> T | None:
        """``fn(*args)``, or None after counting the entry as skipped when it is malformed."""
        try:
            return fn(*args)
        except ENTRY_ERRORS as err:
            self.skip(where, err, part=part)
            return None

    def summary(self, complete: bool = True) -> str:
        text = f"{self.source}: {self.records} records from {self.path}"
        if not complete:
            text += " (read stopped early)"
        if self.skipped or self.skipped_parts:
            text += f"; skipped {self.skipped} malformed entries and {self.skipped_parts} malformed parts"
        if self.filtered:
            text += f"; {self.filtered} filtered out"
        return text

    def finish(self, complete: bool = True) -> None:
        """Log the counts; after a complete read, raise when nothing at all was readable (the file is not
        this format). ``complete=False``: the caller stopped early, the counts cover what was read."""
        if complete and self.records == 0 and self.skipped > 0:
            raise SourceFormatError(self.path, f"not a single valid {self.source} entry among {self.skipped}; "
                                               f"first error: {self.errors[0] if self.errors else '?'}")
        if self.skipped or self.skipped_parts:
            log.warning("%s; first errors: %s", self.summary(complete), "; ".join(self.errors[:5]))
        else:
            log.info("%s", self.summary(complete))


def load_json(path: Path, expected: type, what: str) -> Any:
    """The parsed JSON file, which must be of type ``expected`` (``what`` describes the format for errors)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SourceFormatError(path, f"not valid JSON ({err}); expected {what}") from err
    if not isinstance(data, expected):
        raise SourceFormatError(path, f"expected {what}, got a JSON {json_type(data)}")
    return data


def check_json_lines(path: Path, what: str) -> None:
    """Refuse up front a file that is one JSON array: another format, not a JSONL with a broken line."""
    with path.open(encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        raise SourceFormatError(path, f"expected JSON lines ({what}), got a JSON array")


def iter_json_lines(path: Path, stats: SourceStats) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` of a JSON-lines file; a line that is not JSON is skipped and counted."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                stats.skip(f"line {lineno}", f"not valid JSON ({err})")


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


def require(mapping: Any, key: str) -> Any:
    """``mapping[key]``; a clear error when the entry is not an object or the key is missing or null."""
    if not isinstance(mapping, dict):
        raise TypeError(f"expected a JSON object, got a JSON {json_type(mapping)}")
    value = mapping.get(key)
    if value is None:
        raise ValueError(f"missing field {key!r}")
    return value


def seconds(value: Any, what: str) -> float:
    """Seconds from a number, a numeric string (``"49.299999"``) or a clock string (``"01:02"``)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a time, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            parsed = parse_time_point(value)
            if parsed is None:
                raise ValueError(f"{what} is not a time: {value!r}") from None
            number = parsed
    else:
        raise ValueError(f"{what} must be a time, got {value!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite time >= 0, got {value!r}")
    return number


def text(value: Any, what: str) -> str:
    """A non-empty, stripped string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value.strip()


def video_file(stem: str, ext: str) -> str:
    """``<stem><ext>``, the video's path relative to the source's video_root."""
    return f"{stem}{ext if not ext or ext.startswith('.') else '.' + ext}"
