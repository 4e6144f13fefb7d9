"""Rollouts saved during training for the report's viewer (``<run>/rollouts.jsonl``, one line per group).

A line holds what a person needs to judge a group without the model: the prompt's video and the frames the
engine saw (indices and seconds), the question, gold answer and windows, and every response of the group with
its reward parts and advantage. Lines carry ``step`` so a resumed run truncates them like ``metrics.jsonl``.
Disk use is bounded twice: only ``rollouts_per_step`` groups every ``save_rollouts_every`` steps, and nothing
more once the file reaches ``rollouts_max_mb`` (one warning, and the cap is recorded in the file's last line
so the report can say why later steps are missing).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_ray.data.schema import VideoSample
from vt_ray.rollout.types import RolloutResult

log = logging.getLogger(__name__)
FILE_NAME = "rollouts.jsonl"


def group_record(
    step: int,
    split: str,
    result: RolloutResult,
    sample: VideoSample,
    scores: Sequence[dict[str, float]],
    advantages: Sequence[float] | None,
) -> dict[str, Any]:
    """One group as a JSON-ready dict (pure). ``scores`` and ``advantages`` are aligned with the completions;
    ``advantages`` is None for validation (greedy, no update)."""
    meta = result.video_metadata or {}
    indices = [int(i) for i in meta.get("frames_indices") or []]
    fps = float(meta.get("fps") or 0.0)
    responses = []
    for i, (c, score) in enumerate(zip(result.completions, scores, strict=True)):
        responses.append({
            "text": c.text,
            "reward": {k: float(v) for k, v in score.items()},
            "advantage": None if advantages is None else float(advantages[i]),
            "tokens": len(c.token_ids),
            "truncated": c.finish_reason == "length",
        })
    return {
        "step": step,
        "split": split,
        "uid": result.uid,
        "video": sample.video,
        "question": sample.question,
        "options": list(sample.options),
        "answer": sample.answer,
        "answer_type": sample.answer_type,
        "duration": sample.duration if sample.duration is not None else meta.get("duration"),
        "gold_windows": [[float(a), float(b)] for a, b in sample.windows],
        "gold_captions": list(sample.captions),
        "frame_indices": indices,
        "frame_times": [round(i / fps, 3) for i in indices] if fps > 0 else [],
        "fps": fps,
        "total_frames": meta.get("total_num_frames"),
        "responses": responses,
    }


@dataclass
class RolloutLog:
    """Appends chosen groups to ``<run_dir>/rollouts.jsonl`` on schedule, within the disk cap."""

    path: Path
    every: int
    per_step: int
    max_bytes: int
    capped: bool = False

    @classmethod
    def from_config(cls, run_dir: Path, tc: Any) -> RolloutLog:
        return cls(run_dir / FILE_NAME, tc.save_rollouts_every, tc.rollouts_per_step, int(tc.rollouts_max_mb * 2**20))

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.per_step > 0

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def write(self, records: Sequence[dict[str, Any]]) -> int:
        """Append ``records`` (at most ``per_step`` of them) unless the cap is reached; returns lines written."""
        if self.capped or not records:
            return 0
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records[: self.per_step]]
        size = self.path.stat().st_size if self.path.is_file() else 0
        if size + sum(len(line.encode()) for line in lines) > self.max_bytes:
            self.capped = True
            step = records[0].get("step", -1)
            log.warning("%s reached trainer.rollouts_max_mb: no rollouts saved from step %s on", self.path, step)
            with self.path.open("a") as f:  # a marker (small, outside the cap) so the report can say why
                f.write(json.dumps({"step": step, "capped": True, "max_bytes": self.max_bytes}) + "\n")
            return 0
        with self.path.open("a") as f:
            f.writelines(lines)
        return len(lines)
