"""ActivityNet Captions (Krishna et al., ICCV 2017): dense, temporally localised captions. Caption-only.

Published format (confirmed from public readers of the release; the zip itself was not opened here):
``captions.zip`` from https://cs.stanford.edu/people/ranjaykrishna/densevid/ holds ``train.json``, ``val_1.json``
and ``val_2.json``, each ONE JSON object keyed by video id (values illustrative)::

    {"v_<youtube id>": {"duration": 82.73,
                        "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                        "sentences": ["A young woman is seen standing ...", "She then ..."]}, ...}

``timestamps[i]`` (seconds) is the span of ``sentences[i]``. Sources read: the HF card
https://huggingface.co/datasets/Leyo/ActivityNet_Captions (homepage densevid, the same fields flattened), the
skasai5296/actnetchallenge README (download link to densevid ``captions.zip``), and public loaders that read
``train.json`` / ``val_1.json`` / ``val_2.json`` as ``{id: {"duration", "timestamps", "sentences"}}``.

Mapping: uid = the key (``v_<youtube id>``), video = ``<key><video_ext>`` (ActivityNet's downloads keep the
``v_`` prefix), duration = ``duration``, one Segment per (timestamp, sentence). Known annotation noise: a few
spans end after the video's duration; they are clamped to it. A segment that is still invalid (start > end,
negative, empty sentence) is dropped and counted as a malformed part; a video left with no segment, or whose
``timestamps`` and ``sentences`` differ in length, is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.sources._common import SourceStats, load_json, require, seconds, text, video_file
from data_pipeline.sources.record import Segment, SourceRecord

SOURCE = "activitynet_captions"
FORMAT = 'a JSON object {"v_<id>": {"duration": s, "timestamps": [[s, e], ...], "sentences": [...]}}'


def read(path: Path, stats: SourceStats, video_ext: str = ".mp4") -> Iterator[SourceRecord]:
    data = load_json(path, dict, FORMAT)
    return _records(data, stats, video_ext)


def _records(data: dict[str, Any], stats: SourceStats, video_ext: str) -> Iterator[SourceRecord]:
    for key, entry in data.items():
        record = stats.guard(f"video {key!r}", _record, key, entry, stats, video_ext)
        if record is not None:
            yield record


def _record(key: str, entry: Any, stats: SourceStats, video_ext: str) -> SourceRecord:
    duration = seconds(require(entry, "duration"), "duration")
    timestamps, sentences = require(entry, "timestamps"), require(entry, "sentences")
    if not isinstance(timestamps, list) or not isinstance(sentences, list) or len(timestamps) != len(sentences):
        raise ValueError("timestamps and sentences must be lists of the same length")
    segments = []
    for i, (span, sentence) in enumerate(zip(timestamps, sentences, strict=True)):
        segment = stats.guard(f"video {key!r} segment {i}", _segment, span, sentence, duration, part=True)
        if segment is not None:
            segments.append(segment)
    if not segments:
        raise ValueError("no valid caption segment")
    return SourceRecord(uid=key, source=SOURCE, video=video_file(key, video_ext), duration=duration,
                        segments=segments)


def _segment(span: Any, sentence: Any, duration: float) -> Segment:
    if not isinstance(span, list) or len(span) != 2:
        raise ValueError(f"timestamp must be [start, end], got {span!r}")
    start, end = seconds(span[0], "start"), seconds(span[1], "end")
    return Segment(start, min(end, duration) if duration > 0 else end, text(sentence, "sentence"))
