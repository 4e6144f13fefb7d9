"""The per-item evaluation record: one JSON line per (benchmark, uid, frame count).

The runner writes one record per finished item (``results.jsonl``, the resume key is :meth:`ItemResult.key`);
the report reads them back and aggregates. A record holds both the inputs the metrics need (gold answer,
annotated windows, reference captions, the raw response) and the per-item outputs of
:func:`vt_ray.eval.metrics.score_item`, so a report can be rebuilt without the model or the dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


class RecordFormatError(ValueError):
    """A results line is not a valid :class:`ItemResult`; names the file and line."""


@dataclass
class ItemResult:
    benchmark: str
    """Benchmark display name (EvalConfig.benchmarks[].name)."""
    uid: str
    """VideoSample.uid: unique within the benchmark."""
    frames: int
    """Input frame count of this run (the frame-count sweep)."""
    response: str
    """Raw model output."""
    gold_answer: str
    answer_type: str = "multiple_choice"
    category: str = ""
    """Benchmark's own question category (question type / task type), for per-category accuracy."""
    predicted_answer: str | None = None
    """Normalised prediction (an option letter for multiple choice), None when none could be extracted."""
    correct: bool = False
    format_valid: bool = False
    """See metrics.format_valid: no trace violation and at least one complete time/caption/think triple."""
    violations: list[str] = field(default_factory=list)
    """vt_ray.trace violation codes of the response."""
    pred_windows: list[list[float]] = field(default_factory=list)
    """Parsed <time> windows of the response, in order."""
    gt_windows: list[list[float]] = field(default_factory=list)
    """Annotated evidence windows (empty: the item has no grounding annotation)."""
    iou: float | None = None
    """Per-item grounding IoU (metrics.item_iou); None when the item has no annotated windows."""
    best_ious: list[float] = field(default_factory=list)
    """Best IoU of each annotated window against the predicted ones (aligned with gt_windows)."""
    pred_captions: list[str] = field(default_factory=list)
    """<caption> contents of the response, in order."""
    ref_captions: list[str] = field(default_factory=list)
    """Reference descriptions aligned with gt_windows (empty: no captioning annotation)."""
    matched_captions: list[str] = field(default_factory=list)
    """Hypothesis caption for each reference (metrics.match_captions), aligned with ref_captions."""
    revisited_window: bool = False
    revised_caption: bool = False
    reflective: bool = False
    """Response uses a self-reflection cue ("wait", "hmm", "let me re-check", ...)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Runner-specific extras (latency, token counts, video duration, error text)."""

    def key(self) -> tuple[str, str, int]:
        """Resume/dedup key: a finished (benchmark, uid, frames) is not run again."""
        return (self.benchmark, self.uid, self.frames)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemResult:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        return cls(**data)


def write_results(path: str | Path, results: Iterable[ItemResult], *, append: bool = False) -> int:
    """Write records as JSONL (append=True for the runner's incremental, resumable writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("a" if append else "w") as f:
        for r in results:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def iter_results(path: str | Path) -> Iterator[ItemResult]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield ItemResult.from_json(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise RecordFormatError(f"{path}:{lineno}: {err}") from err


def read_results(path: str | Path) -> list[ItemResult]:
    """All records; a later record with the same key replaces an earlier one (a re-run item wins)."""
    latest: dict[tuple[str, str, int], ItemResult] = {}
    for r in iter_results(path):
        latest[r.key()] = r
    return list(latest.values())
