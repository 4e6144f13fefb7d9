"""In-domain held-out splits (ActivityNet, STAR, ScaleLong, YouCook2, LVBench): JSONL already in the project
schema (vt_ray.data.schema.VideoSample), written by the data pipeline when it splits 1:9 test:train.

Relative video paths resolve against ``video_root`` (default: the file's directory, as for training data).
Malformed lines raise SampleFormatError naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

from vt_ray.data.schema import VideoSample, read_samples, resolve_video_paths


def load(path: str | Path, video_root: str | Path | None = None) -> list[VideoSample]:
    path = Path(path)
    samples = read_samples(path)  # FileNotFoundError / SampleFormatError name the file (and line)
    return resolve_video_paths(samples, video_root or path.parent)
