"""Video-R1's training and evaluation records -> VideoSamples.

Format (tulerfeng/Video-R1@59d65c3; src/r1-v/src/open_r1/grpo.py, sft_video.py, src/eval_bench.py read these
fields; HF ``Video-R1/Video-R1-data`` Video-R1-260k.json / Video-R1-COT-165k.json, ``Video-R1/Video-R1-eval``
eval_*.json): a JSON array (or JSON lines) of ``{problem_id, problem, data_type: "image"|"video",
problem_type: "multiple choice"|"numerical"|"OCR"|"free-form"|"regression", options: ["A. ...", ...],
solution: "<answer>X</answer>", process: "<think>...</think>" (COT file only), path: "./Folder/x.mp4",
data_source}``. Eval files keep the benchmark's own fields beside these; paths may be absolute there.

Mapping: problem -> question; options "A. text" -> texts (the lettered strings are kept in
``extra["video_r1_options"]`` so the Video-R1 prompt is reproduced byte for byte); the ``<answer>`` content
of solution -> answer; SFT target = ``process + "\\n" + solution`` (sft_video.py), or the row's own ``trace``
(our ``<time>/<caption>/<think>`` format) when present (a missing, null or blank ``trace`` counts as absent; one
that is not a string or has no non-empty ``<answer>`` makes the row bad, reason ``bad_trace``, skipped and
counted rather than trained on); ``extra["answer_rules"] = "video_r1"`` so the rewards
use Video-R1's definitions; the whole record is kept in ``extra["record"]`` (evaluation writes it back in
Video-R1's output shape).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vt_ray.data.formats.errors import RowError
from vt_ray.data.formats.media import MediaPathError, resolve_media
from vt_ray.data.schema import OPTION_LETTERS, VideoSample
from vt_ray.rewards.video_r1 import PROBLEM_TYPES, TO_ANSWER_TYPE
from vt_ray.trace import EMPTY_ANSWER, NO_ANSWER, parse_trace

_OPTION_RE = re.compile(r"^\s*([A-Z])\s*[.:)]\s?(.*)$", re.DOTALL)
_SOLUTION_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def parse_options(options: Any) -> list[str]:
    """Option texts from ["A. x", "B. y", ...]; the letters must run A, B, C, ... in order."""
    if not isinstance(options, list) or not options:
        raise RowError("bad_options", f"multiple choice needs a non-empty list of options, got {options!r}")
    texts = []
    for i, option in enumerate(options):
        m = _OPTION_RE.match(option) if isinstance(option, str) else None
        if m is None or m.group(1) != OPTION_LETTERS[i]:
            raise RowError("bad_options", f"option {i} {option!r} does not start with the letter {OPTION_LETTERS[i]}")
        texts.append(m.group(2).strip())
    return texts


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"bad_{key}", f"{key} must be a non-empty string, got {value!r}")
    return value


def _own_trace(value: Any) -> str | None:
    """The row's own SFT trace, or None when it has none. A trace without an answer would teach the model not to
    answer, and one that is not text cannot be a target: both are bad rows."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise RowError("bad_trace", f"trace must be a string, got {type(value).__name__}")
    parsed = parse_trace(value)
    if parsed.has_violation(NO_ANSWER) or parsed.has_violation(EMPTY_ANSWER):
        raise RowError("bad_trace", f"trace {value[:80]!r} has no non-empty <answer>...</answer>")
    return value


def convert(row: dict[str, Any], index: int, file: Path, root: Path) -> VideoSample:
    problem = _text(row, "problem")
    problem_type = row.get("problem_type")
    if problem_type not in PROBLEM_TYPES:
        raise RowError("bad_problem_type", f"problem_type {problem_type!r} is not one of {PROBLEM_TYPES}")
    data_type = row.get("data_type")
    if data_type not in ("image", "video"):
        raise RowError("bad_data_type", f"data_type {data_type!r} is not image | video")
    solution = _text(row, "solution")
    m = _SOLUTION_RE.search(solution)
    if m is None:
        raise RowError("no_answer_tags", f"solution {solution[:80]!r} has no <answer>...</answer>")
    answer = m.group(1).strip()
    raw_options = row.get("options") or []
    options = parse_options(raw_options) if problem_type == "multiple choice" else []
    try:
        media = resolve_media(_text(row, "path"), root)
    except MediaPathError as err:
        raise RowError("path_escape", str(err)) from err
    trace = _own_trace(row.get("trace"))
    process = row.get("process")
    if trace is None and isinstance(process, str) and process.strip():
        trace = process + "\n" + solution
    record = {k: v for k, v in row.items() if v is not None}
    problem_id = row.get("problem_id")
    try:
        return VideoSample(
            uid=f"{file.stem}:{index}",
            video=str(media),
            question=problem,
            answer=answer,
            options=options,
            answer_type=TO_ANSWER_TYPE[problem_type],
            trace=trace,
            source=str(row.get("data_source") or "video_r1"),
            category=problem_type,
            media=data_type,
            extra={"answer_rules": "video_r1", "problem_id": problem_id, "record": record,
                   **({"video_r1_options": list(raw_options)} if options else {})},
        )
    except ValueError as err:  # e.g. the answer letter is not one of the options
        raise RowError("bad_answer", str(err)) from err
