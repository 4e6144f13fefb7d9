"""The rollout viewer's data: groups of responses with the frames the model saw, ready for the page's JS.

Training and validation groups come from ``rollouts.jsonl``; evaluation items (``results.jsonl``) become
one-response groups. Every response is parsed here with :mod:`vt_ray.trace` (display segments, windows,
violations), so the page only draws. Frames are decoded with the project's reader at the indices the engine
saw and embedded once per (video, indices) as small JPEG thumbnails; a video that cannot be read becomes a
problem line and a placeholder, not an error.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vt_ray.eval.metrics import format_valid
from vt_ray.trace import display_segments, parse_trace
from vt_ray.video.errors import VideoError
from vt_ray.video.reader import read_frames_at

THUMB_HEIGHT = 72


@dataclass
class ViewerData:
    groups: list[dict[str, Any]] = field(default_factory=list)
    frames: dict[str, list[str]] = field(default_factory=dict)  # key -> JPEG data URIs
    problems: list[str] = field(default_factory=list)

    @property
    def responses(self) -> int:
        return sum(len(g["responses"]) for g in self.groups)


def pick_groups(groups: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` groups spread evenly over the list (which is in step order), first and last kept."""
    if limit <= 0 or len(groups) <= limit:
        return list(groups)
    if limit == 1:
        return [groups[-1]]
    idx = sorted({round(i * (len(groups) - 1) / (limit - 1)) for i in range(limit)})
    return [groups[i] for i in idx]


def _finite(value: Any) -> float | None:
    """Rounded for display; NaN/inf become None (JSON.parse in the page refuses NaN)."""
    return round(float(value), 4) if isinstance(value, int | float) and math.isfinite(value) else None


def _response(text: str, reward: dict[str, Any], advantage: float | None, **extra: Any) -> dict[str, Any]:
    parsed = parse_trace(text)
    acc = reward.get("accuracy", reward.get("correct"))
    return {
        "segments": display_segments(text),
        "windows": [list(w) for w in parsed.windows],
        "answer": parsed.answer,
        "violations": list(dict.fromkeys(parsed.violations)),
        "format_valid": format_valid(parsed),
        "correct": isinstance(acc, int | float) and acc >= 1.0 - 1e-9,
        "reward": {k: _finite(v) for k, v in reward.items() if isinstance(v, int | float)},
        "advantage": _finite(advantage),
        **extra,
    }


def _train_group(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": row.get("split", "train"),
        "step": row.get("step"),
        "uid": str(row.get("uid", "")),
        "video": row.get("video", ""),
        "question": row.get("question", ""),
        "options": list(row.get("options") or []),
        "answer": row.get("answer", ""),
        "duration": row.get("duration"),
        "gold_windows": list(row.get("gold_windows") or []),
        "gold_captions": list(row.get("gold_captions") or []),
        "frame_indices": list(row.get("frame_indices") or []),
        "frame_times": list(row.get("frame_times") or []),
        "responses": [
            _response(str(r.get("text", "")), dict(r.get("reward") or {}), r.get("advantage"),
                      tokens=r.get("tokens"), truncated=bool(r.get("truncated")))
            for r in row.get("responses") or []
        ],
    }


def _eval_group(run_name: str, item: dict[str, Any]) -> dict[str, Any]:
    extra = item.get("extra") or {}
    reward = {"correct": float(bool(item.get("correct"))), "format_valid": float(bool(item.get("format_valid")))}
    if isinstance(item.get("iou"), int | float):
        reward["iou"] = float(item["iou"])
    return {
        "source": f"eval {run_name}: {item.get('benchmark', '')} @ {item.get('frames', '')} frames",
        "step": None,
        "uid": str(item.get("uid", "")),
        "video": extra.get("video", ""),
        "question": extra.get("question", ""),
        "options": list(extra.get("options") or []),
        "answer": item.get("gold_answer", ""),
        "duration": extra.get("duration"),
        "gold_windows": list(item.get("gt_windows") or []),
        "gold_captions": list(item.get("ref_captions") or []),
        "frame_indices": list(extra.get("frame_indices") or []),
        "frame_times": list(extra.get("frame_times") or []),
        "responses": [_response(str(item.get("response", "")), reward, None, tokens=extra.get("response_tokens"),
                                truncated=False)],
    }


def _thumbnails(path: str, indices: list[int]) -> list[str]:
    from PIL import Image

    out = []
    for frame in read_frames_at(path, indices):
        img = Image.fromarray(frame)
        img.thumbnail((THUMB_HEIGHT * 4, THUMB_HEIGHT))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=80)
        out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def _attach_frames(view: ViewerData, group: dict[str, Any]) -> None:
    video, indices = group["video"], group["frame_indices"]
    group["frames_key"] = None
    if not video:
        group["frames_problem"] = "no video path recorded"
        return
    if not indices:
        group["frames_problem"] = "frame indices not recorded"
        return
    key = f"{video}|{','.join(map(str, indices))}"
    if key not in view.frames:
        try:
            view.frames[key] = _thumbnails(video, indices)
        except VideoError as err:
            view.frames[key] = []
            view.problems.append(f"rollout viewer: cannot show frames of {video}: {err}")
    if view.frames[key]:
        group["frames_key"] = key
    else:
        group["frames_problem"] = f"video unreadable or missing: {video}"


def build_viewer(rollouts: Sequence[dict[str, Any]], evals: Sequence[Any] = (), max_groups: int = 60,
                 max_eval_items: int = 24) -> ViewerData:
    view = ViewerData()
    groups = [_train_group(r) for r in pick_groups(rollouts, max_groups)]
    for run in evals:
        items = pick_groups(run.items, max_eval_items)
        groups += [_eval_group(run.name, item) for item in items]
        if items and not any((i.get("extra") or {}).get("frame_indices") for i in items):
            view.problems.append(f"rollout viewer: eval {run.name} records have no frame indices "
                                 "(made before the runner recorded them): no frame strip")
    for i, g in enumerate(groups):
        g["id"] = i
        _attach_frames(view, g)
        if g["duration"] is None:  # the timeline needs a length: the last thing we know happens in the video
            ends = [w[1] for w in g["gold_windows"]] + g["frame_times"]
            g["duration"] = max(ends) if ends else None
    view.groups = groups
    return view

