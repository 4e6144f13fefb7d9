"""GRPO losses (pure torch): clipped surrogate, KL estimators, entropy, loss aggregation.

Shapes: N responses, T response tokens (right-padded), V vocabulary. ``mask`` [N, T] is 1 on response tokens
that count. Masked-out positions are removed with ``torch.where`` (not multiplied by 0), so padding holding
-inf or NaN log-probs cannot leak NaN into the loss or its gradient.
"""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps a wild ratio finite; the clip decides the loss anyway
K3_CLAMP = 10.0  # as in verl's low_var_kl: bounds the k3 estimate of a single token


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


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [N, T] to a scalar.

    token-mean: sum over all kept tokens / number of kept tokens.
    seq-mean-token-sum: per-response token sum, averaged over responses.
    seq-mean-token-mean: per-response token mean, averaged over responses.
    Responses with no kept token do not count. ``num_tokens``/``num_seqs`` replace the local denominators:
    pass the global counts of the whole batch so that micro-batch (or per-rank) losses add up to the
    full-batch loss under gradient accumulation.
    """
    mask = mask.bool()
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum().clamp_min(1)
        return masked_sum(loss_mat, mask) / denom
    seq_has_tokens = mask.any(dim=-1)  # [N]
    if mode == "seq-mean-token-sum":
        per_seq = masked_sum(loss_mat, mask, dim=-1)  # [N]
    elif mode == "seq-mean-token-mean":
        per_seq = masked_mean(loss_mat, mask, dim=-1)  # [N]
    else:
        raise ValueError(f"unknown loss_agg_mode {mode!r}")
    denom = num_seqs if num_seqs is not None else seq_has_tokens.sum().clamp_min(1)
    return masked_sum(per_seq, seq_has_tokens) / denom


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with separate low/high clips and optional dual clip; returns (loss, stats).

    logp, old_logp, mask: [N, T]; advantages: [N] (one per response) or [N, T].
    Per token: L = max(-A r, -A clip(r, 1 - low, 1 + high)); with dual clip and A < 0, L = min(L, -A c).
    ``token_weights`` [N, T] (no gradient; e.g. truncated IS weights of the engine/learner mismatch) multiply
    each token's L before aggregation.
    """
    logp, old_logp = zero_masked(logp, mask), zero_masked(old_logp.detach(), mask)  # [N, T] each
    adv = advantages.detach()
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv  # [N, 1] or [N, T]
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
    loss = agg_loss(losses, mask, loss_agg_mode, num_tokens=num_tokens, num_seqs=num_seqs)
    return loss, stats


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs [N, T] (Schulman's k1/k2/k3).

    k1 = log p - log q (unbiased, high variance, can be negative); k2 = (log p - log q)^2 / 2;
    k3 = exp(log q - log p) - (log q - log p) - 1 (unbiased, >= 0, low variance), clamped to [-10, 10].
    """
    log_ratio = logp - ref_logp  # [N, T] log p/q
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        neg = (-log_ratio).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, T] log q/p
        return (torch.exp(neg) - neg - 1).clamp(-K3_CLAMP, K3_CLAMP)
    raise ValueError(f"unknown KL estimator {estimator!r} (k1 | k2 | k3)")


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
