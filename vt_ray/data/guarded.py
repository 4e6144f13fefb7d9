"""Reading a dataset file that may be broken or hostile: bad rows are skipped and counted, never a crash, and
no row can make the run read a file outside the data root.

:func:`vt_ray.data.schema.read_samples` is strict (the first bad line is an error naming it), which suits files
we generate. A training set assembled from many sources gets this reader instead: each line must be a JSON
object whose fields have the schema's types (``uid: 5`` or ``options: "AB"`` would otherwise pass the dataclass
and fail much later, inside a step) and whose video, after ``..`` and symlinks are resolved, lies under the
data root (by default the dataset file's directory). Everything else is skipped with a reason:

    bad_json, not_an_object, too_long, unknown_field, missing_field, bad_type, invalid, outside_root
"""

from __future__ import annotations

import json
import logging
import math
import types
import typing
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vt_ray.data.schema import VideoSample

log = logging.getLogger(__name__)

MAX_LINE_CHARS = 1_000_000  # a row is a question, a few options and captions: 1 MB is already absurd
_HINTS = typing.get_type_hints(VideoSample)
_REQUIRED = {f.name for f in fields(VideoSample) if f.default is MISSING and f.default_factory is MISSING}


@dataclass
class LoadReport:
    """What a guarded load kept and skipped (reason -> count, and the first example of each reason)."""

    path: str
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, detail)

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.path}: {self.kept} samples"
        first = "; ".join(f"{r}: {d}" for r, d in sorted(self.examples.items()))
        return (f"{self.path}: {self.kept} samples, {sum(self.skipped.values())} rows skipped "
                f"{dict(self.skipped)} ({first})")


def _matches(value: Any, tp: Any) -> bool:
    """``value`` fits the annotation ``tp`` (str, int, float, bool, None, Any, unions, list[X], dict[K, V])."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(tp)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, item) for k, v in value.items())
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _problem(row: dict[str, Any]) -> tuple[str, str] | None:
    unknown = sorted(set(row) - set(_HINTS))
    if unknown:
        return "unknown_field", f"unknown field(s) {unknown}"
    missing = sorted(_REQUIRED - set(row))
    if missing:
        return "missing_field", f"missing field(s) {missing}"
    for name, value in row.items():
        if not _matches(value, _HINTS[name]):
            return "bad_type", f"field {name!r}: {type(value).__name__} is not {_HINTS[name]}"
    return None


def contained(video: str, root: Path) -> Path | None:
    """The video's real path (``..`` and symlinks resolved) if it lies under ``root`` (already resolved)."""
    p = Path(video)
    real = (p if p.is_absolute() else root / p).resolve()
    return real if real.is_relative_to(root) else None


def load_samples(path: str | Path, root: str | Path | None = None) -> tuple[list[VideoSample], LoadReport]:
    """The valid samples of a JSONL file, with absolute video paths under ``root`` (default: the file's
    directory), and a report of what was skipped and why. Raises only if the file itself is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    base = Path(root if root is not None else path.parent).resolve()
    report = LoadReport(str(path))
    out: list[VideoSample] = []
    # JSON Lines rows end at "\n" only: a "\r" inside a row is JSON whitespace, not a row break (text mode's
    # universal newlines would split it into two bad rows).
    with path.open(encoding="utf-8", errors="replace", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            where = f"line {lineno}"
            if not line.strip():
                continue
            if len(line) > MAX_LINE_CHARS:
                report.skip("too_long", f"{where}: {len(line)} chars > {MAX_LINE_CHARS}")
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                report.skip("bad_json", f"{where}: {err}")
                continue
            if not isinstance(row, dict):
                report.skip("not_an_object", f"{where}: a JSON {type(row).__name__}")
                continue
            if (problem := _problem(row)) is not None:
                report.skip(problem[0], f"{where}: {problem[1]}")
                continue
            try:
                sample = VideoSample(**row)
                sample.reward_target()  # what every step builds from it: must not fail mid-run
            except (TypeError, ValueError) as err:
                report.skip("invalid", f"{where}: {err}")
                continue
            try:
                real = contained(sample.video, base)
            except (OSError, ValueError, RuntimeError) as err:  # NUL bytes, symlink loops, names too long
                report.skip("invalid", f"{where}: video path {sample.video[:200]!r}: {err}")
                continue
            if real is None:
                report.skip("outside_root", f"{where}: video {sample.video[:200]!r} is outside {base}")
                continue
            out.append(replace(sample, video=str(real)))
    report.kept = len(out)
    if report.skipped:
        log.warning("%s", report.summary())
    return out, report
