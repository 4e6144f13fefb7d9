"""The terms of the GRPO-family losses (pure torch): policy losses, KL estimators, entropy, loss aggregation, each
registered by name (:mod:`vt_ray.algo.registry`). :mod:`vt_ray.algo.objective` puts them together into the loss a
learner calls; :mod:`vt_ray.learner.losses` is the learner's side of that call.

Shapes: N responses, T response tokens (right-padded), V vocabulary. ``mask`` [N, T] is 1 on response tokens
that count. Masked-out positions are removed with ``torch.where`` (not multiplied by 0), so padding holding
-inf or NaN log-probs cannot leak NaN into the loss or its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vt_ray.algo import registry

LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps a wild ratio finite; the clip decides the loss anyway
K3_CLAMP = 10.0  # as in verl's low_var_kl: bounds the k3 estimate of a single token
GSPO_LOG_RATIO_MAX = 10.0  # as verl: bounds the sequence ratio before exp (the tiny clip decides anyway)


def zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with masked-out entries set to 0 *before* any arithmetic, so -inf/NaN padding gives no NaN grads."""
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over masked-in entries; 0 where there are none (instead of NaN)."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1)


AGG_MODES = registry.LOSS_AGG_MODES
KL_ESTIMATORS = registry.KL_ESTIMATORS
POLICY_LOSSES = registry.POLICY_LOSSES


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [N, T] to a scalar with the aggregation registered as ``mode``.

    ``num_tokens``/``num_seqs`` replace the local denominators: pass the global counts of the whole batch so
    that micro-batch (or per-rank) losses add up to the full-batch loss under gradient accumulation. ``scale``
    is the constant of seq-mean-token-sum-norm (default: T, as verl). Responses with no kept token do not count.
    """
    loss: torch.Tensor = AGG_MODES.get(mode)(loss_mat, mask.bool(), num_tokens=num_tokens, num_seqs=num_seqs,
                                             scale=scale)
    return loss


def _seq_denominator(mask: torch.Tensor, num_seqs: float | None) -> torch.Tensor | float:
    return num_seqs if num_seqs is not None else mask.any(dim=-1).sum().clamp_min(1)


@AGG_MODES.register("token-mean")
def agg_token_mean(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """sum_{i,t} L_it / sum_{i,t} m_it: every response token weighs the same (DAPO section 3.3, token-level
    policy gradient loss)."""
    denom = num_tokens if num_tokens is not None else mask.sum().clamp_min(1)
    return masked_sum(loss_mat, mask) / denom


@AGG_MODES.register("seq-mean-token-sum")
def agg_seq_mean_token_sum(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """(1/N) sum_i sum_t L_it: per-response token sum, averaged over responses."""
    return masked_sum(masked_sum(loss_mat, mask, dim=-1), mask.any(dim=-1)) / _seq_denominator(mask, num_seqs)


@AGG_MODES.register("seq-mean-token-mean")
def agg_seq_mean_token_mean(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """(1/N) sum_i (1/|o_i|) sum_t L_it: the original GRPO objective (DeepSeekMath eq. 3) and GSPO's."""
    per_seq = masked_mean(loss_mat, mask, dim=-1)  # [N]
    return masked_sum(per_seq, mask.any(dim=-1)) / _seq_denominator(mask, num_seqs)


