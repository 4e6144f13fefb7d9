"""The record every source adapter yields: one video with its segment captions and/or one question.

``SourceRecord.to_dict()`` is exactly what the curation steps read (data_pipeline.steps: ``new_row``,
``qa_sample``, ``caption_windows``, ``complete``, ``finish``) and what a ``records`` JSONL line holds, so a
record validated here never fails there for a structural reason. Validation happens in ``__post_init__`` and
every error names the record's uid, so a reader can skip and count the entry instead of crashing the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from vt_ray.data.schema import ANSWER_TYPES
from vt_ray.rewards.accuracy import extract_choice


def _number(value: Any, what: str) -> float:
    """A finite float from an int/float (bool is rejected: ``True`` is not a time)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def check_span(start: Any, end: Any, what: str) -> tuple[float, float]:
    """``(start, end)`` in seconds with ``0 <= start <= end``; ValueError naming ``what`` otherwise."""
    s, e = _number(start, f"{what} start"), _number(end, f"{what} end")
    if s < 0:
        raise ValueError(f"{what} starts before 0 s ({s})")
    if s > e:
        raise ValueError(f"{what} start {s} > end {e}")
    return s, e


@dataclass
class Segment:
    """A captioned time span of the video, in seconds."""

    start: float
    end: float
    caption: str

    def __post_init__(self) -> None:
        self.start, self.end = check_span(self.start, self.end, "segment")
        if not isinstance(self.caption, str) or not self.caption.strip():
            raise ValueError(f"segment caption must be a non-empty string, got {self.caption!r}")
        self.caption = self.caption.strip()

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "caption": self.caption}


def _segment(value: Any) -> Segment:
    if isinstance(value, Segment):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"start", "end", "caption"}
        if unknown:
            raise ValueError(f"segment has unknown keys {sorted(unknown)}")
        return Segment(value.get("start"), value.get("end"), value.get("caption"))  # type: ignore[arg-type]
    raise ValueError(f"segment must be a Segment or a dict, got {type(value).__name__}")


def _window(value: Any, i: int) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"window {i} must be [start, end], got {value!r}")
    return list(check_span(value[0], value[1], f"window {i}"))


@dataclass
class SourceRecord:
    """One curation input. Caption-only (``segments``), QA-only (``question``/``answer``) or both."""

    uid: str
    """Unique within the source; the pipeline prefixes the source name (``<source>/<uid>``)."""
    source: str
    video: str
    """Path relative to the source's ``video_root``, or absolute."""
    duration: float | None = None
    segments: list[Segment] = field(default_factory=list)
    question: str | None = None
    options: list[str] | None = None
    """Option texts in letter order, without the letters (multiple choice only)."""
    answer: str | None = None
    """Option letter (or the option's text) for multiple choice; a number for numeric; text otherwise."""
    answer_type: str = "multiple_choice"
    windows: list[list[float]] = field(default_factory=list)
    """Gold evidence windows [[start, end], ...] in seconds (QA records)."""
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.uid, str) or not self.uid.strip():
            raise ValueError(f"record uid must be a non-empty string, got {self.uid!r}")
        try:
            self._validate()
        except (TypeError, ValueError) as err:
            raise ValueError(f"record {self.uid!r}: {err}") from err

    def _validate(self) -> None:
        for name in ("source", "video"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if self.duration is not None:
            self.duration = _number(self.duration, "duration")
            if self.duration < 0:
                raise ValueError(f"duration must be >= 0, got {self.duration}")
        if not isinstance(self.segments, list):
            raise ValueError(f"segments must be a list, got {type(self.segments).__name__}")
        segments = []
        for i, seg in enumerate(self.segments):
            try:
                segments.append(_segment(seg))
            except ValueError as err:
                raise ValueError(f"segment {i}: {err}") from err
        self.segments = segments
        if not isinstance(self.windows, list):
            raise ValueError(f"windows must be a list, got {type(self.windows).__name__}")
        self.windows = [_window(w, i) for i, w in enumerate(self.windows)]
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {self.answer_type!r}")
        if self.options is not None:
            if not isinstance(self.options, list) or not all(isinstance(o, str) and o.strip() for o in self.options):
                raise ValueError(f"options must be a list of non-empty strings, got {self.options!r}")
            self.options = [o.strip() for o in self.options]
        if self.category is not None and not isinstance(self.category, str):
            raise ValueError(f"category must be a string, got {self.category!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a dict, got {type(self.extra).__name__}")
        self._validate_qa()

    def _validate_qa(self) -> None:
        if isinstance(self.answer, (int, float)) and not isinstance(self.answer, bool):
            self.answer = str(self.answer)  # numeric answers travel as text, as in the training schema
        has_question = self.question is not None and str(self.question).strip() != ""
        has_answer = self.answer is not None and str(self.answer).strip() != ""
        if has_question != has_answer:
            raise ValueError("question and answer must be given together")
        if not has_question:
            self.question = self.answer = None
            return
        if not isinstance(self.question, str) or not isinstance(self.answer, str):
            raise ValueError("question and answer must be strings")
        self.question, self.answer = self.question.strip(), self.answer.strip()
        if self.answer_type == "multiple_choice":
            if not self.options or len(self.options) < 2:
                raise ValueError("a multiple-choice question needs at least 2 options")
            if extract_choice(self.answer, self.options) is None:
                raise ValueError(f"answer {self.answer!r} is neither an option letter nor an option's text")
        elif self.answer_type == "numeric":
            try:
                float(self.answer)
            except ValueError:
                raise ValueError(f"numeric answer {self.answer!r} is not a number") from None

    @property
    def has_qa(self) -> bool:
        """Question and answer present: the pipeline captions the windows (or uses the segments)."""
        return bool(self.question) and self.answer not in (None, "")

    @property
    def has_captions(self) -> bool:
        """Captioned segments present: without QA the pipeline synthesises a multi-hop question from them."""
        return bool(self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "source": self.source, "video": self.video, "duration": self.duration,
                "segments": [s.to_dict() for s in self.segments], "question": self.question,
                "options": list(self.options) if self.options is not None else None, "answer": self.answer,
                "answer_type": self.answer_type, "windows": [list(w) for w in self.windows],
                "category": self.category, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceRecord:
        """The inverse of :meth:`to_dict`; unknown keys are an error (a typo would otherwise drop data)."""
        if not isinstance(data, dict):
            raise ValueError(f"a SourceRecord dict is expected, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"record {data.get('uid')!r}: unknown keys {sorted(unknown)}")
        missing = {"uid", "source", "video"} - set(data)
        if missing:
            raise ValueError(f"record {data.get('uid')!r}: missing keys {sorted(missing)}")
        kwargs = dict(data)
        for key in ("segments", "windows"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        if kwargs.get("extra") is None:
            kwargs.pop("extra", None)
        return cls(**kwargs)
