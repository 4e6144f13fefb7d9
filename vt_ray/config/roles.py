"""What each role reads of the recipe: its own section plus the few keys of other sections it needs, named.

A learner rank or a rollout worker is built from one of these, not from the whole :class:`RecipeConfig`, so what a
role depends on is written down in one place (and a backend written by a user sees exactly that). The driver, which
does read the whole recipe, builds them with ``of(cfg)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vt_ray.algo.config import AlgorithmConfig
from vt_ray.config.learner import LearnerConfig
from vt_ray.config.resources import GpuRoleResources
from vt_ray.config.schema import DataConfig, ModelConfig, PromptConfig, RecipeConfig, RolloutConfig, VideoConfig


@dataclass(frozen=True)
class LearnerRoleConfig:
    """A learner rank's view of the recipe (``Backend(role, rank, world_size)``)."""

    learner: LearnerConfig
    algorithm: AlgorithmConfig
    """The loss functions' clip ratios and KL/entropy terms."""
    model: ModelConfig
    """The policy's path and the dtype engines serve (what weights are exported and streamed in)."""
    resources: GpuRoleResources
    """``resources.learner``: GPUs per rank (CPU or CUDA)."""
    seed: int
    """``run.seed`` (each rank seeds ``seed + rank``)."""
    weight_sync_timeout_s: float
    """``rollout.weight_sync_timeout_s``: how long rank 0's stream store waits for the engines."""
    max_response_tokens: int
    """``rollout.max_tokens``: Dr. GRPO's constant normaliser when ``algorithm.loss_scale_factor`` is 0."""

    @classmethod
    def of(cls, cfg: RecipeConfig) -> LearnerRoleConfig:
        return cls(learner=cfg.learner, algorithm=cfg.algorithm, model=cfg.model, resources=cfg.resources.learner,
                   seed=cfg.run.seed, weight_sync_timeout_s=cfg.rollout.weight_sync_timeout_s,
                   max_response_tokens=cfg.rollout.max_tokens)


@dataclass(frozen=True)
class RolloutRoleConfig:
    """A rollout worker's view of the recipe (``RolloutWorker(role, rank)``). The group builds it: ``rollout`` has
    ``kv_cache_gib: auto`` already resolved from the whole recipe (how many sequences one call generates), which is
    the one thing a worker cannot know from its own section."""

    rollout: RolloutConfig
    model: ModelConfig
    video: VideoConfig
    """Frame sampling and sizing of the prompts the worker renders."""
    prompt: PromptConfig
    data: DataConfig
    """``max_prompt_tokens`` and ``overlong_policy``: the prompt budget."""
    seed: int
    """``run.seed`` (each worker's engine seeds ``seed + rank``)."""
    sequences_per_call: int
    """Sequences one engine gets in a training rollout call (:func:`sequences_per_call`): what
    ``rollout.kv_cache_gib: auto`` is sized for, with the model's ``config.json`` where the worker runs."""

    @classmethod
    def of(cls, cfg: RecipeConfig) -> RolloutRoleConfig:
        return cls(rollout=cfg.rollout, model=cfg.model, video=cfg.video, prompt=cfg.prompt, data=cfg.data,
                   seed=cfg.run.seed, sequences_per_call=sequences_per_call(cfg))


def sequences_per_call(cfg: RecipeConfig) -> int:
    """Sequences one engine gets in a training rollout call, capped by ``rollout.max_num_seqs``."""
    ro, algo, tc = cfg.rollout, cfg.algorithm, cfg.trainer
    prompts = math.ceil(tc.prompts_per_step * (algo.oversample_factor if algo.dynamic_sampling else 1.0))
    per_engine = math.ceil(prompts / max(cfg.resources.rollout.num_workers, 1))
    per_prompt = ro.n + ((algo.tgrpo_shuffled_n or ro.n) if algo.tgrpo else 0)
    return min(ro.max_num_seqs, per_engine * per_prompt)


__all__ = ["LearnerRoleConfig", "RolloutRoleConfig", "sequences_per_call"]
