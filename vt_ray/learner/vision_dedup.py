"""Encode each distinct video of a forward pass once.

A GRPO mini-batch holds G responses per prompt, so every video appears G times in ``pixel_values_videos``
(images too: :meth:`TrainBatch.model_inputs` passes them as videos). Qwen2.5-VL's forward runs the vision
tower over all of them: G times the same work, forward and backward (measured on the tiny model with G=8: about
half of a learner forward was the vision tower). :func:`install_video_dedup` wraps the model's
``get_video_features`` so the tower sees each distinct video once and its features are reused for every copy.
The language model gets the same embeddings as before and autograd sums the gradient of the copies into the
one encoding, so the update is the same up to float summation order. transformers has no option for this, so
we wrap its method here; the wrapper calls the original, which keeps its keyword handling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def _patch_offsets(grid_thw: torch.Tensor) -> list[int]:
    """Start of each video's patches in the concatenated pixels (length videos + 1), as
    ``TrainBatch.patch_offsets`` gives them for a batch (here only the grids reach the model's method)."""
    return [0, *torch.cumsum(grid_thw.prod(-1), 0).tolist()]


def distinct_videos(pixels: torch.Tensor, grid_thw: torch.Tensor) -> tuple[list[int], list[int]]:
    """(index of the first copy of each distinct video, the distinct video each video is) for the videos laid
    end to end in ``pixels`` with one ``grid_thw`` row each. Videos are equal when their grids and every patch
    value are equal (exact comparison, never a hash alone)."""
    offsets = _patch_offsets(grid_thw)
    first: list[int] = []
    inverse: list[int] = []
    by_grid: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(grid_thw)):
        chunk = pixels[offsets[i] : offsets[i + 1]]
        candidates = by_grid.setdefault(tuple(grid_thw[i].tolist()), [])
        for u in candidates:
            j = first[u]
            if torch.equal(chunk, pixels[offsets[j] : offsets[j + 1]]):
                inverse.append(u)
                break
        else:
            candidates.append(len(first))
            inverse.append(len(first))
            first.append(i)
    return first, inverse


def select_videos(pixels: torch.Tensor, grid_thw: torch.Tensor, videos: list[int]) -> torch.Tensor:
    offsets = _patch_offsets(grid_thw)
    return torch.cat([pixels[offsets[v] : offsets[v + 1]] for v in videos])


def install_video_dedup(model: torch.nn.Module) -> bool:
    """Wrap the ``get_video_features`` of a Qwen2.5-VL-style model (``model.model``) in place. Returns False,
    changing nothing, for a model without one."""
    inner = getattr(model, "model", None)
    original: Callable[..., Any] | None = getattr(inner, "get_video_features", None)
    if inner is None or original is None or getattr(original, "_vt_dedup", False):
        return False

    def get_video_features(pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor | None = None,
                           **kwargs: Any) -> Any:
        if video_grid_thw is None or len(video_grid_thw) < 2:
            return original(pixel_values_videos, video_grid_thw, **kwargs)
        first, inverse = distinct_videos(pixel_values_videos, video_grid_thw)
        if len(first) == len(inverse):
            return original(pixel_values_videos, video_grid_thw, **kwargs)
        out = original(select_videos(pixel_values_videos, video_grid_thw, first), video_grid_thw[first], **kwargs)
        pooled = out.pooler_output  # one [tokens, hidden] tensor per distinct video
        out.pooler_output = tuple(pooled[u] for u in inverse)
        return out

    get_video_features._vt_dedup = True  # type: ignore[attr-defined]
    inner.get_video_features = get_video_features
    return True