@AGG_MODES.register("seq-mean-token-sum-norm")
def agg_seq_mean_token_sum_norm(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """(1/N) sum_i sum_t L_it / C with a constant C (Dr. GRPO, Liu et al. 2025, section 3.2: no per-response
    length normalisation; C = the generation budget, ``algorithm.loss_scale_factor``; default T as verl)."""
    constant = float(scale) if scale else float(mask.shape[-1])
    return agg_seq_mean_token_sum(loss_mat, mask, num_tokens=num_tokens, num_seqs=num_seqs) / constant


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    dual_clip_c: float = 0.0,
    loss_agg_mode: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    token_weights: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with separate low/high clips and optional dual clip; returns (loss, stats).

    logp, old_logp, mask: [N, T]; advantages: [N] (one per response) or [N, T].
    Per token: L = max(-A r, -A clip(r, 1 - low, 1 + high)); with dual clip and A < 0, L = min(L, -A c).
    ``token_weights`` [N, T] (no gradient; e.g. truncated IS weights of the engine/learner mismatch) multiply
    each token's L before aggregation.
    """
    logp, old_logp = zero_masked(logp, mask), zero_masked(old_logp.detach(), mask)  # [N, T] each
    adv = _per_token(advantages)
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T]
    ratio = torch.exp(log_ratio)  # [N, T]
    unclipped = -adv * ratio  # [N, T]
    clipped = -adv * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)  # [N, T]
    losses = torch.maximum(unclipped, clipped)  # [N, T]
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask).detach(),
        "ppo_kl": masked_mean(-log_ratio, mask).detach(),  # k1 estimate of KL(old || new)
        "ratio_max": torch.where(mask.bool(), ratio, torch.zeros_like(ratio)).max().detach(),
    }
    if dual_clip_c > 0:
        cap = -adv * dual_clip_c  # [N, 1] or [N, T]
        negative = (adv < 0).expand_as(losses)  # [N, T]
        stats["clipfrac_lower"] = masked_mean((negative & (losses > cap)).to(logp.dtype), mask).detach()
        losses = torch.where(negative, torch.minimum(losses, cap), losses)  # [N, T]
    if token_weights is not None:
        losses = losses * zero_masked(token_weights.detach(), mask)  # [N, T]
    loss = agg_loss(losses, mask, loss_agg_mode, num_tokens=num_tokens, num_seqs=num_seqs, scale=scale)
    return loss, stats


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    adv = advantages.detach()
    return adv.unsqueeze(-1) if adv.dim() == 1 else adv  # [N, 1] or [N, T]


@dataclass(frozen=True)
class Aggregation:
    """How a policy loss reduces its per-token matrix: the mode and the global denominators of the mini-batch."""

    mode: str = "token-mean"
    num_tokens: float | None = None
    num_seqs: float | None = None
    scale: float | None = None

    def __call__(self, loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return agg_loss(loss_mat, mask, self.mode, num_tokens=self.num_tokens, num_seqs=self.num_seqs,
                        scale=self.scale)


# Registered policy losses: fn(logp, old_logp, advantages, mask, cfg, agg, token_weights=None) -> (loss, stats).
# ``cfg`` is the AlgorithmConfig (clip ranges); stats are token means over this call's kept tokens.


@POLICY_LOSSES.register("vanilla")
def vanilla_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: Any,
    agg: Aggregation,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7) as in GRPO (DeepSeekMath eq. 3) with DAPO's
    decoupled clip (DAPO section 3.1, clip-higher) and optional dual clip (Ye et al. 2020, eq. 5):
    L_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high)); A < 0 and dual clip: min(L_t, -A c)."""
    return policy_loss(logp, old_logp, advantages, mask, clip_ratio_low=cfg.clip_ratio_low,
                       clip_ratio_high=cfg.clip_ratio_high, dual_clip_c=cfg.dual_clip_c, loss_agg_mode=agg.mode,
                       num_tokens=agg.num_tokens, num_seqs=agg.num_seqs, token_weights=token_weights,
                       scale=agg.scale)


def _seq_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/|o_i|) sum_t (log pi - log pi_old) per response [N] (the length-normalised sequence log-ratio)."""
    return masked_sum(logp - old_logp, mask, dim=-1) / mask.to(logp.dtype).sum(-1).clamp_min(1)


def _gspo_from_ratio(
    seq_ratio: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: Any,
    agg: Aggregation,
    token_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    adv = _per_token(advantages)
    unclipped = -adv * seq_ratio  # [N, T]
    clipped = -adv * seq_ratio.clamp(1 - cfg.seq_clip_ratio_low, 1 + cfg.seq_clip_ratio_high)  # [N, T]
    losses = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        losses = losses * zero_masked(token_weights.detach(), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask).detach(),
        "ppo_kl": masked_mean(-(logp - old_logp), mask).detach(),
    }
    return agg(losses, mask), stats


@POLICY_LOSSES.register("gspo")
def gspo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: Any,
    agg: Aggregation,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071, eq. 5-7): s_i = (pi(o_i)/pi_old(o_i))^(1/|o_i|)
    = exp(mean_t log r_it); L_i = max(-A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high)) with the sequence
    clip range (``seq_clip_ratio_*``, paper 3e-4/4e-4), averaged over responses (seq-mean-token-mean)."""
    logp, old_logp = zero_masked(logp, mask), zero_masked(old_logp.detach(), mask)
    seq_lr = _seq_log_ratio(logp, old_logp, mask).clamp(max=GSPO_LOG_RATIO_MAX)  # [N]
    seq_ratio = torch.exp(seq_lr).unsqueeze(-1)  # [N, 1], gradient through every token of the response
    return _gspo_from_ratio(seq_ratio, logp, old_logp, advantages, mask, cfg, agg, token_weights)


