"""Reward section of the recipe (filled in by the rewards stage)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RewardConfig:
    """Placeholder until the reward module lands: the paper's r = r_accuracy + r_format."""
