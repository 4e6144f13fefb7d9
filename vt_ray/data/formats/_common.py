"""Helpers the verl and EasyR1 formats share: our own sample riding along as JSON, placeholders, media refs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vt_ray.data.formats.errors import RowError
from vt_ray.data.formats.media import MediaPathError, resolve_media
from vt_ray.data.schema import VideoSample
from vt_ray.rewards.target import _infer_answer_type

PLACEHOLDER_RE = re.compile(r"<(?:image|video)>")
SAMPLE_KEY = "vt_ray_sample"
"""Column (EasyR1) / extra_info key (verl) holding our sample as JSON: what makes the round trip exact."""


def media_path(ref: Any, key: str) -> str:
    """A path from a media entry: "path", "file:///path" or {key: path} (verl's {"video": ...} dicts)."""
    if isinstance(ref, dict):
        if ref.get("bytes") is not None:
            raise RowError("unsupported_media", f"inline {key} bytes are not supported; write the files out")
        ref = ref.get(key)
    if not isinstance(ref, str) or not ref:
        raise RowError("bad_media", f"no {key} path in {ref!r}")
    return ref[len("file://"):] if ref.startswith("file://") else ref


def resolve(path: str, root: Path) -> str:
    try:
        return str(resolve_media(path, root))
    except MediaPathError as err:
        raise RowError("path_escape", str(err)) from err


def sample_from_json(text: Any, root: Path) -> VideoSample:
    """Our own sample carried in the row (exported by us); its media path is checked against the root."""
    try:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        sample = VideoSample(**data)
    except (TypeError, ValueError) as err:
        raise RowError("bad_sample", f"{SAMPLE_KEY} is not a valid sample: {err}") from err
    sample.video = resolve(sample.video, root)
    return sample


def media_of(row: dict[str, Any], image_key: str, video_key: str, root: Path) -> tuple[str, str]:
    """(media kind, resolved path) of a row with exactly one image or one video."""
    videos, images = row.get(video_key) or [], row.get(image_key) or []
    if len(videos) + len(images) != 1:
        raise RowError("bad_media", f"need exactly one image or video, got {len(images)} images, {len(videos)} videos")
    if videos:
        return "video", resolve(media_path(videos[0], "video"), root)
    return "image", resolve(media_path(images[0], "image"), root)


def generic_sample(uid: str, question: str, answer: str, media: tuple[str, str], hints: dict[str, Any],
                   source: str) -> VideoSample:
    """A sample from a foreign row: answer type and options from ``hints`` when given, else inferred (numeric
    if the answer is a number, free text otherwise; multiple choice needs its options in the hints)."""
    options = [str(o) for o in hints.get("options") or []]
    answer_type = hints.get("answer_type") or _infer_answer_type(answer, tuple(options))
    try:
        return VideoSample(uid=uid, video=media[1], question=PLACEHOLDER_RE.sub("", question).strip(),
                           answer=answer, options=options, answer_type=answer_type, source=source,
                           media=media[0])
    except ValueError as err:
        raise RowError("bad_answer", str(err)) from err
