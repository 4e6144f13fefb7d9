"""The GRPO loss behind the learner's ``grpo`` loss name (``vt_ray.learner.losses``): an adapter from the
learner's micro-batch contract to :mod:`vt_ray.algo.loss_terms`.

Contract (see ``vt_ray.learner.losses``): ``loss_fn(logprobs [B, L], batch, norm)`` returns this micro-batch's
*share* of the mini-batch loss and metric shares, so sums over micro-batches and ranks give the mini-batch
values. Shares come from dividing by the mini-batch counts in ``norm`` instead of local counts.

Reads from the batch (typed fields of :class:`~vt_ray.learner.batch.TrainBatch`, never string keys):
``batch.advantages`` [B]; the behaviour (old) policy by ``algorithm.behaviour_logprobs``: ``engine`` ->
``batch.behaviour_logprobs`` (the sampling engine's), ``recompute`` -> ``batch.old_logprobs`` (the learner's,
required), ``auto`` -> ``batch.old_logprobs`` when the driver recomputed them, else on-policy (ratio 1);
``batch.ref_logprobs`` for the KL loss. A batch still carrying one of the retired string keys
(``old_logprobs``, ``ref_logprobs``, ``rollout_logprobs``, ``sampler_logprobs``, ``entropy`` in ``token_extras``;
``advantages`` in ``seq_extras``) is an error: it would otherwise be silently ignored.
Engine/learner mismatch: when ``batch.behaviour_logprobs`` is present and the learner's pre-update log-probs
are at hand (``batch.old_logprobs``, or this forward itself when there is no recomputed old policy), the loss
logs ``actor/engine_learner_abs_diff_mean|max`` and ``actor/engine_learner_k3_kl`` and, with
``algorithm.tis_cap`` > 0, weights each token by min(pi_learner_old / pi_engine, tis_cap).
Entropy: the function's ``entropy`` attribute asks the learner for the policy's per-token entropy
(``batch.entropy``): "grad" for a bonus (``algorithm.entropy_coef > 0``), "metric" to log it
(``algorithm.log_entropy``), None for neither. Limits: ``norm.num_sequences`` counts every sequence, including ones a
zero-variance filter masked out, so seq-mean modes divide by slightly more than :func:`agg_loss` would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vt_ray.algo.config import AlgorithmConfig
from vt_ray.algo.grpo import grpo_objective
from vt_ray.algo.loss_terms import (
    LOG_RATIO_CLAMP,
    POLICY_LOSSES,
    kl_estimate,
    masked_sum,
    zero_masked,
)

RETIRED_KEYS = ("old_logprobs", "ref_logprobs", "rollout_logprobs", "sampler_logprobs", "entropy")
RETIRED_SEQ_KEYS = ("advantages",)

LossShare = Callable[[torch.Tensor, Any, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def behaviour_policy(acfg: AlgorithmConfig, logprobs: torch.Tensor, batch: Any) -> tuple[torch.Tensor, str]:
    """(old log-probs [B, L] for the ratio, which source they came from: engine | recomputed | on-policy)."""
    mode = acfg.behaviour_logprobs
    if mode == "engine":
        if batch.behaviour_logprobs is None:
            raise ValueError("algorithm.behaviour_logprobs=engine needs batch.behaviour_logprobs (engine log-probs)")
        return batch.behaviour_logprobs.to(logprobs), "engine"
    if batch.old_logprobs is not None:
        return batch.old_logprobs.to(logprobs), "recomputed"
    if mode == "recompute":
        raise ValueError("algorithm.behaviour_logprobs=recompute needs batch.old_logprobs (learner recompute)")
    return logprobs.detach(), "on-policy"


def mismatch_stats(
    learner: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor, num_tokens: float
) -> dict[str, torch.Tensor]:
    """Engine-vs-learner log-prob mismatch of the sampled tokens: token-mean shares of |diff| and of the k3
    estimate of KL(engine || learner) (the tokens were sampled by the engine), and the max |diff|."""
    learner, engine = learner.double(), engine.double()  # float64: a float32 k3 of a 1e-6 mismatch underflows to 0
    diff = zero_masked((learner - engine).abs(), mask)  # [B, L]
    k3 = kl_estimate(zero_masked(engine, mask), zero_masked(learner, mask), "k3")  # [B, L]
    return {
        "actor/engine_learner_abs_diff_mean": masked_sum(diff, mask) / num_tokens,
        "actor/engine_learner_abs_diff_max": diff.max() if diff.numel() else diff.sum(),
        "actor/engine_learner_k3_kl": masked_sum(k3, mask) / num_tokens,
    }


def tis_weights(learner_old: torch.Tensor, engine: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated IS weights min(pi_learner_old / pi_engine, cap) per token [B, L], without gradient."""
    log_w = (learner_old.detach() - engine.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_w).clamp(max=cap)


