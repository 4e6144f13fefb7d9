"""verl custom reward: ``custom_reward_function.path=<site-packages>/vt_ray/interop/verl_reward.py``,
``custom_reward_function.name=compute_score``.

verl's reward managers call ``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)``
(verl/workers/reward_manager/naive.py; ground_truth = ``reward_model["ground_truth"]``) plus the
``custom_reward_function.reward_kwargs``, which here are ``reward.*`` recipe keys (e.g. ``format_mode``,
``answer_rules``). It returns a dict: ``score`` (what verl trains on; older verl versions read ``reward``,
also given) and every component of ours (accuracy, format, temporal_iou, caption_similarity, length_penalty),
which verl logs. A ground truth we cannot read scores 0 (and ``errors`` 1).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from vt_ray.interop.targets import target_for
from vt_ray.rewards.composite import RewardScorer
from vt_ray.rewards.config import RewardConfig


@lru_cache(maxsize=8)
def _scorer(items: tuple[tuple[str, Any], ...]) -> RewardScorer:
    return RewardScorer(RewardConfig(**dict(items)))


def score_components(
    response: str, ground_truth: Any, extra_info: Any = None, **reward_kwargs: Any
) -> dict[str, float]:
    scorer = _scorer(tuple(sorted(reward_kwargs.items())))
    try:
        target = target_for(ground_truth, extra_info if isinstance(extra_info, dict) else None)
    except (ValueError, TypeError, KeyError):
        zero = {name: 0.0 for name in scorer.weights}
        return {**zero, "total": 0.0, "errors": 1.0, "timeouts": 0.0}
    return scorer.score(response if isinstance(response, str) else str(response or ""), target)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None,
                  **reward_kwargs: Any) -> dict[str, float]:
    """Our composite reward of ``solution_str`` (verl's signature); ``data_source`` is not needed."""
    out = score_components(solution_str, ground_truth, extra_info, **reward_kwargs)
    return {"score": out["total"], "reward": out["total"], **{k: v for k, v in out.items() if k != "total"}}
