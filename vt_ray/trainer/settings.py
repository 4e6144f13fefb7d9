"""Figures every phase of the driver derives from the recipe alone: a step's sampling settings and seed, and
the optimizer steps per training step (the learning-rate schedule's length).

Pure functions of the config, so the rollout phase, validation, the update and the learner set-up agree on them
without holding the trainer, and tests check them without Ray.
"""

from __future__ import annotations

from vt_ray.config.schema import RecipeConfig
from vt_ray.rollout.types import SamplingSettings


def step_seed(cfg: RecipeConfig, step: int) -> int:
    """The seed of a step's rollouts (engine sampling, T-GRPO's frame shuffle): a resumed step draws the same."""
    return cfg.run.seed * 1_000_003 + step


def sampling_for_training(cfg: RecipeConfig, step: int = 0) -> SamplingSettings:
    """A training step's sampling: ``rollout.n`` responses per prompt, split over its option rotations."""
    r, a = cfg.rollout, cfg.algorithm
    shuffled = (a.tgrpo_shuffled_n or r.n // a.option_rotations) if a.tgrpo else 0
    return SamplingSettings(n=r.n // a.option_rotations, temperature=r.temperature, top_p=r.top_p,
                            max_tokens=r.max_tokens, stop=list(r.stop),
                            shuffled_n=shuffled, shuffle_seed=step_seed(cfg, step),
                            min_tokens=r.min_tokens, ignore_eos=r.ignore_eos)


def sampling_for_validation(cfg: RecipeConfig) -> SamplingSettings:
    return SamplingSettings(n=1, temperature=0.0, top_p=1.0, max_tokens=cfg.rollout.max_tokens,
                            stop=list(cfg.rollout.stop))


def minibatches_per_step(cfg: RecipeConfig) -> int:
    """Optimizer steps per update epoch: the step's responses in ``trainer.mini_batch_size`` chunks."""
    responses = cfg.trainer.prompts_per_step * cfg.rollout.n
    size = cfg.trainer.mini_batch_size or responses
    return max(1, -(-responses // size))


def optimizer_steps_total(cfg: RecipeConfig) -> int:
    tc = cfg.trainer
    return tc.total_steps * tc.update_epochs * minibatches_per_step(cfg)
