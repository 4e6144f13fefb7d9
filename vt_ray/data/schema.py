"""The project's training/eval sample schema and its JSONL reader/writer.

One JSON object per line. SFT uses ``trace``; GRPO and evaluation use question, options, answer, windows and
captions. Every source (synthetic data, curated data, benchmark loaders) writes this schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vt_ray.rewards.target import ANSWER_TYPES, OPTION_LETTERS, RewardTarget  # noqa: F401 (re-exported)

MEDIA_TYPES = ("video", "image")


class SampleFormatError(ValueError):
    """A dataset line does not follow the schema; names the file and line."""


ANSWER_WEIGHT = "answer_weight"
"""``VideoSample.extra`` key: SFT's loss weight on the tokens of the trace's answer (default 1; the rest of the
trace keeps 1). 0 withholds the answer: its tokens stay in the context with no loss (issue 16's "answer withheld"
SFT: format and captions are taught, the answer is left to GRPO); above 1 stresses a one-token answer against a
~48-token trace (the reading look-ups, :mod:`vt_ray.data.learnable`)."""


@dataclass
class VideoSample:
    uid: str
    """Unique and stable across runs: the resume and dedup key."""
    video: str
    """Media file path (a video, or an image when ``media`` is "image"); relative paths resolve against the
    dataset file's directory."""
    question: str
    answer: str
    """Option letter for multiple choice, a number for numeric, text otherwise."""
    options: list[str] = field(default_factory=list)
    """Option texts in letter order (A, B, ...), without the letters."""
    answer_type: str = "multiple_choice"
    duration: float | None = None
    """Video duration in seconds, when known (format reward checks windows against it)."""
    windows: list[list[float]] = field(default_factory=list)
    """Ground-truth evidence windows [[start, end], ...] in seconds."""
    captions: list[str] = field(default_factory=list)
    """Reference descriptions aligned with ``windows``."""
    trace: str | None = None
    """Gold structured trace (<time>/<caption>/<think>/<answer>), the SFT target."""
    source: str = ""
    category: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    media: str = "video"
    """video | image: what ``video`` points at (Video-R1 mixes image and video samples)."""

    def __post_init__(self) -> None:
        if self.media not in MEDIA_TYPES:
            raise ValueError(f"media must be one of {MEDIA_TYPES}, got {self.media!r}")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {self.answer_type!r}")
        if self.answer_type == "multiple_choice":
            letters = OPTION_LETTERS[: len(self.options)]
            if not self.options or self.answer not in letters:
                raise ValueError(f"multiple-choice answer {self.answer!r} is not one of the options {letters!r}")
        if len(self.captions) not in (0, len(self.windows)):
            raise ValueError("captions must be empty or aligned one-to-one with windows")
        for w in self.windows:
            if len(w) != 2 or not 0 <= w[0] <= w[1]:
                raise ValueError(f"bad window {w!r}: need [start, end] with 0 <= start <= end")

    def options_text(self) -> str:
        """Options as the prompt shows them: one ``A. text`` per line."""
        return "\n".join(f"{OPTION_LETTERS[i]}. {text}" for i, text in enumerate(self.options))

    def option_rotations(self, k: int) -> list[VideoSample]:
        """``k`` copies of this sample whose options are rotated by evenly spaced shifts (``k`` = the number of
        options puts the gold answer under every letter once); the first is this sample itself, the others get
        the uid ``<uid>~rot<shift>``. Samples without options are copied unchanged (uids still distinct).
        GRPO's option-rotation groups (``algorithm.option_rotations``) are built from them."""
        if k < 1:
            raise ValueError(f"option_rotations needs k >= 1, got {k}")
        m = len(self.options)
        rotated = [self]
        for j in range(1, k):
            shift = (j * m) // k if m else j
            if self.answer_type != "multiple_choice" or not m:
                rotated.append(replace(self, uid=f"{self.uid}~rot{shift}"))
                continue
            gold = (OPTION_LETTERS.index(self.answer) - shift) % m
            options = self.options[shift:] + self.options[:shift]
            rotated.append(replace(self, uid=f"{self.uid}~rot{shift}", options=options, answer=OPTION_LETTERS[gold]))
        return rotated

    def reward_target(self) -> RewardTarget:
        """What a response to this sample is scored against (the ground truth, without the video)."""
        return RewardTarget(
            answer=self.answer,
            answer_type=self.answer_type,
            options=tuple(self.options),
            windows=tuple((float(w[0]), float(w[1])) for w in self.windows),
            captions=tuple(self.captions),
            duration=self.duration,
            rules=str(self.extra.get("answer_rules", "project")),
            extra={"uid": self.uid, "category": self.category, "source": self.source, "media": self.media},
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def video_path(self, dataset_dir: str | Path) -> Path:
        p = Path(self.video)
        return p if p.is_absolute() else Path(dataset_dir) / p


def read_samples(path: str | Path) -> list[VideoSample]:
    return list(iter_samples(path))


def iter_samples(path: str | Path) -> Iterator[VideoSample]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield VideoSample(**json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise SampleFormatError(f"{path}:{lineno}: {err}") from err


def write_samples(path: str | Path, samples: Iterable[VideoSample]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w") as f:
        for s in samples:
            f.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def resolve_video_paths(samples: Iterable[VideoSample], dataset_dir: str | Path) -> list[VideoSample]:
    """Samples with absolute video paths, so they can be shipped to workers on any node sharing the storage."""
    base = Path(dataset_dir).resolve()
    return [replace(s, video=str(s.video_path(base))) for s in samples]
