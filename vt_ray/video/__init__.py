"""Video reading: one place that opens a file, samples frames and returns them with the metadata vLLM and the
Hugging Face processor need. Typed errors name the file."""

from vt_ray.video.errors import VideoCorrupt, VideoEmpty, VideoError, VideoNotFound, VideoTimeout
from vt_ray.video.reader import DecodedVideo, read_video

__all__ = ["DecodedVideo", "VideoCorrupt", "VideoEmpty", "VideoError", "VideoNotFound", "VideoTimeout", "read_video"]
