"""The GRPO loss behind the learner's ``grpo`` loss name (``vt_ray.learner.losses``): an adapter from the
learner's micro-batch contract to :mod:`vt_ray.algo.losses`.

Contract (see ``vt_ray.learner.losses``): ``loss_fn(logprobs [B, L], batch, norm)`` returns this micro-batch's
*share* of the mini-batch loss and metric shares, so sums over micro-batches and ranks give the mini-batch
values. Shares come from dividing by the mini-batch counts in ``norm`` instead of local counts.

Reads from the batch: ``seq_extras["advantages"]`` [B]; ``token_extras["old_logprobs"]`` (recomputed by the
learner) or else ``token_extras["rollout_logprobs"]`` (the sampling engine's) as the behaviour policy, or
on-policy (ratio 1) when neither is present; ``token_extras["ref_logprobs"]`` for the KL loss.
Entropy: the function's ``entropy`` attribute asks the learner for the policy's per-token entropy
(``token_extras["entropy"]``): "grad" for a bonus (``algorithm.entropy_coef > 0``), "metric" to log it
(``algorithm.log_entropy``), None for neither. Limits: ``norm.num_sequences`` counts every sequence, including ones a
zero-variance filter masked out, so seq-mean modes divide by slightly more than :func:`agg_loss` would.
"""

from __future__ import annotations

from typing import Any

import torch

from vt_ray.algo.config import AlgorithmConfig
from vt_ray.algo.losses import agg_loss, kl_estimate, policy_loss, zero_masked


def make_loss(cfg: Any):
    """The GRPO loss function bound to a recipe (or directly to an :class:`AlgorithmConfig`)."""
    acfg: AlgorithmConfig = getattr(cfg, "algorithm", cfg)
    use_kl = acfg.use_kl_loss and acfg.kl_coef > 0

    def grpo_loss_share(logprobs: torch.Tensor, batch: Any, norm: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch.response_mask.to(logprobs.device)  # [B, L]
        extras = batch.token_extras
        old = extras.get("old_logprobs", extras.get("rollout_logprobs"))
        old = logprobs.detach() if old is None else old.to(logprobs)  # [B, L]
        adv = batch.seq_extras["advantages"].to(logprobs)  # [B]
        agg = {"num_tokens": max(norm.num_tokens, 1), "num_seqs": max(norm.num_sequences, 1)}
        pg_loss, stats = policy_loss(
            logprobs,
            old,
            adv,
            mask,
            clip_ratio_low=acfg.clip_ratio_low,
            clip_ratio_high=acfg.clip_ratio_high,
            dual_clip_c=acfg.dual_clip_c,
            loss_agg_mode=acfg.loss_agg_mode,
            **agg,
        )
        local_share = mask.sum() / agg["num_tokens"]  # turns a local token mean into a mini-batch share
        metrics = {"actor/pg_loss": pg_loss.detach()}
        for key in ("clipfrac", "ppo_kl", "clipfrac_lower"):
            if key in stats:
                metrics[f"actor/pg_{key}"] = stats[key] * local_share
        loss = pg_loss
        if use_kl:
            if "ref_logprobs" not in extras:
                raise ValueError("algorithm.use_kl_loss needs token_extras['ref_logprobs'] (reference log-probs)")
            ref = zero_masked(extras["ref_logprobs"].to(logprobs), mask)  # [B, L]
            kl = agg_loss(kl_estimate(zero_masked(logprobs, mask), ref, acfg.kl_estimator), mask,
                          acfg.loss_agg_mode, **agg)  # fmt: skip
            loss = loss + acfg.kl_coef * kl
            metrics["actor/kl_loss"] = kl.detach()
        if "entropy" in extras:
            ent = agg_loss(zero_masked(extras["entropy"].to(logprobs), mask), mask, acfg.loss_agg_mode, **agg)
            metrics["actor/entropy"] = ent.detach()
            if acfg.entropy_coef > 0:
                loss = loss - acfg.entropy_coef * ent
        elif acfg.entropy_coef > 0:
            raise ValueError("algorithm.entropy_coef > 0 needs token_extras['entropy'] from the learner")
        return loss, metrics

    grpo_loss_share.entropy = "grad" if acfg.entropy_coef > 0 else ("metric" if acfg.log_entropy else None)
    return grpo_loss_share
