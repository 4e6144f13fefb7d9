"""Frames of a video's key windows as base64 JPEG data URLs, for the caption VLM (OpenAI image_url parts).

The video is decoded once (``decode_frames`` frames spread uniformly over it, by vt_ray.video.reader) and each
window takes up to ``per_window`` of those frames whose timestamps fall inside it, evenly spaced. Limit: a window
shorter than the spacing of the decoded frames gets the single nearest frame; raise ``caption_decode_frames``
for long videos with short windows.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from vt_ray.config.schema import VideoConfig
from vt_ray.video.reader import read_video


def pick_indices(timestamps: list[float], window: tuple[float, float], count: int) -> list[int]:
    """Indices of up to ``count`` frames inside ``window`` (evenly spaced), else the one nearest its centre."""
    inside = [i for i, t in enumerate(timestamps) if window[0] <= t <= window[1]]
    if not inside:
        centre = (window[0] + window[1]) / 2
        return [min(range(len(timestamps)), key=lambda i: abs(timestamps[i] - centre))]
    if len(inside) <= count:
        return inside
    return [inside[int((k + 0.5) * len(inside) / count)] for k in range(count)]


def jpeg_data_url(frame: np.ndarray, quality: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def window_frames(path: str, windows: list[list[float]], per_window: int, decode_frames: int,
                  quality: int) -> list[list[str]]:
    """For each window, its frames as data URLs. Raises vt_ray.video.VideoError (naming the file)."""
    decode_frames += decode_frames % 2  # the reader samples even counts (Qwen temporal pairs)
    video = read_video(path, VideoConfig(num_frames=decode_frames, max_frames=decode_frames))
    return [[jpeg_data_url(video.frames[i], quality) for i in pick_indices(video.timestamps, (w[0], w[1]), per_window)]
            for w in windows]
