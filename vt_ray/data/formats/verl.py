"""verl's RL parquet: read one, and write ours as one.

Format (volcengine/verl examples/data_preprocess/geo3k.py, verl/utils/dataset/rl_dataset.py and
vision_utils.py): rows ``{data_source: str, prompt: [{"role", "content"}], images: [{"image": path}],
videos: [{"video": path}], ability: str, reward_model: {"style": "rule", "ground_truth": str},
extra_info: {...}}``; the content holds ``<image>``/``<video>`` placeholders where the media go; media
entries are qwen-vl-utils dicts (``"file:///path"`` or a plain path).

Export (vt_ray.interop.export): the prompt is our rendered chat (system + user with a ``<video>``/``<image>``
placeholder before the question, the recipe's prompt style), ground_truth is the plain answer, and
``extra_info`` carries ``answer_type``, ``options`` and the whole sample as JSON (``vt_ray_sample``) so
:func:`vt_ray.interop.verl_reward.compute_score` scores exactly as our trainer does and our loader reads the
same samples back.

Read: rows we exported come back exactly; a foreign row gives question = the user turns without
placeholders, answer = ``reward_model.ground_truth``, and ``extra_info.answer_type``/``options`` when given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vt_ray.data.formats._common import SAMPLE_KEY, generic_sample, media_of, sample_from_json
from vt_ray.data.formats.errors import RowError
from vt_ray.data.schema import VideoSample


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of {"type", "text"} parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def convert(row: dict[str, Any], index: int, file: Path, root: Path) -> VideoSample:
    extra = row.get("extra_info") or {}
    if isinstance(extra, dict) and extra.get(SAMPLE_KEY):
        return sample_from_json(extra[SAMPLE_KEY], root)
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise RowError("bad_prompt", f"prompt must be a list of chat messages, got {type(prompt).__name__}")
    question = "\n".join(_text(m.get("content")) for m in prompt if isinstance(m, dict) and m.get("role") == "user")
    reward_model = row.get("reward_model") or {}
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if truth is None or not str(truth).strip():
        raise RowError("bad_ground_truth", "reward_model.ground_truth is missing")
    media = media_of(row, "images", "videos", root)
    hints = extra if isinstance(extra, dict) else {}
    return generic_sample(f"{file.stem}:{index}", question, str(truth).strip(), media, hints,
                          str(row.get("data_source") or "verl"))