class GRPOLoss:
    """The bound loss function: called as ``loss(logprobs, batch, norm)``; ``entropy`` is what it needs from the
    learner ("grad", "metric" or None, see the module docstring)."""

    def __init__(self, share: LossShare, entropy: str | None) -> None:
        self._share = share
        self.entropy = entropy

    def __call__(self, logprobs: torch.Tensor, batch: Any, norm: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._share(logprobs, batch, norm)


def make_loss(cfg: Any) -> GRPOLoss:
    """The GRPO loss function bound to a recipe, a learner's role config (vt_ray.config.roles) or directly to an
    :class:`AlgorithmConfig`."""
    acfg: AlgorithmConfig = getattr(cfg, "algorithm", cfg)
    use_kl = acfg.use_kl_loss and acfg.kl_coef > 0
    rollout = getattr(cfg, "rollout", None)  # a whole recipe; a learner's role config carries the budget itself
    budget = rollout.max_tokens if rollout is not None else getattr(cfg, "max_response_tokens", None)
    scale = acfg.loss_scale_factor or budget  # Dr. GRPO's constant
    POLICY_LOSSES.get(acfg.policy_loss)  # an unknown name fails here, when the loss is bound, not mid-step

    def grpo_loss_share(logprobs: torch.Tensor, batch: Any, norm: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch.response_mask.to(logprobs.device)  # [B, L]
        retired = sorted(set(RETIRED_KEYS) & set(batch.token_extras)) + sorted(
            set(RETIRED_SEQ_KEYS) & set(batch.seq_extras))
        if retired:
            raise ValueError(f"extras {retired}: these are typed TrainBatch fields now (old_logprobs, ref_logprobs, "
                             "behaviour_logprobs, entropy, advantages)")
        if batch.advantages is None:
            raise ValueError("the GRPO loss needs batch.advantages (set by the driver before the update)")
        old, source = behaviour_policy(acfg, logprobs, batch)  # [B, L]
        adv = batch.advantages.to(logprobs)  # [B]
        agg = {"num_tokens": max(norm.num_tokens, 1), "num_seqs": max(norm.num_sequences, 1), "scale": scale}
        metrics: dict[str, torch.Tensor] = {}
        weights = None
        if batch.behaviour_logprobs is not None:
            engine = batch.behaviour_logprobs.to(logprobs)  # [B, L]
            # The learner's pre-update policy: recomputed by the driver, or else this very forward (the driver
            # only skips the recompute when the step makes a single update).
            learner_old = (logprobs if batch.old_logprobs is None else batch.old_logprobs.to(logprobs)).detach()
            if acfg.log_logprob_mismatch:
                metrics.update({k: v.detach() for k, v in mismatch_stats(learner_old, engine, mask,
                                                                         agg["num_tokens"]).items()})
            if acfg.truncated_is_cap > 0:
                weights = tis_weights(learner_old, engine, acfg.truncated_is_cap)  # [B, L]
                metrics["actor/tis_weight_mean"] = masked_sum(weights, mask) / agg["num_tokens"]
                metrics["actor/tis_capped_frac"] = (
                    masked_sum((weights >= acfg.truncated_is_cap).to(weights), mask) / agg["num_tokens"]
                )
        elif acfg.truncated_is_cap > 0:
            raise ValueError("algorithm.tis_cap > 0 needs batch.behaviour_logprobs (engine log-probs)")
        ref = None if batch.ref_logprobs is None else batch.ref_logprobs.to(logprobs)  # [B, L]
        entropy = None if batch.entropy is None else batch.entropy.to(logprobs)  # [B, L]
        if use_kl and ref is None:
            raise ValueError("algorithm.use_kl_loss needs batch.ref_logprobs (reference log-probs)")
        if acfg.entropy_coef > 0 and entropy is None:
            raise ValueError("algorithm.entropy_coef > 0 needs batch.entropy from the learner")
        loss, terms = grpo_objective(acfg, logprobs, old, adv, mask, agg, ref_logp=ref if use_kl else None,
                                     entropy=entropy, weights=weights)
        local_share = mask.sum() / agg["num_tokens"]  # turns a local token mean into a mini-batch share
        metrics["actor/pg_loss"] = terms["pg_loss"].detach()
        for key in ("clipfrac", "ppo_kl", "clipfrac_lower"):
            if f"pg_{key}" in terms:
                metrics[f"actor/pg_{key}"] = terms[f"pg_{key}"] * local_share
        for key in ("kl_loss", "entropy"):
            if key in terms:
                metrics[f"actor/{key}"] = terms[key].detach()
        return loss, metrics

    return GRPOLoss(grpo_loss_share, "grad" if acfg.entropy_coef > 0 else ("metric" if acfg.log_entropy else None))
