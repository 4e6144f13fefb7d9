"""The contract between a rollout worker and its generation backend, and the registry that names backends.

A backend is a class ``Engine(model: ModelConfig, rollout: RolloutConfig, seed: int, model_path: str | None)``
with the methods of :class:`RolloutEngine`. The built-in ones are ``vllm`` (:mod:`vt_ray.rollout.vllm_engine`,
production) and ``hf`` (:mod:`vt_ray.rollout.hf_engine`, transformers ``generate``, for debugging). A recipe
picks one with ``rollout.backend``: a registered name, or ``package.module:Class`` (imported at load time,
and in every rollout actor). To add one, write the class in a module of your own and either register it::

    from vt_ray.config.backends import ROLLOUT_ENGINES

    @ROLLOUT_ENGINES.register("sglang")
    class SglangEngine: ...

(its module must then be imported before the recipe loads, in the driver and the actors), or point
``rollout.backend`` at it by import path, which needs nothing else. docs/backends.md has a worked example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from vt_ray.rollout.types import GenerationRequest, RolloutResult, SamplingSettings


@runtime_checkable
class RolloutEngine(Protocol):
    """What :class:`vt_ray.rollout.worker.RolloutWorker` calls on its engine."""

    weight_version: int
    """The policy version the engine serves (0: the checkpoint it started from)."""

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingSettings) -> list[RolloutResult]:
        """``sampling.n`` completions per request (plus ``sampling.shuffled_n`` from shuffled frames), with the
        sampled tokens' log-probs, in request order."""
        ...

    def prompt_logprobs(self, text: str) -> list[float]:
        """Per-token log-probs of a text-only prompt: the weight probe compares them with the learner's."""
        ...

    def update_weights(self, weights: bytes | Mapping[str, Any] | None, version: int, /) -> int:
        """Load new policy weights (a safetensors blob or a state dict; None: reload the starting checkpoint),
        all or nothing (``WeightSyncError`` with ``applied`` saying whether any tensor was written)."""
        ...

    def reseed(self, seed: int) -> None:
        """Seed the sampler: a step's rollouts become a function of the seed."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory for the learner phase (colocated layouts); a no-op where nothing is held."""
        ...

    def wake_up(self) -> None:
        ...


@runtime_checkable
class StreamingRolloutEngine(RolloutEngine, Protocol):
    """An engine that also takes streamed weight syncs (``rollout.weight_sync: stream``, the default through
    ``auto``): learner rank 0 broadcasts the policy in buckets and the engine loads them as they arrive. Both
    built-in engines are; a user's engine without these methods gets blob pushes under ``auto``."""

    def check_weight_plan(self, plan: dict[str, Any], /) -> int:
        """Check a streamed sync's plan (:class:`vt_ray.common.weight_stream.StreamPlan` as a dict: names,
        shapes, dtypes) against the model before any bucket is sent; ``WeightSyncError`` naming the tensor."""
        ...

    def receive_weights(self, session: dict[str, Any], base_rank: int, plan: dict[str, Any], version: int,
                        engine_rank: int = 0, /) -> int:
        """Join a streamed sync (:class:`vt_ray.common.weight_stream.StreamSession` as a dict) as rank
        ``base_rank`` (+ worker rank for multi-worker engines) and load the tensors as they arrive; on failure
        drain the stream and raise ``WeightSyncError`` (``applied``: whether any tensor was written)."""
        ...
