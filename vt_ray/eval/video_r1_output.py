"""Evaluation results in Video-R1's output shape, so its users can diff our numbers with theirs.

Shape (tulerfeng/Video-R1@59d65c3 ``src/eval_bench.py``): ``{"results": [record + {"output", "prediction",
"reward", "correct", "process"?}], "final_acc": [{"mean_acc": ..., "mean_mra": ...}]}`` where ``prediction``
is the ``<answer>`` content (the whole output when there is none), ``reward`` is its ``reward_fn``
(:func:`vt_ray.rewards.video_r1.eval_reward`), ``correct`` is ``reward == 1.0``, ``process`` is
``<think>...</think>`` when the output has one, ``mean_acc`` averages the rewards of the non-regression
items (OCR and free-form count as 0, as in Video-R1) and ``mean_mra`` those of the regression items (0.0
when there are none). One file per benchmark and frame count:
``<eval.output_dir>/video_r1/eval_<benchmark>_<frames>frames_greedy_output.json``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vt_ray.data.schema import VideoSample
from vt_ray.eval.records import ItemResult
from vt_ray.rewards.video_r1 import FROM_ANSWER_TYPE, eval_reward, extract_answer

_THINK_RE = re.compile(r"<think>\s*(.*?)\s*</think>", re.DOTALL)


def result_entry(sample: VideoSample, output: str) -> dict[str, Any]:
    record = dict(sample.extra.get("record") or {})
    problem_type = record.get("problem_type") or FROM_ANSWER_TYPE[sample.answer_type]
    solution = record.get("solution") or f"<answer>{sample.answer}</answer>"
    reward = eval_reward(output, solution, problem_type)
    entry = {**record, "output": output, "prediction": extract_answer(output) or output, "reward": reward,
             "correct": reward == 1.0}
    think = _THINK_RE.search(output)
    if think and think.group(1).strip():
        entry["process"] = f"<think>{think.group(1).strip()}</think>"
    return entry


def final_acc(entries: Sequence[dict[str, Any]]) -> dict[str, float]:
    acc = [e["reward"] for e in entries if e.get("problem_type") != "regression"]
    mra = [e["reward"] for e in entries if e.get("problem_type") == "regression"]
    return {"mean_acc": sum(acc) / len(acc) if acc else 0.0, "mean_mra": sum(mra) / len(mra) if mra else 0.0}


def write_outputs(out_dir: str | Path, benchmark: str, samples: Sequence[VideoSample],
                  results: Iterable[ItemResult]) -> list[Path]:
    """One Video-R1 output file per frame count for ``benchmark``, items in the benchmark file's order."""
    order = {s.uid: (i, s) for i, s in enumerate(samples)}
    by_frames: dict[int, list[ItemResult]] = defaultdict(list)
    for r in results:
        if r.benchmark == benchmark and r.uid in order:
            by_frames[r.frames].append(r)
    written = []
    for frames, items in sorted(by_frames.items()):
        items.sort(key=lambda r: order[r.uid][0])
        entries = [result_entry(order[r.uid][1], r.response) for r in items]
        path = Path(out_dir) / "video_r1" / f"eval_{benchmark}_{frames}frames_greedy_output.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": entries, "final_acc": [final_acc(entries)]}, indent=2,
                                   ensure_ascii=False))
        written.append(path)
    return written
