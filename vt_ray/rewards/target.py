"""What a response is scored against: the ground truth of one sample, without the video.

Built from a :class:`~vt_ray.data.schema.VideoSample` (``VideoSample.reward_target()``, trainer) or a score-file
line (``score`` command), so both paths score with the same code. Plain data: JSON round-trips it to the reward
worker process. The answer vocabulary (types, option letters) is defined here, below the data schema that uses it.
"""

from __future__ import annotations

import math
import string
from dataclasses import asdict, dataclass, field
from typing import Any

ANSWER_TYPES = ("multiple_choice", "numeric", "free_text", "ocr", "regression")
"""ocr and regression are Video-R1's problem types (graded by its definitions, vt_ray.rewards.video_r1)."""
OPTION_LETTERS = string.ascii_uppercase
ANSWER_RULES = ("project", "video_r1")


@dataclass(frozen=True)
class RewardTarget:
    answer: str
    """Gold answer: option letter (multiple choice), number (numeric) or text (free text)."""
    answer_type: str = "multiple_choice"
    options: tuple[str, ...] = ()
    """Option texts in letter order, without the letters."""
    windows: tuple[tuple[float, float], ...] = ()
    """Ground-truth evidence windows in seconds."""
    captions: tuple[str, ...] = ()
    """Reference captions for the windows."""
    duration: float | None = None
    """Video duration in seconds, when known."""
    rules: str = "project"
    """Which definitions grade the answer: project (vt_ray.rewards.accuracy) | video_r1 (Video-R1's exact ones,
    vt_ray.rewards.video_r1). ocr and regression answers always use Video-R1's (the only ones defined)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Anything else a custom reward may want (e.g. category); ignored by the built-in rewards."""

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {self.answer_type!r}")
        if self.rules not in ANSWER_RULES:
            raise ValueError(f"rules must be one of {ANSWER_RULES}, got {self.rules!r}")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration >= 0):
            raise ValueError(f"duration must be a finite number >= 0, got {self.duration!r}")

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> RewardTarget:
        """From a score-file line ``{"answer", "options"?, "answer_type"?, "windows"?, "captions"?,
        "duration"?, ...}``. Without ``answer_type``: multiple choice if options are given, numeric if the
        answer is a number, else free text. Raises ValueError/TypeError/KeyError on a malformed line."""
        if "answer" not in line:
            raise KeyError("missing 'answer'")
        answer = str(line["answer"]).strip()
        options = tuple(str(o) for o in line.get("options") or ())
        answer_type = line.get("answer_type") or _infer_answer_type(answer, options)
        duration = line.get("duration")
        return cls(
            answer=answer,
            answer_type=answer_type,
            options=options,
            windows=tuple((float(w[0]), float(w[1])) for w in line.get("windows") or ()),
            captions=tuple(str(c) for c in line.get("captions") or ()),
            duration=None if duration is None else float(duration),
            rules=str(line.get("rules") or "project"),
            extra=dict(line.get("extra") or {}),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _infer_answer_type(answer: str, options: tuple[str, ...]) -> str:
    if options:
        return "multiple_choice"
    try:
        float(answer.replace(",", ""))
        return "numeric"
    except ValueError:
        return "free_text"
