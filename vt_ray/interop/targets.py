"""The :class:`RewardTarget` behind a foreign framework's ground truth.

In order: our sample carried in ``extra_info["vt_ray_sample"]`` (verl rows we exported); a JSON
``{"vt_ray_target": {...}}`` ground truth (EasyR1 rows we exported, where only the answer column reaches the
reward); a Video-R1 solution ``<answer>X</answer>`` (graded by Video-R1's rules, the type from
``extra_info["problem_type"]``); a plain answer, typed by ``extra_info["answer_type"]``/``options`` when
given, else numeric when it parses as a number, else free text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vt_ray.data.formats._common import SAMPLE_KEY
from vt_ray.data.formats.easyr1 import TARGET_KEY
from vt_ray.data.schema import VideoSample
from vt_ray.rewards.target import RewardTarget
from vt_ray.rewards.video_r1 import TO_ANSWER_TYPE, extract_answer


def target_for(ground_truth: Any, extra_info: Mapping[str, Any] | None = None) -> RewardTarget:
    """Raises ValueError/TypeError/KeyError on a ground truth it cannot read (callers score that 0)."""
    extra = dict(extra_info or {})
    if extra.get(SAMPLE_KEY):
        raw = extra[SAMPLE_KEY]
        return VideoSample(**(json.loads(raw) if isinstance(raw, str) else raw)).reward_target()
    truth = ground_truth if isinstance(ground_truth, str) else json.dumps(ground_truth)
    text = truth.strip()
    if text.startswith("{") and TARGET_KEY in text:
        return RewardTarget.from_json(json.loads(text)[TARGET_KEY])
    line: dict[str, Any] = {"answer": text, "options": extra.get("options") or [],
                            "answer_type": extra.get("answer_type")}
    if "<answer>" in text:
        line["answer"], line["rules"] = extract_answer(text), "video_r1"
        if extra.get("problem_type") in TO_ANSWER_TYPE:
            line["answer_type"] = TO_ANSWER_TYPE[extra["problem_type"]]
    return RewardTarget.from_json(line)
