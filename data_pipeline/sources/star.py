"""STAR (Wu et al., NeurIPS 2021): situated-reasoning multiple-choice questions on Charades clips. QA-only.

Published format (confirmed): ``STAR_train.json`` / ``STAR_val.json`` linked from github.com/csbobby/STAR_Benchmark
(README, "Question, Multiple Choice Answers and Situation Graphs"), field schema as documented with the
release ("STAR Benchmark / Schema"; values below illustrative)::

    [{"question_id": "Interaction_T1_13", "question": "Which object was tidied up by the person?",
      "video_id": "6H78U", "start": 11.1, "end": 19.6, "answer": "The closet/cabinet.",
      "question_program": [...],
      "choices": [{"choice_id": 0, "choice": "The closet/cabinet.", "choice_program": [...]}, ...],
      "situations": {"<frame>": {"rel_pairs", "rel_labels", "actions", "bbox", "bbox_labels"}}}, ...]

``answer`` is the correct choice's TEXT; the question type is the ``question_id`` prefix (the release's program
executor groups by ``question_id.split('_')[0]`` into Interaction / Sequence / Prediction / Feasibility).

Mapping: uid = ``question_id``; video = ``<video_id><video_ext>`` (the full Charades video, which is what
STAR's ``start``/``end`` trim times refer to); options = choices in ``choice_id`` order; answer = the letter of the
choice whose text equals ``answer``; windows = ``[[start, end]]``; category = the question type. The test split
has no ``answer``: its entries are skipped and counted as malformed (they cannot be curated).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.sources._common import SourceStats, load_json, require, seconds, text, video_file
from data_pipeline.sources.record import SourceRecord
from vt_ray.eval.loaders._common import answer_letter

SOURCE = "star"
FORMAT = 'a JSON array of STAR questions {"question_id", "question", "video_id", "start", "end", "answer", "choices"}'
QUESTION_TYPES = ("Interaction", "Sequence", "Prediction", "Feasibility")


def read(path: Path, stats: SourceStats, video_ext: str = ".mp4") -> Iterator[SourceRecord]:
    questions = load_json(path, list, FORMAT)
    return _records(questions, path, stats, video_ext)


def _records(questions: list[Any], path: Path, stats: SourceStats, video_ext: str) -> Iterator[SourceRecord]:
    for i, q in enumerate(questions):
        where = f"question {q.get('question_id')!r}" if isinstance(q, dict) and q.get("question_id") else f"entry {i}"
        record = stats.guard(where, _record, q, path, video_ext)
        if record is not None:
            yield record


def _record(q: Any, path: Path, video_ext: str) -> SourceRecord:
    qid = text(str(require(q, "question_id")), "question_id")
    options = _options(require(q, "choices"))
    letter = answer_letter(text(require(q, "answer"), "answer"), options, path, qid)
    start, end = seconds(require(q, "start"), "start"), seconds(require(q, "end"), "end")
    prefix = qid.split("_")[0]
    vid = text(str(require(q, "video_id")), "video_id")
    return SourceRecord(uid=qid, source=SOURCE, video=video_file(vid, video_ext),
                        question=text(require(q, "question"), "question"), options=options, answer=letter,
                        windows=[[start, end]], category=prefix if prefix in QUESTION_TYPES else None,
                        extra={"video_id": vid})


def _options(choices: Any) -> list[str]:
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"choices must be a list of at least 2, got {choices!r}")
    ids: list[Any] = [c.get("choice_id") if isinstance(c, dict) else None for c in choices]  # all ints: sorted
    if all(isinstance(i, int) for i in ids):
        choices = [c for _, c in sorted(zip(ids, choices, strict=True), key=lambda pair: pair[0])]
    return [text(require(c, "choice"), "choice") for c in choices]
