"""Rewards: accuracy and format (the paper's r = r_acc + r_format), optional grounding/caption/length rewards,
user rewards by import path, and the composite scorer shared by the trainer and the ``score`` command."""

from vt_ray.rewards.composite import RewardScorer, reward_metrics, score_response
from vt_ray.rewards.config import CustomRewardConfig, RewardConfig
from vt_ray.rewards.target import RewardTarget

__all__ = ["CustomRewardConfig", "RewardConfig", "RewardScorer", "RewardTarget", "reward_metrics", "score_response"]
