"""Evaluation metrics, model-free and pure: score one response, then aggregate per-item records.

Definitions (the paper names the metrics but not these details; these are ours, and the report repeats them):

* **Answer** (:func:`extract_answer`, :func:`answer_correct`): multiple choice takes the option letter from the
  last ``<answer>`` block (``C``, ``(C)``, ``C. text``, ``Option C``, or the exact option text; a leading
  "A"/"I" followed by a lower-case word is the article/pronoun, not an option); no ``<answer>`` block means no
  prediction (wrong). Numeric: ``math.isclose`` with ``rel_tol=1e-4, abs_tol=1e-6``. Free text: equality
  after lower-casing and dropping punctuation, articles and extra spaces.
* **Grounding**: ``IoU(a, b) = |a ∩ b| / |a ∪ b|`` on [start, end] seconds. For each annotated window its
  *best IoU* is the maximum over the response's ``<time>`` windows (0 when there are none). The *item IoU* is
  the mean best IoU over the item's annotated windows. **mIoU** = mean item IoU over items with annotated
  windows. **Recall@t** = mean over those items of the share of annotated windows whose best IoU >= t.
  Items without annotated windows are left out of grounding.
* **Captioning**: each reference description (aligned with an annotated window) is compared with one
  hypothesis: the caption attached to the response's window that overlaps that annotated window best (a
  caption belongs to the nearest preceding ``<time>``); when no window overlaps, all of the response's
  captions joined; when there are none, the empty string. BLEU-1/BLEU-4 are corpus-level sacrebleu (13a
  tokenizer); ROUGE-L is the mean rouge-score F-measure (with stemming); METEOR is the mean of NLTK's
  ``meteor_score`` with offline WordNet (NOT the COCO-caption Java METEOR the paper most likely used). All on
  a 0-100 scale.
* **Format validity**: the response parses with no violation and has at least one complete
  ``<time>``/``<caption>``/``<think>`` triple.
* **Self-correction**: a response *revisits a window* when a later ``<time>`` window has IoU >= 0.5 with an
  earlier one (identical windows, including zero-length ones, count); it *revises a caption* when two
  windows in such a revisiting pair carry non-empty captions that differ after normalisation. *Reflective*:
  the text has a reflection cue (``wait``, ``hmm``, ``let me re-check``, ``on second thought``,
  ``re-examine``, ``reconsider``, ``double-check``).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vt_ray.data.schema import VideoSample
from vt_ray.eval.records import ItemResult
from vt_ray.rewards import video_r1
from vt_ray.rewards.accuracy import extract_choice, extract_number, normalize_text, numbers_match
from vt_ray.rewards.config import RewardConfig
from vt_ray.trace import ParsedTrace, parse_trace

Window = Sequence[float]

REVISIT_IOU = 0.5
DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)
_REFLECTION_RE = re.compile(
    r"\b(wait|hmm+|let me (?:re-?check|check again|look again|re-?examine|reconsider|think again)|"
    r"on second thought|re-?examine|reconsider|double-check)\b",
    re.IGNORECASE,
)

# --- answers ------------------------------------------------------------------------------------------------

def extract_answer(answer_text: str | None, answer_type: str, options: Sequence[str] = ()) -> str | None:
    """The normalised prediction from an ``<answer>`` content, or None when nothing usable is there.

    The same readers as the accuracy reward (:mod:`vt_ray.rewards.accuracy`), so training and evaluation agree
    on what counts as an answer: "B", "(B)", "Answer: B", the option text itself, numbers, normalised text."""
    if answer_text is None or not answer_text.strip():
        return None
    if answer_type == "multiple_choice":
        return extract_choice(answer_text, tuple(options))
    if answer_type == "numeric":
        value = extract_number(answer_text)
        return None if value is None else repr(value)
    return normalize_text(answer_text) or None


def answer_correct(predicted: str | None, gold: str, answer_type: str) -> bool:
    if predicted is None:
        return False
    if answer_type == "multiple_choice":
        return predicted.upper() == gold.strip().upper()
    if answer_type == "numeric":
        gold_value = extract_number(gold)
        tol = RewardConfig()
        return gold_value is not None and numbers_match(
            float(predicted), gold_value, tol.numeric_abs_tol, tol.numeric_rel_tol
        )
    return predicted == normalize_text(gold)


# --- grounding ----------------------------------------------------------------------------------------------


def interval_iou(a: Window, b: Window) -> float:
    """IoU of two [start, end] intervals; identical zero-length intervals count as 1."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    if union <= 0:
        return 1.0 if (a[0], a[1]) == (b[0], b[1]) else 0.0
    return inter / union


