"""Which frames to take and at what size: pure functions shared by the reader, the prompt budget and tests.

Qwen2.5-VL embeds frames in temporal pairs (temporal patch 2) and merges 2x2 patches of 14 px, so frame counts
are even and sides are multiples of 28; one video token covers 2 frames x 28 x 28 px.
"""

from __future__ import annotations

import math

from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from vt_ray.config.schema import VideoConfig

PATCH_FACTOR = 28  # patch size 14 x spatial merge 2
TEMPORAL_PATCH = 2


def target_frame_count(cfg: VideoConfig, total_frames: int, fps: float) -> int:
    """Frames to sample: ``num_frames`` (uniform) or ``duration * fps`` capped by ``max_frames``, made even
    and at least ``min_frames``. May exceed ``total_frames`` for very short clips (frames then repeat)."""
    if cfg.num_frames > 0:
        wanted = cfg.num_frames
    else:
        duration = total_frames / fps if fps > 0 else 0.0
        wanted = int(math.floor(duration * cfg.fps))
    wanted = max(cfg.min_frames, min(cfg.max_frames, wanted))
    return max(TEMPORAL_PATCH, wanted - wanted % TEMPORAL_PATCH)


def uniform_indices(total_frames: int, count: int) -> list[int]:
    """``count`` indices spread over ``[0, total_frames)``, each at the centre of its segment (as decord/Qwen
    samplers do), repeating frames when the clip is shorter than ``count``."""
    if total_frames <= 0:
        raise ValueError("total_frames must be > 0")
    return [min(total_frames - 1, int((i + 0.5) * total_frames / count)) for i in range(count)]


def resized_shape(height: int, width: int, cfg: VideoConfig) -> tuple[int, int]:
    """(height, width) rounded to multiples of 28 within [min_pixels, max_pixels], keeping the aspect ratio
    (transformers' own Qwen2-VL ``smart_resize``, so our size equals what the processor would choose)."""
    return smart_resize(height, width, factor=PATCH_FACTOR, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)


def video_token_count(num_frames: int, height: int, width: int) -> int:
    """Tokens the engine expands one ``<|video_pad|>`` into for frames already at (height, width)."""
    return (num_frames // TEMPORAL_PATCH) * (height // PATCH_FACTOR) * (width // PATCH_FACTOR)
