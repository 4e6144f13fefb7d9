"""Prompt + decoded media -> model inputs, the way vLLM's Qwen2.5-VL processing builds them.

One function for every consumer that runs the HF model on a prompt (the learner's batches, the HF rollout
engine, tests comparing with vLLM), so they all see the same tokens, pixels and rope positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# VideoMetadata's fields; vLLM drops the rest (e.g. do_sample_frames) before calling the HF processor.
_METADATA_KEYS = ("total_num_frames", "fps", "width", "height", "duration", "video_backend", "frames_indices")


def processor_metadata(frames: np.ndarray, video_metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata the HF processor gets, exactly as vLLM passes it (so both see the same rope positions).

    Note: ``videos_kwargs={"fps": ...}`` is ignored by the Qwen2.5-VL processor in transformers 5 (it reads
    ``sampled_fps`` from the metadata and falls back to 24 fps), hence metadata, never a bare fps.
    """
    if not video_metadata:
        n = int(frames.shape[0])
        return {"fps": 2.0, "total_num_frames": n, "frames_indices": list(range(n)), "duration": n / 2.0}
    return {k: video_metadata[k] for k in _METADATA_KEYS if k in video_metadata}


def encode_prompt(
    processor: Any, prompt: str, frames: np.ndarray, video_metadata: Mapping[str, Any], media: str = "video"
) -> dict[str, torch.Tensor]:
    """Prompt + video (or image) -> model inputs, the way vLLM's Qwen2.5-VL processing does it."""
    return encode_prompts(processor, [prompt], [frames], [video_metadata], media)


def encode_prompts(
    processor: Any,
    prompts: Sequence[str],
    frames: Sequence[np.ndarray],
    video_metadata: Sequence[Mapping[str, Any]],
    media: str = "video",
) -> dict[str, torch.Tensor]:
    """Several prompts, each with its own video (or image, all of one kind), as one left-padded batch for
    ``generate``: row ``i`` is :func:`encode_prompt` of prompt ``i`` with padding before it (the processor
    concatenates the rows' patches in order and gives one grid row per video)."""
    frames = [f.copy() if not f.flags.writeable else f for f in frames]  # zero-copy from Ray's object store:
    # torch.from_numpy warns on read-only arrays
    padding: dict[str, Any] = {"padding": True, "padding_side": "left"} if len(prompts) > 1 else {}
    if media == "image":
        return processor(text=list(prompts), images=[f[0] for f in frames], return_tensors="pt", **padding)
    return processor(
        text=list(prompts),
        videos=list(frames),
        return_tensors="pt",
        do_sample_frames=False,
        # Frames arrive already resized to video.max_pixels (vt_ray.video), so the per-frame cap has nothing to
        # do; False is transformers' current default (what vLLM gets) and says so instead of warning each call.
        cap_pixels_per_frame=False,
        video_metadata=[processor_metadata(f, m) for f, m in zip(frames, video_metadata, strict=True)],
        **padding,
    )
