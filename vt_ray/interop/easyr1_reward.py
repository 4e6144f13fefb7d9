"""EasyR1 reward function, for
``worker.reward.reward_function=<site-packages>/vt_ray/interop/easyr1_reward.py:compute_score``.

EasyR1 (hiyouga/EasyR1 examples/reward_function/*.py) calls ``compute_score`` with a list of
``{"response", "response_length", "ground_truth"}`` dicts (``REWARD_TYPE = "batch"``) or, for sequential
reward functions, one such dict, plus ``worker.reward.reward_function_kwargs`` (here: ``reward.*`` recipe
keys). It gets back ``{"overall", "format", "accuracy", ...}`` per response. The ground truth is the answer
column; our EasyR1 export writes it as ``{"vt_ray_target": {...}}`` so options, windows and captions reach
the reward (see vt_ray.interop.targets for the other forms accepted).
"""

from __future__ import annotations

from typing import Any

from vt_ray.interop.verl_reward import score_components

REWARD_NAME = "vt_ray"
REWARD_TYPE = "batch"


def _one(reward_input: dict[str, Any], reward_kwargs: dict[str, Any]) -> dict[str, float]:
    out = score_components(reward_input.get("response", ""), reward_input.get("ground_truth", ""), None,
                           **reward_kwargs)
    return {"overall": out["total"], **{k: v for k, v in out.items() if k != "total"}}


def compute_score(reward_inputs: list[dict[str, Any]] | dict[str, Any], **reward_kwargs: Any
                  ) -> list[dict[str, float]] | dict[str, float]:
    if isinstance(reward_inputs, dict):
        return _one(reward_inputs, reward_kwargs)
    return [_one(r, reward_kwargs) for r in reward_inputs]
