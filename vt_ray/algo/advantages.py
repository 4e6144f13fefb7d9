"""Advantage estimators (pure torch): one scalar per response from the rewards of its group or batch.

Responses are matched to groups by id, not by position, so a batch may be in any order and groups may have
different sizes (e.g. after dropping a failed rollout). A group of one response gets advantage 0: it has no
baseline to compare against (verl passes the raw reward through instead; a deliberate difference, tested
against verl's numbers). The group std is Bessel-corrected (``torch.std`` default), as in verl and TRL.

Registered estimators (:data:`vt_ray.algo.registry.ADV_ESTIMATORS`) share one signature:
``fn(scores [N], group_ids, cfg: AlgorithmConfig, lengths [N] response token counts) -> advantages [N]``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from vt_ray.algo import registry

GroupIds = torch.Tensor | Sequence[Hashable]


def group_inverse(group_ids: GroupIds) -> tuple[torch.Tensor, int]:
    """Dense group index per response ([N] long, values in [0, G)) and the number of groups G."""
    if isinstance(group_ids, torch.Tensor):
        _, inverse = torch.unique(group_ids, return_inverse=True)  # [N]
        return inverse.long(), int(inverse.max().item()) + 1 if inverse.numel() else 0
    index: dict[Hashable, int] = {}
    inverse = torch.tensor([index.setdefault(g, len(index)) for g in group_ids], dtype=torch.long)  # [N]
    return inverse, len(index)


def group_stats(scores: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, ...]:
    """Per-group count, mean and Bessel-corrected std ([G] each; std is 0 for groups of one)."""
    count = torch.zeros(n_groups, dtype=scores.dtype).index_add_(0, inverse, torch.ones_like(scores))  # [G]
    mean = torch.zeros(n_groups, dtype=scores.dtype).index_add_(0, inverse, scores) / count  # [G]
    sq_dev = (scores - mean[inverse]) ** 2  # [N]
    var = torch.zeros(n_groups, dtype=scores.dtype).index_add_(0, inverse, sq_dev) / (count - 1).clamp_min(1)  # [G]
    return count, mean, var.sqrt()


def grpo_advantages(
    scores: torch.Tensor, group_ids: GroupIds, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps); without ``norm_by_std`` just r - mean_group (Dr. GRPO)."""
    inverse, n_groups = group_inverse(group_ids)
    count, mean, std = group_stats(scores, inverse, n_groups)  # [G] each
    adv = scores - mean[inverse]  # [N]
    if norm_by_std:
        adv = adv / (std[inverse] + eps)  # [N]
    return torch.where(count[inverse] > 1, adv, torch.zeros_like(adv))  # [N]


def rloo_advantages(
    scores: torch.Tensor, group_ids: GroupIds, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_group); optionally divided by the group std + eps."""
    inverse, n_groups = group_inverse(group_ids)
    count, mean, std = group_stats(scores, inverse, n_groups)  # [G] each
    n = count[inverse]  # [N]
    adv = (scores - mean[inverse]) * n / (n - 1).clamp_min(1)  # [N]
    if norm_by_std:
        adv = adv / (std[inverse] + eps)  # [N]
    return torch.where(n > 1, adv, torch.zeros_like(adv))  # [N]


def token_weighted_whiten(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(v - mean) / sqrt(var + 1e-8) with every response weighted by its token count: the batch whitening of
    per-token returns that REINFORCE++ does (each response's return repeats on each of its tokens), with the
    Bessel-corrected variance over all tokens (verl ``masked_whiten``)."""
    w = lengths.to(values.dtype)
    n = w.sum()
    mean = (w * values).sum() / n
    var = (w * (values - mean) ** 2).sum() / n * (n / (n - 1).clamp_min(1))
    return (values - mean) * torch.rsqrt(var + 1e-8)


AdvantageFn = Callable[..., torch.Tensor]
ADV_ESTIMATORS = registry.ADV_ESTIMATORS


