"""How a batch is cut across a group's workers (rollout engines, reward scorers): a pure function with no
heavy imports, so a light actor (a reward scorer) never loads the rollout stack to use it."""

from __future__ import annotations


def split_evenly(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges covering n_items, sizes differing by at most one, no empty parts
    unless n_items < n_parts."""
    base, extra = divmod(n_items, n_parts)
    bounds, start = [], 0
    for i in range(n_parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds
