"""The update half of a training step: the scored responses become a learner batch, get their old and reference
log-probs, advantages and loss mask, and train the policy over ``trainer.update_epochs`` x mini-batches.

The learner calls are in :func:`update_policy`; the math between them (:func:`advantages`,
:func:`with_update_metrics`) is pure, so it is read and tested without a learner.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vt_ray.algo.config import AlgorithmConfig
from vt_ray.algo.grpo import apply_kl_in_reward, compute_grpo_advantages
from vt_ray.algo.objective import mismatch_stats
from vt_ray.config.schema import RecipeConfig
from vt_ray.rollout.types import RolloutResult
from vt_ray.trainer.responses import Responses
from vt_ray.trainer.settings import minibatches_per_step

if TYPE_CHECKING:
    from vt_ray.learner.batch import TrainBatch
    from vt_ray.learner.group import LearnerStep


def frames_of(result: RolloutResult) -> np.ndarray | None:
    """The frames the rollout worker attached to ``result`` (None when it encoded them for the learner
    instead): the learner scores on the same pixels."""
    if result.frames is None and result.encoded is None:
        raise ValueError(f"rollout result {result.uid!r} carries no frames: the learner cannot score it")
    return result.frames


def advantages(acfg: AlgorithmConfig, scores: torch.Tensor, data: Responses
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Group-relative advantages of ``scores`` and the responses that count in the loss (DAPO's overlong filter
    drops truncated ones): (advantages, keep mask, metrics)."""
    lengths = torch.tensor(data.token_counts, dtype=torch.float32)
    adv, keep, adv_metrics = compute_grpo_advantages(acfg, scores, data.advantage_groups, lengths)
    if acfg.overlong_filter:  # DAPO overlong filtering: truncated responses do not count in the loss
        from vt_ray.algo.shaping import overlong_filter
        keep, adv_metrics["dapo/overlong_filtered_frac"] = overlong_filter(keep, data.truncated)
    return adv, keep, adv_metrics


def with_update_metrics(metrics: dict[str, float], update: list[dict[str, float]]) -> dict[str, float]:
    """``metrics`` plus the mean of each learner key over the mini-batch updates (bare keys under ``actor/``)."""
    out = dict(metrics)
    for key in update[0]:  # the learner's own keys (loss, grad_norm, lr, ...) go under actor/
        name = key if "/" in key else f"actor/{key}"
        out[name] = sum(u[key] for u in update) / len(update)
        if key.startswith("actor/engine_learner_") and len(update) == 1:  # the one update saw the pre-update policy
            out.setdefault(key.replace("actor/", "rollout/"), update[0][key])
    return out


def update_policy(cfg: RecipeConfig, processor: Any, learner: Any, data: Responses
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Train the learners on ``data`` (scored by the rollout phase, or scores still pending: they are waited for
    while the learners compute the old and reference log-probs); fills ``data.advantages``. Returns (metrics,
    timings)."""
    from vt_ray.learner.batch import Example
    from vt_ray.learner.collate import collate

    examples = [
        Example(prompt=r.prompt, frames=frames_of(r), response_ids=c.token_ids, video_metadata=r.video_metadata,
                uid=r.uid, behaviour_logprobs=c.logprobs, media=r.media, encoded=r.encoded)
        for r in data.results for c in r.completions
    ]
    batch = collate(processor, examples)
    with learner.open_step(batch) as step:  # each rank's shard goes to the object store once for the step
        return _update(cfg, step, batch, data)


def _update(cfg: RecipeConfig, step: LearnerStep, batch: TrainBatch, data: Responses
            ) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`update_policy`'s learner calls on the step's batch ``step`` (``batch`` is its driver-side copy)."""
    timings: dict[str, float] = {}
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    mask = batch.response_mask
    acfg, tc = cfg.algorithm, cfg.trainer
    updates = tc.update_epochs * minibatches_per_step(cfg)
    passes = (["policy"] if acfg.policy_logprob_pass(updates) else []) + (
        ["reference"] if acfg.needs_reference else [])
    pending = step.submit_logprobs(passes) if passes else dict  # the ranks keep them for the train calls
    scoring = data.wait_scores()  # overlapped with the log-prob passes (sync mode without refill)
    if "time/reward_s" in scoring:
        timings["time/reward_s"] = scoring.pop("time/reward_s")
    metrics.update(scoring)
    scores = data.scored_tensor()
    logprobs: dict[str, torch.Tensor] = pending()
    old_logprobs, ref_logprobs = logprobs.get("policy"), logprobs.get("reference")
    if old_logprobs is not None and acfg.log_logprob_mismatch and batch.behaviour_logprobs is not None:
        stats = mismatch_stats(old_logprobs, batch.behaviour_logprobs, mask, max(float(mask.sum()), 1.0))
        metrics.update({k.replace("actor/", "rollout/"): float(v) for k, v in stats.items()})
    timings["time/logprobs_s"] = time.perf_counter() - start
    if ref_logprobs is not None and acfg.use_kl_in_reward:
        current = old_logprobs if old_logprobs is not None else step.logprobs(["policy"], keep=False)["policy"]
        scores, kl_metrics = apply_kl_in_reward(acfg, scores, current, ref_logprobs, mask)
        metrics.update(kl_metrics)
    adv, keep, adv_metrics = advantages(acfg, scores, data)
    metrics.update(adv_metrics)
    data.advantages = adv.float().tolist()
    start = time.perf_counter()
    minibatches = -(-len(batch) // (tc.mini_batch_size or len(batch)))  # the k-th of every rank's rows each
    update: list[dict[str, float]] = []
    for _ in range(tc.update_epochs):
        for part in range(minibatches):
            update.append(step.train(part, minibatches, "grpo", advantages=adv.float(), keep=keep.bool()))
    timings["time/update_s"] = time.perf_counter() - start
    return with_update_metrics(metrics, update), timings