@ADV_ESTIMATORS.register("grpo")
def grpo_estimator(
    scores: torch.Tensor, group_ids: GroupIds, cfg: Any, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath section 4.1.2, outcome supervision): A_i = (r_i - mean(r_group)) /
    (std(r_group) + eps); without ``cfg.norm_by_std`` just r_i - mean (Dr. GRPO)."""
    return grpo_advantages(scores, group_ids, norm_by_std=cfg.norm_by_std, eps=cfg.eps)


@ADV_ESTIMATORS.register("dr_grpo")
def dr_grpo_estimator(
    scores: torch.Tensor, group_ids: GroupIds, cfg: Any, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", section 3.2): A_i = r_i - mean(r_group),
    no std division (pair it with loss_agg_mode seq-mean-token-sum-norm, the constant normaliser)."""
    return grpo_advantages(scores, group_ids, norm_by_std=False, eps=cfg.eps)


@ADV_ESTIMATORS.register("rloo")
def rloo_estimator(
    scores: torch.Tensor, group_ids: GroupIds, cfg: Any, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740, eq. 6): A_i = r_i - mean_{j != i} r_j
    = G/(G-1) (r_i - mean(r_group)); divided by std + eps when ``cfg.norm_by_std``."""
    return rloo_advantages(scores, group_ids, norm_by_std=cfg.norm_by_std, eps=cfg.eps)


@ADV_ESTIMATORS.register("reinforce_plus_plus")
def reinforce_pp_estimator(
    scores: torch.Tensor, group_ids: GroupIds, cfg: Any, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262, section 3.2, global advantage normalisation; outcome reward,
    gamma 1): A_i = (r_i - mean_batch) / std_batch, statistics over all response tokens of the batch."""
    return token_weighted_whiten(scores, _lengths(scores, lengths))


@ADV_ESTIMATORS.register("reinforce_plus_plus_baseline")
def reinforce_pp_baseline_estimator(
    scores: torch.Tensor, group_ids: GroupIds, cfg: Any, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """REINFORCE++-baseline (arXiv 2501.03262 v3+): r_i - mean(r_group) (0 for a group of one), then whitened
    over all response tokens of the batch as REINFORCE++."""
    inverse, n_groups = group_inverse(group_ids)
    count, mean, _ = group_stats(scores, inverse, n_groups)
    centred = torch.where(count[inverse] > 1, scores - mean[inverse], torch.zeros_like(scores))  # [N]
    return token_weighted_whiten(centred, _lengths(scores, lengths))


def _lengths(scores: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(scores) if lengths is None else torch.as_tensor(lengths, dtype=scores.dtype)


def compute_advantages(
    name: str, scores: torch.Tensor, group_ids: GroupIds, cfg: Any = None, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Advantages [N] by estimator name or import path (registry :data:`ADV_ESTIMATORS`)."""
    if cfg is None:
        from vt_ray.algo.config import AlgorithmConfig

        cfg = AlgorithmConfig()
    if name not in ADV_ESTIMATORS.names() and not registry.is_import_path(name):
        raise KeyError(f"unknown advantage estimator {name!r}; registered: {ADV_ESTIMATORS.names()}")
    advantages: torch.Tensor = ADV_ESTIMATORS.get(name)(scores, group_ids, cfg, lengths)
    return advantages


def nonzero_variance_mask(scores: torch.Tensor, group_ids: GroupIds, tol: float = 0.0) -> torch.Tensor:
    """[N] bool: True for responses whose group's rewards are not all equal (max - min > tol)."""
    inverse, n_groups = group_inverse(group_ids)
    fill = torch.full((n_groups,), float("inf"), dtype=scores.dtype)
    lo = fill.scatter_reduce(0, inverse, scores, reduce="amin")  # [G]
    hi = (-fill).scatter_reduce(0, inverse, scores, reduce="amax")  # [G]
    return (hi - lo)[inverse] > tol  # [N]
