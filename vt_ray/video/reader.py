"""Open a video, sample frames, resize them for Qwen2.5-VL, and return them with timestamps and metadata.

Two decoders: PyAV (default, robust) and decord (fast, but known to hang on some files: QwenLM/Qwen3-VL#736).
When the configured backend cannot open a file the other one is tried; every decode runs under
``video.decode_timeout_s``. Frames are decoded once per video and shared by all G responses of a prompt.
vLLM on CPU has no torchcodec, so engines always receive decoded frames plus :meth:`DecodedVideo.vllm_metadata`,
never a path.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vt_ray.config.schema import VideoConfig
from vt_ray.video.errors import VideoCorrupt, VideoEmpty, VideoError, VideoNotFound, VideoTimeout
from vt_ray.video.sampling import resized_shape, target_frame_count, uniform_indices


@dataclass
class DecodedVideo:
    path: str
    frames: np.ndarray  # [T, H, W, 3] uint8, H and W multiples of 28, T even
    timestamps: list[float]  # seconds, one per frame
    frame_indices: list[int]  # indices into the source video
    fps: float  # source frame rate
    total_frames: int  # frames in the source video
    backend: str = "pyav"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps if self.fps > 0 else 0.0

    @property
    def sampled_fps(self) -> float:
        """Rate of the sampled frames: what sets Qwen2.5-VL's temporal positions (seconds per temporal patch =
        2 / sampled_fps), the same value vLLM derives from ``frames_indices``."""
        return sampled_fps(self.vllm_metadata())

    def vllm_metadata(self) -> dict[str, Any]:
        """What vLLM's Qwen2.5-VL processor needs next to pre-sampled frames (it must not re-sample them)."""
        return {
            "total_num_frames": self.total_frames,
            "fps": self.fps,
            "duration": self.duration,
            "video_backend": self.backend,
            "frames_indices": list(self.frame_indices),
            "do_sample_frames": False,
        }


def sampled_fps(meta: dict[str, Any]) -> float:
    """Sampled-frame rate from vLLM-style metadata (as transformers' ``VideoMetadata.sampled_fps``)."""
    total, indices, fps = meta.get("total_num_frames"), meta.get("frames_indices"), meta.get("fps") or 2.0
    return len(indices) / total * fps if total and indices else fps


@dataclass
class _Raw:
    frames: list[np.ndarray]
    indices: list[int]
    fps: float
    total_frames: int


def _decode_pyav(path: str, choose: Callable[[int, float], list[int]]) -> _Raw:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoEmpty(path, "no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        total = int(stream.frames or 0)
        if total <= 0 and stream.duration and stream.time_base:
            total = int(round(float(stream.duration * Fraction(stream.time_base)) * fps))
        frames: dict[int, np.ndarray] = {}
        decoded = 0
        wanted = set(choose(total, fps)) if total > 0 else None
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            if wanted is None or i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
    if decoded == 0:
        raise VideoEmpty(path, "no decodable frames")
    indices = choose(decoded, fps)
    if wanted is None or decoded != total:  # frame count was unknown or wrong: re-pick from what decoded
        if any(i not in frames for i in indices):
            return _decode_pyav_all(path, choose, fps)
    return _Raw([frames[i] for i in indices], indices, fps, decoded)


def _decode_pyav_all(path: str, choose: Callable[[int, float], list[int]], fps: float) -> _Raw:
    """Slow path for containers that misreport their length: keep every frame, then pick."""
    import av

    with av.open(path) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    indices = choose(len(every), fps)
    return _Raw([every[i] for i in indices], indices, fps, len(every))


def _decode_decord(path: str, choose: Callable[[int, float], list[int]]) -> _Raw:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    if total == 0:
        raise VideoEmpty(path, "no decodable frames")
    fps = float(reader.get_avg_fps()) or 25.0
    indices = choose(total, fps)
    batch = reader.get_batch(indices).asnumpy()
    return _Raw(list(batch), indices, fps, total)


_BACKENDS: dict[str, Callable[[str, Callable[[int, float], list[int]]], _Raw]] = {
    "pyav": _decode_pyav,
    "decord": _decode_decord,
}


def _with_timeout(fn: Callable[[], _Raw], path: str, timeout_s: float) -> _Raw:
    # A hung native decoder cannot be interrupted from Python; the worker thread is abandoned (daemon) and the
    # sample is counted as unreadable, which is what keeps a training step from hanging on one bad file.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-decode")
    try:
        return pool.submit(fn).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError as err:
        raise VideoTimeout(path, f"decode exceeded {timeout_s:g} s") from err
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _resize(frames: list[np.ndarray], height: int, width: int) -> np.ndarray:
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        if frame.shape[:2] == (height, width):
            out[i] = frame
        else:
            out[i] = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))
    return out


def read_video(path: str | Path, cfg: VideoConfig) -> DecodedVideo:
    """Sample ``cfg``'s frames from ``path``. Raises a :class:`VideoError` subclass naming the file."""
    path = str(path)
    if not Path(path).is_file():
        raise VideoNotFound(path, "no such file")

    def choose(total: int, fps: float) -> list[int]:
        return uniform_indices(total, target_frame_count(cfg, total, fps))

    order = [cfg.backend] + [b for b in _BACKENDS if b != cfg.backend]
    failures: list[str] = []
    for backend in order:
        try:
            raw = _with_timeout(functools.partial(_BACKENDS[backend], path, choose), path, cfg.decode_timeout_s)
        except (VideoEmpty, VideoTimeout):
            raise
        except VideoError as err:
            failures.append(f"{backend}: {err.detail}")
            continue
        except Exception as err:  # decoders raise assorted types (av.error.*, RuntimeError, DECORDError)
            failures.append(f"{backend}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        source_height, source_width = raw.frames[0].shape[:2]
        height, width = resized_shape(source_height, source_width, cfg)
        return DecodedVideo(
            path=path,
            frames=_resize(raw.frames, height, width),
            timestamps=[round(i / raw.fps, 4) for i in raw.indices],
            frame_indices=raw.indices,
            fps=raw.fps,
            total_frames=raw.total_frames,
            backend=backend,
        )
    raise VideoCorrupt(path, "; ".join(failures))


def read_frames_at(path: str | Path, indices: list[int], timeout_s: float = 30.0) -> list[np.ndarray]:
    """The source frames at ``indices`` (clamped to the video's length), at their stored size: what a viewer
    shows of the frames a model saw (their indices come from :meth:`DecodedVideo.vllm_metadata`). Same
    backends, fallback and timeout as :func:`read_video`; raises a :class:`VideoError` subclass naming the file."""
    path = str(path)
    if not Path(path).is_file():
        raise VideoNotFound(path, "no such file")
    if not indices:
        return []

    def choose(total: int, _fps: float) -> list[int]:
        return [min(max(int(i), 0), total - 1) for i in indices]

    failures: list[str] = []
    for backend in _BACKENDS:
        try:
            return _with_timeout(functools.partial(_BACKENDS[backend], path, choose), path, timeout_s).frames
        except (VideoEmpty, VideoTimeout):
            raise
        except Exception as err:  # decoders raise assorted types (av.error.*, RuntimeError, DECORDError)
            failures.append(f"{backend}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    raise VideoCorrupt(path, "; ".join(failures))
