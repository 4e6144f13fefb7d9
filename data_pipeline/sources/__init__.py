"""Source adapters: each reads one dataset's PUBLISHED annotation file into :class:`SourceRecord` s.

``read_source(name, path, **kw)`` is what the curation pipeline calls (data_pipeline.pipeline.read_records)
for every source but ``records``. Every module's docstring cites where its format comes from and says what
could not be confirmed. Errors (see data_pipeline.sources._common): an unknown name is a ConfigError (a
ValueError) listing the known ones; a missing file a FileNotFoundError naming it; a file that is not the format at all a
SourceFormatError (ValueError) naming the file and the expected format; a malformed entry is skipped and
counted in the :class:`SourceStats` passed as ``stats=`` (and logged as a warning when the file is done).
Duplicate uids within a file are skipped and counted too: the uid is the pipeline's resume and dedup key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data_pipeline.sources import activitynet_captions, lvbench, scalelong, star, tutorialvqa, youcook2
from data_pipeline.sources._common import SourceFormatError, SourceStats
from data_pipeline.sources.record import Segment, SourceRecord
from vt_ray.config.curate import CURATION_SOURCES

Reader = Callable[..., Iterator[SourceRecord]]
"""``read(path, stats, **kw)``: loads and checks the file eagerly, returns a lazy iterator of records."""

for _name, _read in (("activitynet_captions", activitynet_captions.read), ("tutorialvqa", tutorialvqa.read),
                     ("youcook2", youcook2.read), ("star", star.read), ("scalelong", scalelong.read),
                     ("lvbench", lvbench.read)):
    CURATION_SOURCES.register(_name)(_read)  # the built-in names, known statically in vt_ray.config.curate


def read_source(name: str, path: str | Path, *, stats: SourceStats | None = None,
                **kw: Any) -> Iterator[SourceRecord]:
    """The records of one annotation file. The file is opened and its format checked now; the records are
    produced lazily. ``stats`` (optional) is filled in as the iterator is consumed; ``kw`` goes to the reader
    (e.g. ``video_ext=".mkv"``, YouCook2 ``subset="training"``, TutorialVQA ``videos_path=...``)."""
    reader: Reader = CURATION_SOURCES.get(name)  # an unknown name raises ConfigError (a ValueError) listing them
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} annotation file not found: {path}")
    stats = stats if stats is not None else SourceStats(name, str(path))
    stats.source, stats.path = name, str(path)
    return _tracked(reader(path, stats, **kw), stats)


def _tracked(records: Iterator[SourceRecord], stats: SourceStats) -> Iterator[SourceRecord]:
    """Count what is yielded, drop duplicate uids, and report (or refuse the file) once it is read."""
    seen: set[str] = set()
    try:
        for record in records:
            if record.uid in seen:
                stats.skip(f"uid {record.uid!r}", "duplicate uid (the first one is kept)")
                continue
            seen.add(record.uid)
            stats.records += 1
            yield record
    except GeneratorExit:  # the caller stopped early (a ``limit``): report what was read so far
        stats.finish(complete=False)
        raise
    stats.finish()


__all__ = ["Segment", "SourceFormatError", "SourceRecord", "SourceStats", "read_source"]
