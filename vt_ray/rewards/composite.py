"""The composite reward: every component of one response, and their weighted total (the same code for the
trainer's reward workers and the ``score`` command).

``RewardScorer.score`` returns ``{accuracy, format, temporal_iou, caption_similarity, length_penalty,
<custom names>..., total, errors, timeouts}``. Built-in components are always computed (cheap, and reported
even at weight 0 so a run can watch them); ``total = sum(weight * value)``. Built-ins run inline: they never
raise by contract, but a bug still only zeroes that component and counts an error. Custom rewards run under
the guard of ``reward.isolation`` (see :mod:`vt_ray.rewards.guard`).

Not thread-safe: use one scorer per thread/actor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from vt_ray.rewards import video_r1
from vt_ray.rewards.accuracy import accuracy_reward
from vt_ray.rewards.config import REWARD_COMPONENTS, RewardConfig
from vt_ray.rewards.format import format_reward
from vt_ray.rewards.guard import RewardFn, RewardGuard, make_guard, resolve_import_path
from vt_ray.rewards.optional import caption_similarity, length_penalty, temporal_iou
from vt_ray.rewards.target import RewardTarget
from vt_ray.trace import ParsedTrace, parse_trace

log = logging.getLogger(__name__)



@REWARD_COMPONENTS.register("accuracy")
def _accuracy(trace: ParsedTrace, response: str, target: RewardTarget, cfg: RewardConfig) -> float:
    """The answer is correct (0/1, or token F1 for free text): vt_ray.rewards.accuracy."""
    return accuracy_reward(trace, response, target, cfg)


@REWARD_COMPONENTS.register("format")
def _format(trace: ParsedTrace, response: str, target: RewardTarget, cfg: RewardConfig) -> float:
    """The trace format (``reward.format_mode``; think_answer is Video-R1's)."""
    if cfg.format_mode == "think_answer":
        return video_r1.format_reward(response)
    return format_reward(trace, target.duration, cfg.format_mode, cfg.window_slack_s)


@REWARD_COMPONENTS.register("temporal_iou")
def _temporal_iou(trace: ParsedTrace, response: str, target: RewardTarget, cfg: RewardConfig) -> float:
    """IoU of the predicted <time> windows with the annotated ones."""
    return temporal_iou(trace.windows, target.windows, target.duration)


@REWARD_COMPONENTS.register("caption_similarity")
def _caption_similarity(trace: ParsedTrace, response: str, target: RewardTarget, cfg: RewardConfig) -> float:
    """Similarity of the predicted <caption>s to the reference captions (``reward.caption_metric``)."""
    return caption_similarity(trace.captions, target.captions, cfg.caption_metric)


@REWARD_COMPONENTS.register("length_penalty")
def _length_penalty(trace: ParsedTrace, response: str, target: RewardTarget, cfg: RewardConfig) -> float:
    """Soft over-length penalty in [-1, 0]."""
    return length_penalty(response, cfg.length_max_words, cfg.length_buffer_words)



class RewardScorer:
    """Scores responses with the configured rewards and keeps run-level counters for metrics."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self.weights = cfg.weights()
        # Resolve user rewards now so a bad import path fails before the first step, naming its key.
        functions: dict[str, RewardFn] = {
            c.path: resolve_import_path(c.path, f"reward.custom[{i}].path") for i, c in enumerate(cfg.custom)
        }
        self._guard: RewardGuard | None = (
            make_guard(cfg.isolation, functions, cfg.timeout_s) if cfg.custom else None
        )
        self.counters = {"scored": 0, "errors": 0, "timeouts": 0}

    def score(self, response: str, target: RewardTarget) -> dict[str, float]:
        if not isinstance(response, str):
            response = "" if response is None else str(response)
        trace = parse_trace(response)
        out: dict[str, float] = {}
        errors = timeouts = 0
        for name in REWARD_COMPONENTS.builtin:
            try:
                out[name] = float(REWARD_COMPONENTS.get(name)(trace, response, target, self.cfg))
            except Exception:  # noqa: BLE001 - a reward bug must not crash a training step
                log.exception("built-in reward %s failed on response %r", name, response[:200])
                out[name], errors = 0.0, errors + 1
        for c in self.cfg.custom:
            assert self._guard is not None
            value, outcome = self._guard.call(c.path, response, target)
            out[c.name] = value
            errors += outcome == "error"
            timeouts += outcome == "timeout"
        out["total"] = sum(self.weights[name] * out[name] for name in self.weights)
        out["errors"], out["timeouts"] = float(errors), float(timeouts)
        self.counters["scored"] += 1
        self.counters["errors"] += errors
        self.counters["timeouts"] += timeouts
        return out

    def score_batch(self, responses: Sequence[str], targets: Sequence[RewardTarget]) -> list[dict[str, float]]:
        if len(responses) != len(targets):
            raise ValueError(f"{len(responses)} responses but {len(targets)} targets")
        return [self.score(r, t) for r, t in zip(responses, targets)]

    def close(self) -> None:
        if self._guard is not None:
            self._guard.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def score_response(response: str, target: RewardTarget, cfg: RewardConfig) -> dict[str, float]:
    """One response, every component and ``total``. Starts (and stops) the custom-reward guard if needed:
    score many responses with one :class:`RewardScorer` instead."""
    with RewardScorer(cfg) as scorer:
        return scorer.score(response, target)


def reward_metrics_by_type(results: Sequence[dict[str, float]], answer_types: Sequence[str],
                          prefix: str = "reward/") -> dict[str, float]:
    """``<prefix>accuracy/<answer_type>`` and ``<prefix>count/<answer_type>``: the accuracy reward per question type
    of a mixed batch (Video-R1 mixes multiple choice, numerical, OCR, free-form and regression)."""
    by_type: dict[str, list[float]] = {}
    for r, kind in zip(results, answer_types, strict=True):
        by_type.setdefault(kind, []).append(r["accuracy"])
    out = {f"{prefix}accuracy/{k}": sum(v) / len(v) for k, v in sorted(by_type.items())}
    out.update({f"{prefix}count/{k}": float(len(v)) for k, v in sorted(by_type.items())})
    return out


def reward_metrics(results: Sequence[dict[str, float]], prefix: str = "reward/") -> dict[str, float]:
    """Batch means of every component (``reward/<name>``) and summed ``errors``/``timeouts`` counts."""
    if not results:
        return {}
    out: dict[str, float] = {}
    for name in results[0]:
        values = [r[name] for r in results]
        out[prefix + name] = sum(values) if name in ("errors", "timeouts") else sum(values) / len(values)
    return out
