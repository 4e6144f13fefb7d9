"""Pick the generation backend the recipe asks for; both share one interface (generate, update_weights,
prompt_logprobs, weight_version)."""

from __future__ import annotations

from typing import Any

from vt_ray.config.schema import ModelConfig, RolloutConfig


def make_engine(model: ModelConfig, rollout: RolloutConfig, seed: int = 0, model_path: str | None = None) -> Any:
    if rollout.backend == "hf":
        from vt_ray.rollout.hf_engine import HfEngine

        return HfEngine(model, rollout, seed, model_path)
    from vt_ray.rollout.vllm_engine import VllmEngine

    return VllmEngine(model, rollout, seed, model_path)
