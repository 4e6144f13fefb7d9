"""GRPO from the recipe's ``algorithm`` section: advantages for a batch, and the loss (+ metrics) for a
micro-batch. The learner calls these two functions; everything else in :mod:`vt_ray.algo` is their parts.

Per step: scores [N] (one per response, from the rewards) and group ids -> :func:`compute_grpo_advantages`
-> advantages [N] and a keep mask [N]; then per micro-batch :func:`grpo_objective` with the policy's log-probs,
the rollout (old) log-probs and the reference log-probs of the response tokens.
"""

from __future__ import annotations

import torch

from vt_ray.algo.advantages import GroupIds, compute_advantages, group_inverse, nonzero_variance_mask
from vt_ray.algo.config import AlgorithmConfig
from vt_ray.algo.loss_terms import (
    POLICY_LOSSES,
    Aggregation,
    agg_loss,
    entropy_from_logits,
    kl_estimate,
    kl_penalized_scores,
    zero_masked,
)


def _stats(x: torch.Tensor, prefix: str) -> dict[str, float]:
    x = x.detach().double()
    if x.numel() == 0:
        return {}
    std = x.std().item() if x.numel() > 1 else 0.0
    return {
        f"{prefix}mean": x.mean().item(),
        f"{prefix}std": std,
        f"{prefix}min": x.min().item(),
        f"{prefix}max": x.max().item(),
    }


def compute_grpo_advantages(
    cfg: AlgorithmConfig, scores: torch.Tensor, group_ids: GroupIds, lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(advantages [N], keep [N] bool, metrics). ``keep`` is False for responses of zero-variance groups
    when ``filter_zero_variance_groups`` is on: multiply it into the token mask (they then do not count in
    any denominator). ``lengths`` [N]: response token counts (token-weighted estimators such as REINFORCE++).
    The metrics cover rewards, advantages and group statistics."""
    scores = scores.detach()
    varied = nonzero_variance_mask(scores, group_ids)  # [N]
    keep = varied if cfg.filter_zero_variance_groups else torch.ones_like(varied)  # [N]
    adv = compute_advantages(cfg.adv_estimator, scores, group_ids, cfg, lengths)
    adv = torch.where(keep, adv, torch.zeros_like(adv))  # [N]
    inverse, n_groups = group_inverse(group_ids)
    group_varied = torch.zeros(n_groups, dtype=torch.bool).index_put_((inverse,), varied)  # [G]
    metrics = {
        **_stats(scores, "reward/score_"),
        **_stats(adv, "algo/advantage_"),
        "algo/groups": float(n_groups),
        "algo/zero_variance_group_frac": 1.0 - group_varied.double().mean().item() if n_groups else 0.0,
        "algo/kept_frac": keep.double().mean().item() if keep.numel() else 0.0,
    }
    return adv, keep, metrics


def apply_kl_in_reward(
    cfg: AlgorithmConfig, scores: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scores minus the KL penalty when ``use_kl_in_reward`` (else unchanged), before the advantages."""
    if not (cfg.use_kl_in_reward and cfg.kl_coef > 0):
        return scores, {}
    penalized = kl_penalized_scores(scores, old_logp, ref_logp, mask, cfg.kl_coef, cfg.kl_estimator)  # [N]
    return penalized, {"algo/kl_in_reward": ((scores - penalized) / cfg.kl_coef).mean().item()}


def grpo_objective(
    cfg: AlgorithmConfig,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    agg: dict[str, float | None],
    *,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss = policy loss + kl_coef * KL (if ``use_kl_loss``) - entropy_coef * entropy, and its terms (tensors,
    keys without the ``actor/`` prefix). The one place these terms are put together: the learner's loss
    (:func:`vt_ray.algo.objective.make_loss`) and :func:`grpo_loss` both call it.

    logp, old_logp, ref_logp, entropy, weights (per-token importance weights, TIS): [N, T]; advantages: [N];
    ``agg``: :class:`~vt_ray.algo.loss_terms.Aggregation`'s num_tokens, num_seqs and scale.
    """
    pg_loss, pg = POLICY_LOSSES.get(cfg.policy_loss)(logp, old_logp, advantages, mask, cfg,
                                                     Aggregation(cfg.loss_agg_mode, **agg), weights)
    loss = pg_loss
    terms = {"pg_loss": pg_loss, **{f"pg_{k}": v for k, v in pg.items()}}
    if cfg.use_kl_loss and cfg.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("algorithm.use_kl_loss with kl_coef > 0 needs reference log-probs (ref_logp)")
        kl_mat = kl_estimate(zero_masked(logp, mask), zero_masked(ref_logp.detach(), mask), cfg.kl_estimator)
        kl = agg_loss(kl_mat, mask, cfg.loss_agg_mode, **agg)
        loss = loss + cfg.kl_coef * kl
        terms["kl_loss"] = kl
    if entropy is not None:
        ent = agg_loss(zero_masked(entropy, mask), mask, cfg.loss_agg_mode, **agg)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * ent
        terms["entropy"] = ent
    elif cfg.entropy_coef > 0:
        raise ValueError("algorithm.entropy_coef > 0 needs the policy's entropy")
    return loss, terms


def grpo_loss(
    cfg: AlgorithmConfig,
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`grpo_objective` on plain tensors, metrics as floats named as the learner logs them.

    ``old_logp`` None means on-policy (ratio 1, the rollout is this policy); ``logits`` [N, T, V] aligned with the
    tokens give the entropy when ``entropy`` is not given. ``num_tokens``/``num_seqs``: global denominators, see
    :func:`vt_ray.algo.loss_terms.agg_loss`.
    """
    old = logp.detach() if old_logp is None else old_logp
    if entropy is None and logits is not None:
        entropy = entropy_from_logits(logits)  # [N, T]
    agg = {"num_tokens": num_tokens, "num_seqs": num_seqs, "scale": scale or cfg.loss_scale_factor or None}
    loss, terms = grpo_objective(cfg, logp, old, advantages, mask, agg, ref_logp=ref_logp, entropy=entropy)
    metrics = {f"actor/{k}": v.item() for k, v in terms.items()}
    metrics["actor/loss"] = loss.item()
    return loss, metrics
