"""Typed video errors. ``reason`` is a stable short label: trainers and evaluators count skips by it."""

from __future__ import annotations


class VideoError(Exception):
    reason = "unreadable"

    def __init__(self, path: str, detail: str = "") -> None:
        self.path, self.detail = str(path), detail
        super().__init__(f"{self.reason} video {self.path}" + (f": {detail}" if detail else ""))

    def __reduce__(self):  # keep the type and fields across Ray/pickle boundaries
        return (type(self), (self.path, self.detail))


class VideoNotFound(VideoError):
    reason = "missing"


class VideoCorrupt(VideoError):
    """The file exists but no backend could decode it (truncated, not a video, unsupported codec)."""

    reason = "corrupt"


class VideoEmpty(VideoError):
    """The container opened but holds no decodable frames."""

    reason = "empty"


class VideoTimeout(VideoError):
    """Decoding took longer than ``video.decode_timeout_s`` (decord is known to hang on some files)."""

    reason = "timeout"
