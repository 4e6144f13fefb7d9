"""Optional rewards a recipe can switch on by weight: temporal IoU, caption similarity, length penalty.

Each is chosen to resist the obvious hack. Temporal IoU compares the *union* of predicted windows with the
union of ground-truth windows, so citing the whole video or many windows lowers the score (IoU, not recall).
Caption similarity compares all predicted captions, joined, with all references, joined, using an F-measure,
so writing many captions lowers precision. (The paper's evaluation metrics, best IoU per ground-truth span and
per-caption BLEU/METEOR/ROUGE-L, live in the evaluation module; these are training signals.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from vt_ray.rewards.accuracy import token_f1

MAX_CAPTION_WORDS = 1000  # ROUGE-L is O(n*m) in pure Python: cap the prediction to bound a degenerate output


def _union(windows: Iterable[tuple[float, float]], duration: float | None) -> list[tuple[float, float]]:
    """Sorted disjoint intervals covering the windows, clipped to [0, duration] when known."""
    clipped = []
    for s, e in windows:
        if duration is not None:
            s, e = max(0.0, min(s, duration)), max(0.0, min(e, duration))
        if e > s:
            clipped.append((s, e))
    merged: list[tuple[float, float]] = []
    for s, e in sorted(clipped):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _length(intervals: Sequence[tuple[float, float]]) -> float:
    return sum(e - s for s, e in intervals)


def _intersection(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def temporal_iou(
    predicted: Iterable[tuple[float, float]], truth: Iterable[tuple[float, float]], duration: float | None = None
) -> float:
    """IoU of the union of predicted windows with the union of ground-truth windows, in [0, 1]; 0 when either
    side is empty (no ground truth means no grounding signal)."""
    p, t = _union(predicted, duration), _union(truth, duration)
    inter = _intersection(p, t)
    union = _length(p) + _length(t) - inter
    return inter / union if union > 0 else 0.0


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:  # built once per process; the scorer is stateless
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def caption_similarity(predicted: Sequence[str], references: Sequence[str], metric: str = "rouge_l") -> float:
    """Similarity in [0, 1] of the predicted captions (joined) to the references (joined); 0 when either is
    empty. rouge_l: ROUGE-L F-measure from the rouge-score package; token_f1: bag-of-words F1."""
    pred = " ".join(" ".join(predicted).split()[:MAX_CAPTION_WORDS])
    ref = " ".join(references)
    if not pred.strip() or not ref.strip():
        return 0.0
    if metric == "token_f1":
        return token_f1(pred, ref)
    if metric == "rouge_l":
        return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)
    raise ValueError(f"unknown caption metric {metric!r} (rouge_l | token_f1)")


def length_penalty(response: str, max_words: int, buffer_words: int) -> float:
    """Soft over-length penalty in [-1, 0] (DAPO-style): 0 up to ``max_words - buffer_words`` words, then
    linear down to -1 at ``max_words`` and beyond. Words are whitespace-split (rewards see text, not tokens)."""
    words = len(response.split())
    start = max_words - buffer_words
    if words <= start:
        return 0.0
    if words >= max_words or buffer_words == 0:
        return -1.0
    return -(words - start) / buffer_words
