"""Tiny curation inputs for tests and the CPU demo, built from the synthetic videos (seconds, no downloads).

Two ``records`` files (JSONL of SourceRecord dicts) over the same small synthetic mp4s:

* ``caption_only.jsonl`` (source ``activitynet_captions``): the segments with their reference captions, no QA,
  so the pipeline must synthesise questions;
* ``qa_only.jsonl`` (source ``star``): question, options, answer and evidence windows, no captions, so the
  pipeline must caption the key windows (from the video's frames).

``faults=True`` adds scripted-server markers to a few records (data_pipeline.testing.scripted_server) so the
demo report shows regenerations and drops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vt_ray.data.schema import read_samples
from vt_ray.data.synthetic import make_synthetic_dataset


def make_fixtures(out: str | Path, num_videos: int = 8, seed: int = 0, faults: bool = False) -> dict[str, Path]:
    out = Path(out)
    make_synthetic_dataset(out / "synthetic", num_videos=num_videos, seed=seed, val_fraction=0.25)
    samples = read_samples(out / "synthetic" / "train.jsonl") + read_samples(out / "synthetic" / "val.jsonl")
    caption_only: list[dict[str, Any]] = []
    qa_only: list[dict[str, Any]] = []
    for i, s in enumerate(samples):
        base: dict[str, Any] = {"uid": s.uid, "video": s.video, "duration": s.duration, "category": s.category,
                                "extra": {}}
        segments: list[dict[str, Any]] = [{"start": w[0], "end": w[1], "caption": c}
                                          for w, c in zip(s.windows, s.captions, strict=True)]
        if len(segments) < 2 and s.duration:  # multi-hop questions need two segments: add the clip's ending
            end = segments[-1]["end"] if segments else 0.0
            segments.append({"start": end, "end": max(end, s.duration), "caption": "The dark background stays."})
        if faults and i == 0:
            segments[0]["caption"] += " [verify-fail:1]"  # one regeneration, then kept
        if faults and i == 1:
            segments[0]["caption"] += " [verify-fail:99]"  # never verifies: dropped
        caption_only.append({**base, "source": "activitynet_captions", "segments": segments})
        question = s.question + (" [http500:1]" if faults and i == 2 else "")
        qa_only.append({**base, "source": "star", "segments": [], "question": question, "options": s.options,
                        "answer": s.answer, "answer_type": s.answer_type, "windows": s.windows})
    paths = {"caption_only": out / "caption_only.jsonl", "qa_only": out / "qa_only.jsonl"}
    for name, records in (("caption_only", caption_only), ("qa_only", qa_only)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return {**paths, "video_root": out / "synthetic"}
