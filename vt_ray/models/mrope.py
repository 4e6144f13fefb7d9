"""Qwen2.5-VL multimodal RoPE positions as the model was released (and as vLLM computes them).

Why this exists: transformers 5.x rewrote ``Qwen2_5_VLModel.get_rope_index``; since then the text that follows a
video starts at ``start + max(grid_h, grid_w) // merge`` instead of ``max(video positions) + 1``. The temporal
positions of a video (``t * second_per_grid_t * tokens_per_second``) usually exceed the spatial ones, so the text
after a video overlaps the video's positions. The released Qwen2.5-VL code and vLLM (``get_mrope_input_positions``)
use ``max + 1``. A learner that trains with the transformers positions and a vLLM rollout that samples with the
released ones disagree on every token after the video (measured on the tiny model: up to 8 nats per token, an SFT
checkpoint valid 8/8 under transformers and 0/8 under vLLM). The learner and the transformers rollout backend
therefore compute positions here, one pure function, and tests pin it against vLLM's prompt logprobs.
"""

from __future__ import annotations

import itertools
import types
from typing import Any

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2


def vision_positions(grid_thw: torch.Tensor, spatial_merge: int, time_interval: float, start: int) -> torch.Tensor:
    """(3, t*h*w) positions of one image/video block whose first position is ``start``."""
    t, h, w = (int(grid_thw[0]), int(grid_thw[1]) // spatial_merge, int(grid_thw[2]) // spatial_merge)
    t_index = (torch.arange(t) * time_interval).long()
    grid = torch.stack(torch.meshgrid(t_index, torch.arange(h), torch.arange(w), indexing="ij"))
    return grid.reshape(3, -1) + start


def sequence_positions(
    token_types: list[int],
    image_grids: list[torch.Tensor],
    video_grids: list[torch.Tensor],
    video_seconds_per_grid: list[float],
    spatial_merge: int,
    tokens_per_second: float,
) -> torch.Tensor:
    """(3, len) positions of one unpadded sequence: text runs count on from the previous block's max + 1."""
    images, videos, seconds = iter(image_grids), iter(video_grids), iter(video_seconds_per_grid)
    blocks: list[torch.Tensor] = []
    for kind, run in itertools.groupby(token_types):
        length = len(list(run))
        start = int(blocks[-1].max()) + 1 if blocks else 0
        if kind == TEXT:
            blocks.append(torch.arange(length).expand(3, -1) + start)
            continue
        grid = next(images) if kind == IMAGE else next(videos)
        interval = tokens_per_second * float(next(seconds)) if kind == VIDEO else 1.0
        block = vision_positions(grid, spatial_merge, interval, start)
        if block.shape[1] != length:
            raise ValueError(f"{'image' if kind == IMAGE else 'video'} grid {grid.tolist()} gives {block.shape[1]} "
                             f"positions but the sequence has {length} placeholder tokens")
        blocks.append(block)
    return torch.cat(blocks, dim=1) if blocks else torch.zeros(3, 0, dtype=torch.long)


def rope_index(
    input_ids: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    second_per_grid_ts: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    *,
    spatial_merge: int,
    tokens_per_second: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched positions (3, B, L) and rope deltas (B, 1), the contract of ``get_rope_index``.

    Grids are consumed across the batch in order (the processor's layout); padded slots get position 0.
    """
    batch, length = input_ids.shape
    positions = torch.zeros(3, batch, length, dtype=torch.long, device=input_ids.device)
    image_grids = list(image_grid_thw) if image_grid_thw is not None else []
    video_grids = list(video_grid_thw) if video_grid_thw is not None else []
    seconds = second_per_grid_ts.tolist() if second_per_grid_ts is not None else [1.0] * len(video_grids)
    deltas = []
    for row in range(batch):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones(length, dtype=torch.bool)
        types_row = mm_token_type_ids[row][keep.to(mm_token_type_ids.device)].tolist()
        n_images = sum(1 for k, _ in itertools.groupby(types_row) if k == IMAGE)
        n_videos = sum(1 for k, _ in itertools.groupby(types_row) if k == VIDEO)
        row_pos = sequence_positions(types_row, image_grids[:n_images], video_grids[:n_videos], seconds[:n_videos],
                                     spatial_merge, tokens_per_second)
        image_grids, video_grids, seconds = image_grids[n_images:], video_grids[n_videos:], seconds[n_videos:]
        positions[:, row, keep.to(positions.device)] = row_pos.to(positions.device)
        deltas.append(int(row_pos.max()) + 1 - len(types_row) if row_pos.numel() else 0)
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def use_released_rope_index(model: Any) -> Any:
    """Make a transformers Qwen2.5-VL model (any wrapper of ``Qwen2_5_VLModel``) use :func:`rope_index`.

    Bound on the instance, not the class, so only models we load are affected; forward and ``generate`` both
    go through ``get_rope_index``. Returns the model.
    """
    inner = getattr(model, "model", model)
    if not hasattr(inner, "get_rope_index"):
        return model  # not a Qwen-VL model: nothing to align
    vision = inner.config.vision_config
    merge, tps = int(vision.spatial_merge_size), float(vision.tokens_per_second)

    def get_rope_index(self, input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None,
                       second_per_grid_ts=None, attention_mask=None, **_: Any):
        return rope_index(input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, second_per_grid_ts,
                          attention_mask, spatial_merge=merge, tokens_per_second=tps)

    inner.get_rope_index = types.MethodType(get_rope_index, inner)
    return model
