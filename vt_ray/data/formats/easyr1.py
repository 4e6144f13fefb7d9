"""EasyR1's RL dataset: read one, and write ours as one.

Format (hiyouga/EasyR1 verl/utils/dataset.py RLHFDataset, examples/config.yaml): json/jsonl/parquet rows
``{problem|prompt: str with "<image>"/"<video>" placeholders, answer: str, images: [path] | videos: [path],
...}``; the presence of the images/videos key decides the modality; ``answer`` becomes the reward's
``ground_truth``; ``image_dir`` prefixes relative media paths.

EasyR1 hands only ``ground_truth`` (the answer column) to a reward function, so our export writes the
answer column as JSON ``{"vt_ray_target": {...}}`` (the whole :class:`RewardTarget`: type, options, windows,
captions) for :mod:`vt_ray.interop.easyr1_reward`; ``answer_text`` keeps the plain answer and
``vt_ray_sample`` the whole sample (our loader reads it back exactly). ``problem`` is our rendered user turn
(question + instructions), so run EasyR1 with ``data.format_prompt: null``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vt_ray.data.formats._common import SAMPLE_KEY, generic_sample, media_of, sample_from_json
from vt_ray.data.formats.errors import RowError
from vt_ray.data.schema import VideoSample

TARGET_KEY = "vt_ray_target"


def convert(row: dict[str, Any], index: int, file: Path, root: Path) -> VideoSample:
    if row.get(SAMPLE_KEY):
        return sample_from_json(row[SAMPLE_KEY], root)
    question = row.get("problem") if row.get("problem") is not None else row.get("prompt")
    if not isinstance(question, str) or not question.strip():
        raise RowError("bad_problem", "problem/prompt must be a non-empty string")
    answer = row.get("answer")
    if answer is None or not str(answer).strip():
        raise RowError("bad_answer", "answer is missing")
    hints: dict[str, Any] = {}
    text = str(answer).strip()
    if text.startswith("{"):
        try:
            target = json.loads(text)[TARGET_KEY]
            hints = {"answer_type": target["answer_type"], "options": target["options"]}
            text = str(target["answer"])
        except (ValueError, KeyError, TypeError) as err:
            raise RowError("bad_answer", f"answer looks like JSON but is not a {TARGET_KEY}: {err}") from err
    media = media_of(row, "images", "videos", root)
    return generic_sample(f"{file.stem}:{index}", question, text, media, hints, "easyr1")
