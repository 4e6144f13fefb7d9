"""Group-relative advantages (pure torch): one scalar per response from the rewards of its group.

Responses are matched to groups by id, not by position, so a batch may be in any order and groups may have
different sizes (e.g. after dropping a failed rollout). A group of one response gets advantage 0: it has no
baseline to compare against. The group std is Bessel-corrected (``torch.std`` default), as in verl and TRL.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

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


def grpo_advantages(scores: torch.Tensor, group_ids: GroupIds, norm_by_std: bool = True, eps: float = 1e-6):
    """(r - mean_group) / (std_group + eps); without ``norm_by_std`` just r - mean_group (Dr. GRPO)."""
    inverse, n_groups = group_inverse(group_ids)
    count, mean, std = group_stats(scores, inverse, n_groups)  # [G] each
    adv = scores - mean[inverse]  # [N]
    if norm_by_std:
        adv = adv / (std[inverse] + eps)  # [N]
    return torch.where(count[inverse] > 1, adv, torch.zeros_like(adv))  # [N]


def rloo_advantages(scores: torch.Tensor, group_ids: GroupIds, norm_by_std: bool = True, eps: float = 1e-6):
    """r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_group); optionally divided by the group std + eps."""
    inverse, n_groups = group_inverse(group_ids)
    count, mean, std = group_stats(scores, inverse, n_groups)  # [G] each
    n = count[inverse]  # [N]
    adv = (scores - mean[inverse]) * n / (n - 1).clamp_min(1)  # [N]
    if norm_by_std:
        adv = adv / (std[inverse] + eps)  # [N]
    return torch.where(n > 1, adv, torch.zeros_like(adv))  # [N]


AdvantageFn = Callable[..., torch.Tensor]
ADV_ESTIMATORS: dict[str, AdvantageFn] = {"grpo": grpo_advantages, "rloo": rloo_advantages}


def compute_advantages(
    name: str, scores: torch.Tensor, group_ids: GroupIds, *, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Advantages [N] by estimator name (registry ``ADV_ESTIMATORS``)."""
    if name not in ADV_ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {sorted(ADV_ESTIMATORS)}")
    return ADV_ESTIMATORS[name](scores, group_ids, norm_by_std=norm_by_std, eps=eps)


def nonzero_variance_mask(scores: torch.Tensor, group_ids: GroupIds, tol: float = 0.0) -> torch.Tensor:
    """[N] bool: True for responses whose group's rewards are not all equal (max - min > tol)."""
    inverse, n_groups = group_inverse(group_ids)
    fill = torch.full((n_groups,), float("inf"), dtype=scores.dtype)
    lo = fill.scatter_reduce(0, inverse, scores, reduce="amin")  # [G]
    hi = (-fill).scatter_reduce(0, inverse, scores, reduce="amax")  # [G]
    return (hi - lo)[inverse] > tol  # [N]
