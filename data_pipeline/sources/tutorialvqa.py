"""TutorialVQA (Colas et al., LREC 2020, arXiv 1912.01046): questions about Photoshop/Illustrator tutorial
videos whose answer is a span of the video. QA-only, free-text answer, one evidence window.

Published format (confirmed from the release, github.com/acolas1/TutorialVQAData: ``train.json``,
``dev.json``, ``test.json`` and ``videos.json``):

* a split file is a JSON array of ``{"video_id": "15569", "question": "how do i open the character panel? ",
  "answer_start": 6, "answer_end": 7}``; ``answer_start``/``answer_end`` are INCLUSIVE sentence indexes into
  that video's transcript, not times;
* ``videos.json`` is a JSON array of ``{"video_id", "video_title", "video_url" (a .webm), "transcript": [sentence,
  ...], "segments": [{"title", "timestamps": {"start": "91.53", "end": "139.44"} (seconds, as strings),
  "sentence_indexes": {"start": 20, "end": 30}}, ...]}``. The answer spans are these annotated segments.

Mapping (a decision, documented here): ``path`` is a split file; ``videos.json`` is read from the same
directory unless ``videos_path`` is given. The evidence window is the timestamps of the segment whose
``sentence_indexes`` equal the answer span (else: the start of the segment starting at ``answer_start`` and the
end of the one ending at ``answer_end``); a question whose span has no timestamps is skipped and counted.
The answer is the published answer itself, the transcript sentences ``answer_start..answer_end`` joined, with
``answer_type="free_text"`` (the dataset has no options, and a time span is the window, not an answer text).
Note that the pipeline's free-text verification is a normalised exact match by default, which such long
answers rarely pass; ``reward.free_text_match=token_f1`` is the lenient alternative.
uid = ``<split file stem>-<index in the file>`` (the release has no question ids); video =
``<video_id><video_ext>``, ``video_ext`` defaulting to the suffix of ``video_url`` (``.webm``). Questions that are
empty or the literal placeholder ``"none"`` (present in train.json) are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from data_pipeline.sources._common import SourceStats, load_json, require, seconds, text, video_file
from data_pipeline.sources.record import SourceRecord

SOURCE = "tutorialvqa"
FORMAT = 'a JSON array of {"video_id", "question", "answer_start", "answer_end"} (a TutorialVQA split file)'
VIDEOS_FORMAT = 'a JSON array of {"video_id", "transcript": [...], "segments": [...]} (TutorialVQA videos.json)'


def read(path: Path, stats: SourceStats, videos_path: str | Path | None = None,
         video_ext: str | None = None) -> Iterator[SourceRecord]:
    questions = load_json(path, list, FORMAT)
    videos_file = Path(videos_path) if videos_path else path.parent / "videos.json"
    if not videos_file.is_file():
        raise FileNotFoundError(f"TutorialVQA videos.json not found: {videos_file} (pass videos_path=...)")
    videos = _index_videos(load_json(videos_file, list, VIDEOS_FORMAT), stats)
    return _records(questions, videos, path.stem, stats, video_ext)


def _index_videos(entries: list[Any], stats: SourceStats) -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    for i, video in enumerate(entries):
        vid = stats.guard(f"videos.json entry {i}", _video_id, video, part=True)
        if vid is not None:
            index[vid] = video
    return index


def _video_id(video: Any) -> str:
    vid = str(require(video, "video_id"))
    if not isinstance(require(video, "transcript"), list):
        raise ValueError("transcript must be a list of sentences")
    return vid


def _records(questions: list[Any], videos: dict[str, dict[str, Any]], split: str, stats: SourceStats,
             video_ext: str | None) -> Iterator[SourceRecord]:
    for i, qa in enumerate(questions):
        record = stats.guard(f"question {i}", _record, qa, f"{split}-{i}", videos, video_ext)
        if record is not None:
            yield record


def _record(qa: Any, uid: str, videos: dict[str, dict[str, Any]], video_ext: str | None) -> SourceRecord:
    vid = str(require(qa, "video_id"))
    question = text(require(qa, "question"), "question")
    if question.lower() == "none":
        raise ValueError("question is the placeholder 'none'")
    start, end = _sentence_index(require(qa, "answer_start")), _sentence_index(require(qa, "answer_end"))
    if start > end:
        raise ValueError(f"answer_start {start} > answer_end {end}")
    video = videos.get(vid)
    if video is None:
        raise ValueError(f"video_id {vid!r} is not in videos.json")
    transcript = video["transcript"]
    if end >= len(transcript):
        raise ValueError(f"answer_end {end} is past the transcript ({len(transcript)} sentences)")
    answer = " ".join(str(s).strip() for s in transcript[start : end + 1]).strip()
    window, title = _window(video.get("segments"), start, end)
    extra = {"video_id": vid, "sentence_span": [start, end], "segment_title": title,
             **{k: video[k] for k in ("video_title", "video_url") if video.get(k)}}
    return SourceRecord(uid=uid, source=SOURCE, video=video_file(vid, _ext(video, video_ext)), question=question,
                        answer=answer, answer_type="free_text", windows=[list(window)], extra=extra)


def _sentence_index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"sentence index must be an int >= 0, got {value!r}")
    return value


def _window(segments: Any, start: int, end: int) -> tuple[tuple[float, float], str | None]:
    """The answer span's (start s, end s) from the annotated segments, and the matching segment's title."""
    parsed = [_segment_span(s) for s in segments or [] if isinstance(s, dict)]
    spans = [s for s in parsed if s is not None]
    for (s_idx, e_idx), (t0, t1), title in spans:
        if (s_idx, e_idx) == (start, end):
            return (t0, t1), title
    t_start = next((t0 for (s_idx, _), (t0, _t1), _ in spans if s_idx == start), None)
    t_end = next((t1 for (_, e_idx), (_t0, t1), _ in spans if e_idx == end), None)
    if t_start is None or t_end is None or t_start > t_end:
        raise ValueError(f"answer span {start}-{end} matches no timestamped segment")
    return (t_start, t_end), None


def _segment_span(segment: dict[str, Any]) -> tuple[tuple[int, int], tuple[float, float], str | None] | None:
    try:
        idx, ts = segment["sentence_indexes"], segment["timestamps"]
        span = (_sentence_index(idx["start"]), _sentence_index(idx["end"]))
        times = (seconds(ts["start"], "start"), seconds(ts["end"], "end"))
    except (KeyError, TypeError, ValueError):
        return None  # an unusable segment only matters if an answer needs it (then that answer is skipped)
    title = segment.get("title")
    return span, times, str(title) if title else None


def _ext(video: dict[str, Any], video_ext: str | None) -> str:
    if video_ext is not None:
        return video_ext
    suffix = PurePosixPath(str(video.get("video_url") or "")).suffix
    return suffix if suffix and len(suffix) <= 6 else ".mp4"
