"""Score shaping and group selection before the advantages (pure torch): DAPO's soft overlong punishment and
dynamic-sampling group filter, Video-R1's T-GRPO temporal reward, and the guard that keeps a non-finite user
reward out of the update. The driver calls these; each is a formula with its source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vt_ray.algo.advantages import GroupIds, group_inverse, nonzero_variance_mask


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, section 3.4, eq. 13), per response [N]:
    0 for |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache in between; -1 beyond L_max; times
    ``factor``. Here L_max is the generation budget (rollout.max_tokens) and L_cache = ``buffer_len``."""
    if buffer_len <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float64)
    expected = max_len - buffer_len
    over = (lengths.double() - expected).clamp_min(0)  # [N]
    return -(over / buffer_len).clamp(max=1.0) * factor


def overlong_filter(keep: torch.Tensor, truncated: Sequence[bool]) -> tuple[torch.Tensor, float]:
    """DAPO overlong filtering (Yu et al. 2025, arXiv 2503.14476, section 3.4): a response cut off at the
    generation budget has no answer to judge, so it is masked out of the loss rather than punished. Returns the
    keep mask [N] with truncated responses False (the others unchanged) and the share of responses truncated
    (0.0 for an empty batch)."""
    cut = torch.tensor(list(truncated), dtype=torch.bool)  # [N]
    if cut.shape != keep.shape:
        raise ValueError(f"overlong_filter: {cut.numel()} truncated flags for a keep mask of shape {tuple(keep.shape)}")
    return keep & ~cut, float(cut.sum()) / max(cut.numel(), 1)


def tgrpo_bonus(
    ordered_accuracy: torch.Tensor,
    ordered_groups: GroupIds,
    shuffled_accuracy: torch.Tensor,
    shuffled_groups: GroupIds,
    *,
    alpha: float = 0.3,
    rule: str = "paper",
    correct_above: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """T-GRPO temporal reward (Feng et al. 2025, Video-R1, arXiv 2503.21776, section 3.2, eq. 1), per ordered
    response [N]: per prompt, p = share of correct ordered responses, p~ = share of correct shuffled ones;
    r_t = alpha if p > p~ (rule "paper"; rule "code": p >= 0.8 p~, Video-R1's released trainer), else 0; r_t is
    added to the correct ordered responses only. Correct = accuracy > ``correct_above`` (0.1, as the released
    code). Groups match by id; a prompt without shuffled responses gets no bonus. Returns (bonus, metrics)."""
    ordered_inv, _ = group_inverse(list(_as_list(ordered_groups)))
    keys = list(dict.fromkeys(_as_list(ordered_groups)))
    shuffled_keys = _as_list(shuffled_groups)
    correct = (ordered_accuracy.double() > correct_above).double()  # [N]
    shuffled_correct = (shuffled_accuracy.double() > correct_above).double()  # [M]
    bonus = torch.zeros_like(correct)
    granted = 0
    for g, key in enumerate(keys):
        sel = ordered_inv == g
        p = correct[sel].mean().item()
        mates = [i for i, k in enumerate(shuffled_keys) if k == key]
        if not mates:
            continue
        p_shuffled = shuffled_correct[mates].mean().item()
        wins = p > p_shuffled if rule == "paper" else p >= 0.8 * p_shuffled
        if wins:
            granted += 1
            bonus[sel] = alpha * correct[sel]
    metrics = {
        "tgrpo/ordered_acc": correct.mean().item() if correct.numel() else 0.0,
        "tgrpo/shuffled_acc": shuffled_correct.mean().item() if shuffled_correct.numel() else 0.0,
        "tgrpo/bonus_group_frac": granted / max(len(keys), 1),
    }
    return bonus, metrics


def _as_list(ids: GroupIds) -> list[Any]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def informative_groups(scores: torch.Tensor, group_ids: Sequence[int]) -> list[int]:
    """DAPO dynamic sampling (arXiv 2503.14476, section 3.2, eq. 11: 0 < |{correct}| < G): the group ids, in
    first-seen order, whose rewards are not all equal (a zero-variance group has no advantage signal)."""
    varied = nonzero_variance_mask(scores, list(group_ids))
    seen: dict[int, bool] = {}
    for g, v in zip(group_ids, varied.tolist()):
        seen[g] = seen.get(g, False) or bool(v)
    return [g for g, v in seen.items() if v]


def finite_scores(values: Sequence[float]) -> tuple[torch.Tensor, int]:
    """Scores as a float32 tensor with NaN/inf replaced by 0, and how many were replaced: a reward function's
    non-finite value must never reach the advantages (it would turn every advantage of its batch into NaN)."""
    clean = [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in values]
    bad = sum(1 for v in values if not (isinstance(v, (int, float)) and math.isfinite(v)))
    return torch.tensor(clean, dtype=torch.float32), bad
