"""Training data in the formats people arrive with: ours, Video-R1's, verl's and EasyR1's (``data.format``).

:func:`load_data` reads a local json/jsonl/parquet file (the foreign formats through the ``datasets`` library),
converts each row to a :class:`~vt_ray.data.schema.VideoSample` with its media path resolved against a data
root, and never stops on a bad row: the row is skipped and reported with its file and index (and a reason
label, counted). Media paths that leave the root (``../``, symlinks out, absolute paths elsewhere) are bad
rows; a missing media file is counted and listed, and the sample dropped, before training starts.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_ray.config.formats import DATA_FORMATS
from vt_ray.data.formats import easyr1, verl, video_r1
from vt_ray.data.formats.errors import RowError
from vt_ray.data.formats.media import MediaPathError, resolve_media
from vt_ray.data.formats.rows import iter_rows
from vt_ray.data.schema import VideoSample

log = logging.getLogger(__name__)
Converter = Callable[[dict[str, Any], int, Path, Path], VideoSample]
for _name, _convert in (("video_r1", video_r1.convert), ("verl", verl.convert), ("easyr1", easyr1.convert)):
    DATA_FORMATS.register(_name)(_convert)


@dataclass(frozen=True)
class BadRow:
    file: str
    index: int
    """0-based row index (the line number - 1 for JSONL, the array position for a JSON array)."""
    reason: str
    detail: str


@dataclass
class LoadReport:
    """What a data file gave: the usable samples, and everything that was skipped and why."""

    file: str
    format: str
    samples: list[VideoSample] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    missing_media: list[BadRow] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "rows": len(self.samples) + len(self.bad_rows) + len(self.missing_media),
            "samples": len(self.samples),
            "by_media": dict(Counter(s.media for s in self.samples)),
            "by_answer_type": dict(Counter(s.answer_type for s in self.samples)),
            "with_trace": sum(1 for s in self.samples if s.trace),
            "bad_rows": dict(Counter(b.reason for b in self.bad_rows)),
            "missing_media": len(self.missing_media),
        }

    def log_problems(self, limit: int = 5) -> None:
        for b in (self.bad_rows + self.missing_media)[:limit]:
            log.warning("%s row %d skipped (%s): %s", b.file, b.index, b.reason, b.detail)


def _project_rows(path: Path) -> Iterator[dict[str, Any] | RowError]:
    """Our own JSONL, one json.loads per line. Not through ``datasets``: Arrow would unify the free-form
    ``extra`` dicts across rows (adding null keys), so the samples would not come back as written."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with path.open(newline="\n") as f:  # rows end at "\n" only (a "\r" inside a row is JSON whitespace)
        for line in f:
            if not line.strip():
                yield RowError("blank_line", "empty line")
                continue
            try:
                value = json.loads(line)
                yield value if isinstance(value, dict) else RowError("bad_row", "not a JSON object")
            except json.JSONDecodeError as err:
                yield RowError("bad_json", str(err))


@DATA_FORMATS.register("project")
def _project_convert(row: dict[str, Any], index: int, file: Path, root: Path) -> VideoSample:
    try:
        sample = VideoSample(**row)
    except (TypeError, ValueError) as err:
        raise RowError("bad_row", str(err)) from err
    # Our own files may name absolute paths (curation writes where the source videos are).
    try:
        sample.video = str(resolve_media(sample.video, root, allow_absolute=True))
    except MediaPathError as err:
        raise RowError("path_escape", str(err)) from err
    return sample


def load_data(path: str | Path, format: str = "project", root: str | Path | None = None,
              check_media: bool = True, on_row: Callable[[LoadReport], None] | None = None) -> LoadReport:
    """Samples of ``path`` in ``format`` (a registered name or ``package.module:function``, see
    :data:`vt_ray.config.formats.DATA_FORMATS`), media resolved against ``root`` (default: the file's
    directory). ``on_row`` sees the report after every row (``data check`` drives its progress line with it)."""
    convert: Converter = DATA_FORMATS.get(format)  # an unknown name raises ConfigError naming data.format
    path = Path(path)
    base = Path(root if root else path.parent).resolve()  # once: rows are checked against it
    report = LoadReport(str(path), format)
    rows: Iterable[Any] = _project_rows(path) if format == "project" else iter_rows(path)
    uids: set[str] = set()
    for index, row in enumerate(rows):
        _take_row(report, row, index, convert, base, uids, check_media)
        if on_row is not None:
            on_row(report)
    return report


def _take_row(report: LoadReport, row: Any, index: int, convert: Converter, base: Path, uids: set[str],
              check_media: bool) -> None:
    """One row into ``report``: a sample, a bad row or a missing media file (a blank line is no row)."""
    path = Path(report.file)
    try:
        if isinstance(row, RowError):
            raise row
        sample = convert(row, index, path, base)
        if sample.uid in uids:
            raise RowError("duplicate_uid", f"uid {sample.uid!r} already seen")
    except RowError as err:
        if err.reason != "blank_line":
            report.bad_rows.append(BadRow(str(path), index, err.reason, err.detail))
        return
    if check_media and not Path(sample.video).is_file():
        report.missing_media.append(BadRow(str(path), index, "missing_media", sample.video))
        return
    uids.add(sample.uid)
    report.samples.append(sample)





class NoUsableSamples(ValueError):
    """A data file gave no sample at all (wrong format, wrong root, every media file missing)."""


def load_samples(path: str | Path, format: str = "project", root: str | Path | None = None,
                 check_media: bool = True) -> list[VideoSample]:
    """The usable samples of a training/validation file; what was skipped is logged and printed (counts per
    reason, the first few rows with file and index). Raises NoUsableSamples when nothing is left."""
    report = load_data(path, format, root, check_media)
    skipped = len(report.bad_rows) + len(report.missing_media)
    if skipped:
        print(f"[data] {path}: {len(report.samples)} samples, skipped {len(report.bad_rows)} bad rows "
              f"{report.counts()['bad_rows']} and {len(report.missing_media)} with missing media "
              f"(python -m vt_ray data check lists them)", flush=True)
        report.log_problems()
    if not report.samples:
        raise NoUsableSamples(f"{path}: no usable sample in format {format!r} (root {root or Path(path).parent}); "
                              f"run python -m vt_ray data check")
    return report.samples
__all__ = ["BadRow", "LoadReport", "NoUsableSamples", "load_data", "load_samples"]
