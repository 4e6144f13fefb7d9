"""Image samples (Video-R1 mixes images with videos): read, convert to RGB, resize like a video frame.

The image is resized to the same 28-multiple size rule as video frames (``video.min_pixels``..``max_pixels``,
transformers' ``smart_resize``), so the prompt budget can count its tokens exactly and the processor in vLLM
and in the learner leaves its size alone. Errors are the video module's typed errors (same skip labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vt_ray.config.schema import VideoConfig
from vt_ray.video.errors import VideoCorrupt, VideoNotFound
from vt_ray.video.sampling import PATCH_FACTOR, resized_shape

MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs before decoding (PIL's own limit warns only)


@dataclass
class DecodedImage:
    path: str
    pixels: np.ndarray
    """[H, W, 3] uint8, H and W multiples of 28."""

    @property
    def frames(self) -> np.ndarray:
        """[1, H, W, 3]: the shape the rollout and learner carry media in."""
        return self.pixels[None]


def read_image(path: str | Path, cfg: VideoConfig) -> DecodedImage:
    path = str(path)
    if not Path(path).is_file():
        raise VideoNotFound(path, "no such file")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise VideoCorrupt(path, f"{img.width}x{img.height} image exceeds {MAX_IMAGE_PIXELS} pixels")
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VideoCorrupt(path, f"{type(err).__name__}: {err}") from err
    height, width = resized_shape(rgb.height, rgb.width, cfg)
    if (rgb.height, rgb.width) != (height, width):
        rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
    return DecodedImage(path, np.asarray(rgb, dtype=np.uint8))


def image_token_count(height: int, width: int) -> int:
    """Tokens one ``<|image_pad|>`` expands into for an image already at (height, width)."""
    return (height // PATCH_FACTOR) * (width // PATCH_FACTOR)
