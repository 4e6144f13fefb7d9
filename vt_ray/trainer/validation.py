"""Validation: greedy responses to the held-out prompts, scored like training's, as ``val/*`` metrics and lines
of ``validation.jsonl`` (and the report's rollout viewer).

Its own module because it shares nothing with a training step but the roles: no sampler, no update, no
advantages; the driver only says when, and lends it the engines between the pipeline's batches.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from vt_ray.config.schema import RecipeConfig
from vt_ray.data.schema import VideoSample
from vt_ray.rewards.accuracy import is_letter_answer_correct
from vt_ray.rewards.composite import reward_metrics
from vt_ray.trace import parse_trace
from vt_ray.trainer.rollout_log import RolloutLog, group_record
from vt_ray.trainer.settings import sampling_for_validation


def validate(cfg: RecipeConfig, val: list[VideoSample], rollout: Any, rewards: Any,
             engines: AbstractContextManager[None], step: int, run_dir: Path, rollout_log: RolloutLog
             ) -> dict[str, float]:
    """Metrics of the policy the engines hold on ``val``, with ``engines`` held while generating and scoring."""
    if not val:
        return {}
    start = time.perf_counter()
    by_uid = {s.uid: s for s in val}
    with engines:  # async modes: between the pipeline's batches
        out = rollout.generate(val, sampling_for_validation(cfg))
        texts = [r.completions[0].text for r in out.results]
        scored = rewards.score(texts, [by_uid[r.uid].reward_target() for r in out.results])
    metrics = reward_metrics(scored, prefix="val/")
    parsed = [parse_trace(t) for t in texts]
    metrics["val/valid_share"] = sum(p.violations == () for p in parsed) / max(len(texts), 1)
    choice = [(p, by_uid[r.uid]) for p, r in zip(parsed, out.results)
              if by_uid[r.uid].answer_type == "multiple_choice"]
    if choice:  # letter-only accuracy: the figure Video-R1 / Video-Holmes report
        metrics["val/accuracy_letter"] = (
            sum(is_letter_answer_correct(p.answer, s.answer) for p, s in choice) / len(choice)
        )
        by_gold = accuracy_by_gold_letter([p.answer for p, _ in choice], [s.answer for _, s in choice])
        metrics.update({f"val/accuracy_letter/{gold}": value for gold, value in by_gold.items()})
    metrics["val/samples"] = float(len(texts))
    metrics["time/val_s"] = time.perf_counter() - start
    with (run_dir / "validation.jsonl").open("a") as f:
        for r, text, s in zip(out.results, texts, scored):
            f.write(json.dumps({"step": step, "uid": r.uid, "response": text, **s}) + "\n")
    if rollout_log.enabled:
        rollout_log.write([group_record(step, "val", r, by_uid[r.uid], [s], None)
                           for r, s in zip(out.results[: cfg.trainer.rollouts_per_step], scored)])
    return metrics


def accuracy_by_gold_letter(answers: list[str | None], golds: list[str]) -> dict[str, float]:
    """Letter-only accuracy per gold letter. A policy that reads some option positions and guesses at the others
    shows here and not in the mean (measured on the shuffled colour task: gold A and D answered right 0.70-0.75
    of the time, B and C at chance, 0.50 overall)."""
    hits: dict[str, list[bool]] = {}
    for answer, gold in zip(answers, golds, strict=True):
        hits.setdefault(gold, []).append(is_letter_answer_correct(answer, gold))
    return {gold: sum(h) / len(h) for gold, h in sorted(hits.items())}