def best_ious(gt_windows: Sequence[Window], pred_windows: Sequence[Window]) -> list[float]:
    """For each annotated window, its best IoU against the predicted ones (0 when none)."""
    return [max((interval_iou(g, p) for p in pred_windows), default=0.0) for g in gt_windows]


def item_iou(gt_windows: Sequence[Window], pred_windows: Sequence[Window]) -> float | None:
    """Mean best IoU over the annotated windows; None when there are none (item not graded)."""
    if not gt_windows:
        return None
    ious = best_ious(gt_windows, pred_windows)
    return sum(ious) / len(ious)


@dataclass(frozen=True)
class GroundingSummary:
    items: int
    miou: float
    recall: dict[float, float]
    """threshold -> Recall@threshold, all in [0, 1]."""


def grounding_summary(
    per_item_best_ious: Iterable[Sequence[float]], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> GroundingSummary:
    """mIoU and Recall@t from each graded item's best IoUs (items with no annotated windows are skipped)."""
    items = [list(x) for x in per_item_best_ious if len(x) > 0]
    if not items:
        return GroundingSummary(0, 0.0, {t: 0.0 for t in thresholds})
    miou = sum(sum(x) / len(x) for x in items) / len(items)
    recall = {t: sum(sum(v >= t for v in x) / len(x) for x in items) / len(items) for t in thresholds}
    return GroundingSummary(len(items), miou, recall)


# --- captions -----------------------------------------------------------------------------------------------


def window_captions(parsed: ParsedTrace) -> list[tuple[tuple[float, float], str]]:
    """(window, caption) pairs: each caption belongs to the nearest preceding parseable ``<time>`` window;
    several captions under one window are joined. Windows without a caption get ""."""
    pairs: list[tuple[tuple[float, float], list[str]]] = []
    current: list[str] | None = None
    for step in parsed.steps:
        if step.kind == "time":
            if step.window is not None:
                current = []
                pairs.append((step.window, current))
            else:
                current = None
        elif step.kind == "caption" and current is not None and step.text:
            current.append(step.text)
    return [(w, " ".join(c)) for w, c in pairs]


def match_captions(
    gt_windows: Sequence[Window], ref_captions: Sequence[str], parsed: ParsedTrace
) -> list[str]:
    """One hypothesis per reference description (see the module docstring for the rule)."""
    pairs = window_captions(parsed)
    fallback = " ".join(parsed.captions)
    hyps: list[str] = []
    for gt, _ in zip(gt_windows, ref_captions):
        scored = [(interval_iou(gt, w), cap) for w, cap in pairs]
        best = max(scored, key=lambda x: x[0], default=(0.0, ""))
        hyps.append(best[1] if best[0] > 0 and best[1] else fallback)
    return hyps


_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation; a regex because NLTK's word_tokenize needs the punkt download."""
    return _TOKEN_RE.findall(text.lower())


def bleu(hypotheses: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU (0-100) with one reference per hypothesis, sacrebleu defaults (13a, exp smoothing)."""
    from sacrebleu.metrics import BLEU

    if not hypotheses:
        return 0.0
    return float(BLEU(max_ngram_order=max_order).corpus_score(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0-100) over pairs (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    if not hypotheses:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return 100.0 * sum(scores) / len(scores)


def meteor(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean NLTK METEOR (0-100) over pairs, with the offline WordNet (raises WordNetMissingError if absent)."""
    from nltk.translate.meteor_score import meteor_score

    from vt_ray.eval.wordnet import ensure_wordnet

    if not hypotheses:
        return 0.0
    ensure_wordnet()
    scores = [meteor_score([tokenize(ref)], tokenize(hyp)) for hyp, ref in zip(hypotheses, references)]
    return 100.0 * sum(scores) / len(scores)


def captioning_summary(pairs: Sequence[tuple[str, str]], *, with_meteor: bool = True) -> dict[str, float]:
    """BLEU-1, BLEU-4, ROUGE-L and (optionally) METEOR over (hypothesis, reference) pairs, 0-100."""
    hyps = [h for h, _ in pairs]
    refs = [r for _, r in pairs]
    out = {
        "pairs": float(len(pairs)),
        "bleu1": bleu(hyps, refs, 1),
        "bleu4": bleu(hyps, refs, 4),
        "rougeL": rouge_l(hyps, refs),
    }
    if with_meteor:
        out["meteor"] = meteor(hyps, refs)
    return out


# --- format and self-correction -------------------------------------------------------------------------------


def format_valid(parsed: ParsedTrace) -> bool:
    return not parsed.violations and parsed.complete_triples() >= 1


def revisits_window(windows: Sequence[Window], threshold: float = REVISIT_IOU) -> bool:
    return any(interval_iou(windows[i], windows[j]) >= threshold for i in range(len(windows)) for j in range(i))


def revises_caption(parsed: ParsedTrace, threshold: float = REVISIT_IOU) -> bool:
    pairs = window_captions(parsed)
    for j in range(len(pairs)):
        for i in range(j):
            (wi, ci), (wj, cj) = pairs[i], pairs[j]
            if ci and cj and interval_iou(wi, wj) >= threshold and normalize_text(ci) != normalize_text(cj):
                return True
    return False


def is_reflective(text: str) -> bool:
    return bool(_REFLECTION_RE.search(text or ""))


# --- one item -------------------------------------------------------------------------------------------------


def score_item(sample: VideoSample, response: str, *, benchmark: str, frames: int) -> ItemResult:
    """The per-item record for one response to one sample (pure: no model, no files)."""
    parsed = parse_trace(response)
    predicted = extract_answer(parsed.answer, sample.answer_type, sample.options)
    correct = answer_correct(predicted, sample.answer, sample.answer_type)
    extra: dict[str, float] = {}
    if sample.extra.get("answer_rules") == "video_r1" or sample.answer_type in ("ocr", "regression"):
        # Video-R1's evaluation definitions (its reward_fn: MRA for regression, OCR/free-form not graded).
        problem_type = video_r1.FROM_ANSWER_TYPE[sample.answer_type]
        extra["video_r1_reward"] = video_r1.eval_reward(response, f"<answer>{sample.answer}</answer>", problem_type)
        predicted = video_r1.extract_answer(response) or None
        correct = extra["video_r1_reward"] == 1.0
    pred_windows = [list(w) for w in parsed.windows]
    gt = [list(map(float, w)) for w in sample.windows]
    ious = best_ious(gt, pred_windows)
    refs = list(sample.captions) if sample.captions else []
    return ItemResult(
        benchmark=benchmark,
        uid=sample.uid,
        frames=frames,
        response=response,
        gold_answer=sample.answer,
        answer_type=sample.answer_type,
        category=sample.category,
        predicted_answer=predicted,
        correct=correct,
        format_valid=format_valid(parsed),
        violations=list(parsed.violations),
        pred_windows=pred_windows,
        gt_windows=gt,
        iou=(sum(ious) / len(ious)) if gt else None,
        best_ious=ious,
        pred_captions=parsed.captions,
        ref_captions=refs,
        matched_captions=match_captions(gt, refs, parsed) if refs else [],
        revisited_window=revisits_window(pred_windows),
        revised_caption=revises_caption(parsed),
        reflective=is_reflective(response),
        extra=extra,
    )


# --- aggregation ----------------------------------------------------------------------------------------------


def accuracy(results: Iterable[ItemResult]) -> dict[str, float]:
    rs = list(results)
    n = len(rs)
    correct = sum(r.correct for r in rs)
    return {"n": float(n), "correct": float(correct), "accuracy": correct / n if n else 0.0}


def accuracy_by(results: Iterable[ItemResult], *keys: str) -> dict[tuple, dict[str, float]]:
    """Accuracy grouped by record attributes, e.g. ``accuracy_by(rs, "benchmark", "frames")``."""
    groups: dict[tuple, list[ItemResult]] = defaultdict(list)
    for r in results:
        groups[tuple(getattr(r, k) for k in keys)].append(r)
    return {k: accuracy(v) for k, v in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))}


