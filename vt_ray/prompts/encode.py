"""Prompt + decoded media -> model inputs, the way vLLM's Qwen2.5-VL processing builds them.

One function for every consumer that runs the HF model on a prompt (the learner's batches, the HF rollout
engine, tests comparing with vLLM), so they all see the same tokens, pixels and rope positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    processor: Any, prompt: str, frames: np.ndarray, video_metadata: Mapping[str, Any], media: str = "video",
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """Prompt + video (or image) -> model inputs, the way vLLM's Qwen2.5-VL processing does it."""
    return encode_prompts(processor, [prompt], [frames], [video_metadata], media, normalize)


def encode_prompts(
    processor: Any,
    prompts: Sequence[str],
    frames: Sequence[np.ndarray],
    video_metadata: Sequence[Mapping[str, Any]],
    media: str = "video",
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """Several prompts, each with its own video (or image, all of one kind), as one left-padded batch for
    ``generate``: row ``i`` is :func:`encode_prompt` of prompt ``i`` with padding before it (the processor
    concatenates the rows' patches in order and gives one grid row per video)."""
    frames = [f.copy() if not f.flags.writeable else f for f in frames]  # zero-copy from Ray's object store:
    # torch.from_numpy warns on read-only arrays
    padding: dict[str, Any] = {"padding": True, "padding_side": "left"} if len(prompts) > 1 else {}
    if not normalize:  # raw patches: uint8 when the frames are (see encode_for_learner)
        padding.update(do_rescale=False, do_normalize=False)
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


@dataclass
class PromptPixels:
    """One prompt's vision patches as the rollout worker stores them in the object store, once per prompt.

    ``patches`` is the processor's patch layout ``[N_patches, C * T * P * P]`` before rescaling and
    normalising: uint8 (a quarter of the float32 the model takes, half of bfloat16) when the frames are uint8,
    and :meth:`tensor` applies the processor's own fused rescale-and-normalise, so the learner sees exactly the
    float32 patches the processor would have built (tests compare bit for bit). ``mean``/``std`` are that fused
    per-channel affine (already divided by the rescale factor); None when ``patches`` are already normalised
    float32 (a processor whose raw patches are not uint8).
    """

    patches: np.ndarray
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def nbytes(self) -> int:
        return int(self.patches.nbytes)

    def tensor(self) -> torch.Tensor:
        """The float32 ``[N_patches, D]`` pixels the model takes."""
        patches = torch.from_numpy(np.array(self.patches))  # a private copy: object-store arrays are read-only
        if self.mean is None or self.std is None:
            return patches
        n, d = patches.shape
        channels = len(self.mean)
        x = patches.reshape(n, channels, d // channels, 1).to(torch.float32)  # channel first in a patch row
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return x.sub_(mean).div_(std).reshape(n, d)  # torchvision's normalize, the processor's op


@dataclass
class EncodedPrompt:
    """What the driver keeps of one prompt's model inputs: token ids and grids (small), and a reference to the
    :class:`PromptPixels` in the object store (``pixels``, a ``ray.ObjectRef`` the driver owns) instead of the
    pixels themselves. Built by the rollout worker (:func:`encode_for_learner`), which has the frames."""

    input_ids: torch.Tensor  # [1, P] long
    grid_thw: torch.Tensor  # [1, 3] long
    second_per_grid_ts: torch.Tensor  # [1] float32 (1.0 for an image)
    media: str = "video"
    mm_token_type_ids: torch.Tensor | None = None  # [1, P] long
    pixels: Any = None
    """ObjectRef to this prompt's PromptPixels (set by the rollout group from the call's own returns)."""
    pixel_bytes: int = 0
    patch_dim: int = 0


def _fused_affine(sub: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The processor's fused rescale-and-normalise, (mean, std) already divided by the rescale factor, as
    transformers computes it (float32 tensors times ``1 / rescale_factor``); None when it would not do both."""
    if not (getattr(sub, "do_rescale", False) and getattr(sub, "do_normalize", False)):
        return None
    factor = 1.0 / sub.rescale_factor
    mean = torch.tensor(sub.image_mean) * factor
    std = torch.tensor(sub.image_std) * factor
    return tuple(mean.tolist()), tuple(std.tolist())


def encode_for_learner(processor: Any, prompt: str, frames: np.ndarray, video_metadata: Mapping[str, Any],
                       media: str = "video") -> tuple[EncodedPrompt, PromptPixels]:
    """One prompt's learner inputs, split into what the driver keeps (:class:`EncodedPrompt`: ids and grids)
    and the pixels that go to the object store (:class:`PromptPixels`, uint8 when the processor allows)."""
    sub = processor.image_processor if media == "image" else processor.video_processor
    affine = _fused_affine(sub)
    enc = encode_prompt(processor, prompt, frames, video_metadata, media, normalize=affine is None)
    key, grid_key = ("pixel_values", "image_grid_thw") if media == "image" else ("pixel_values_videos",
                                                                               "video_grid_thw")
    raw = enc[key]
    if affine is not None and raw.dtype != torch.uint8:  # resized in float: store the processor's own output
        enc, affine = encode_prompt(processor, prompt, frames, video_metadata, media), None
        raw = enc[key]
    pixels = PromptPixels(raw.numpy(), *(affine or (None, None)))
    seconds = torch.ones(1) if media == "image" else enc.get("second_per_grid_ts", torch.ones(1)).float()
    types = enc.get("mm_token_type_ids")
    return EncodedPrompt(enc["input_ids"], enc[grid_key].long(), seconds, media, types,
                         pixel_bytes=pixels.nbytes, patch_dim=int(raw.shape[-1])), pixels