@POLICY_LOSSES.register("gspo_token")
def gspo_token_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: Any,
    agg: Aggregation,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO-token (arXiv 2507.18071, eq. 13-14): s_it = sg[s_i] pi(o_it) / sg[pi(o_it)], so a per-token
    advantage A_it may be used; equal to GSPO in value and gradient when A_it = A_i."""
    logp, old_logp = zero_masked(logp, mask), zero_masked(old_logp.detach(), mask)
    seq_lr = _seq_log_ratio(logp, old_logp, mask).detach().unsqueeze(-1)  # [N, 1]
    log_ratio = (logp - logp.detach() + seq_lr).clamp(max=GSPO_LOG_RATIO_MAX)  # [N, T]
    return _gspo_from_ratio(torch.exp(log_ratio), logp, old_logp, advantages, mask, cfg, agg, token_weights)


@POLICY_LOSSES.register("cispo")
def cispo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: Any,
    agg: Aggregation,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4-5): L_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A log pi_t:
    the IS weight is clipped and stop-gradient, so every token keeps a gradient (none is clipped away)."""
    logp, old_logp = zero_masked(logp, mask), zero_masked(old_logp.detach(), mask)
    adv = _per_token(advantages)
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high).detach()
    losses = -weight * adv * logp
    if token_weights is not None:
        losses = losses * zero_masked(token_weights.detach(), mask)
    stats = {
        "clipfrac": masked_mean((ratio != weight).to(logp.dtype), mask).detach(),
        "ppo_kl": masked_mean(-log_ratio, mask).detach(),
    }
    return agg(losses, mask), stats


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs [N, T], by the estimator
    registered as ``estimator`` (k1/k2/k3 built in)."""
    kl: torch.Tensor = KL_ESTIMATORS.get(estimator)(logp, ref_logp)
    return kl


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log p - log q (Schulman 2020, "Approximating KL divergence"): unbiased, high variance, can be < 0."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log p - log q)^2 / 2 (Schulman 2020): biased, low variance, its gradient is KL's."""
    return 0.5 * (logp - ref_logp).square()


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = q/p - log(q/p) - 1 (Schulman 2020; GRPO, DeepSeekMath eq. 4): unbiased, >= 0, low variance; the
    log-ratio clamped to +-20 and the estimate to [-10, 10], as verl's low_var_kl."""
    neg = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T] log q/p
    return (torch.exp(neg) - neg - 1).clamp(-K3_CLAMP, K3_CLAMP)


def kl_penalized_scores(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """KL as a reward penalty: score - coef * sum_t KL_t per response ([N]). Use rollout (no-grad) log-probs."""
    kl = kl_estimate(zero_masked(logp.detach(), mask), zero_masked(ref_logp.detach(), mask), estimator)  # [N, T]
    return scores - coef * masked_sum(kl, mask, dim=-1)  # [N]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dim: logsumexp(z) - sum softmax(z) z. [..., V] -> [...]."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)