def format_summary(results: Iterable[ItemResult]) -> dict[str, object]:
    rs = list(results)
    n = len(rs)
    codes = Counter(code for r in rs for code in set(r.violations))
    return {
        "n": n,
        "valid_share": sum(r.format_valid for r in rs) / n if n else 0.0,
        "answer_extracted_share": sum(r.predicted_answer is not None for r in rs) / n if n else 0.0,
        "violation_share": {code: count / n for code, count in sorted(codes.items())},
    }


def self_correction_summary(results: Iterable[ItemResult]) -> dict[str, float]:
    rs = list(results)
    n = len(rs)
    revisit = [r for r in rs if r.revisited_window]
    other = [r for r in rs if not r.revisited_window]

    def share(xs: list[ItemResult], pred: Callable[[ItemResult], bool]) -> float:
        return sum(1 for x in xs if pred(x)) / len(xs) if xs else 0.0

    return {
        "n": float(n),
        "revisit_share": len(revisit) / n if n else 0.0,
        "revise_caption_share": share(rs, lambda r: r.revised_caption),
        "reflective_share": share(rs, lambda r: r.reflective),
        "accuracy_when_revisiting": share(revisit, lambda r: r.correct),
        "accuracy_otherwise": share(other, lambda r: r.correct),
    }
