"""Video-R1's rewards and its evaluation metric, exact to its published definitions.

Source: tulerfeng/Video-R1@59d65c3, ``src/r1-v/src/open_r1/grpo.py`` (``accuracy_reward``, ``format_reward``;
the training rewards) and ``src/eval_bench.py`` (``reward_fn``, ``mean_relative_accuracy``; the evaluation).
Re-implemented here (not copied), with the same arithmetic, so a Video-R1 user gets the same numbers:

* the answer is the content of the FIRST ``<answer>...</answer>`` (``re.search``, whitespace stripped), ``""``
  when there is none; the gold ``solution`` goes through the same extraction;
* multiple choice: exact string equality of the two stripped answers (case-sensitive: ``a`` != ``A``);
* numerical: 0 when exactly one side contains ``.`` or ``,`` (so ``3.0`` vs ``3`` and ``1,000`` vs ``1000``
  score 0); else both go through ``float(x.replace(",", ""))`` and must be equal after ``round(x, 2)``;
  an unparsable side scores 0;
* OCR: ``1 - WER(gold, pred)`` on whitespace tokens (word-level Levenshtein / max(1, gold words)), clipped
  to [0, 1]; two empty answers score 1, as in Video-R1;
* free-form: the mean of the ROUGE-1, ROUGE-2 and ROUGE-L F-measures (``rouge_score``, Porter stemmer),
  clipped to [0, 1];
* regression (training): ``1 - min(1, (|pred - gold| + 1e-9) / (|gold| + 1e-9))``; note that gold 0 and
  prediction 0 score 0 (the 1e-9 terms make the ratio 1), as in Video-R1. One deliberate deviation: an
  answer ``nan`` scores 0 here, where Video-R1's ``max(0.0, nan)`` makes it score 1 (a reward hack);
* format: ``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", DOTALL)``: 1 or 0;
* evaluation (``eval_reward``): like training for multiple choice and numerical, but a response without an
  ``<answer>`` block is graded as a whole; regression gives the MRA (mean over thresholds 0.50, 0.55, ...,
  0.95 of ``rel_err < 1 - threshold``, ``rel_err = |pred - gold| / (|gold| + 1e-8)`` in float32, computed
  with torch as Video-R1 does); OCR and free-form score 0 (Video-R1's evaluation does not grade them).

Every function takes plain strings and never raises: a malformed model output scores 0 (as in Video-R1,
whose ``try/except`` turns every error into 0).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
"""Video-R1's ``problem_type`` values (the keys of its TYPE_TEMPLATE)."""
TO_ANSWER_TYPE = {
    "multiple choice": "multiple_choice",
    "numerical": "numeric",
    "OCR": "ocr",
    "free-form": "free_text",
    "regression": "regression",
}
"""Video-R1 ``problem_type`` -> our ``answer_type`` (a one-to-one map)."""
FROM_ANSWER_TYPE = {v: k for k, v in TO_ANSWER_TYPE.items()}

_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
MAX_TEXT_CHARS = 20000
"""Longer answers are cut before ROUGE (quadratic in words): far beyond any rollout's max_tokens, so the cut
never changes a training reward, only bounds the cost of adversarial input to ``score``/verl/EasyR1."""


def extract_answer(text: str) -> str:
    """Content of the first ``<answer>`` block, stripped; ``""`` when there is none."""
    match = _ANSWER_RE.search(text or "")
    return match.group(1).strip() if match else ""


def to_number(text: str) -> float | None:
    """Video-R1's ``normalize_number``: ``float(text.replace(",", ""))``, None when that fails. Python's
    ``float`` also takes surrounding spaces, ``1_000``, ``inf``/``nan`` and non-ASCII digits, as Video-R1's."""
    try:
        return float(text.replace(",", ""))
    except (ValueError, TypeError, AttributeError):
        return None


def multiple_choice(pred: str, gold: str) -> float:
    return 1.0 if pred.strip() == gold.strip() else 0.0


def numerical(pred: str, gold: str) -> float:
    gold_has_decimal = "." in gold or "," in gold
    pred_has_decimal = "." in pred or "," in pred
    if gold_has_decimal != pred_has_decimal:
        return 0.0
    g, p = to_number(gold), to_number(pred)
    if g is None or p is None:
        return 0.0
    try:
        return 1.0 if round(g, 2) == round(p, 2) else 0.0
    except (OverflowError, ValueError):  # round(inf) is fine, but stay total on any float
        return 0.0


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / max(1, reference words), Video-R1's ``wer``.

    Own implementation (as Video-R1 has its own; jiwer normalises differently). A hypothesis of at least twice
    the reference's words (reference non-empty) has WER >= 1 whatever the words, so it returns that bound
    without the quadratic table: the clipped OCR reward is 0 either way."""
    ref, hyp = reference.split(), hypothesis.split()
    m, n = len(ref), len(hyp)
    if m == 0:
        return float(n)
    if n >= 2 * m:
        return (n - m) / m
    previous = list(range(n + 1))
    for i in range(1, m + 1):
        current = [i] + [0] * n
        for j in range(1, n + 1):
            if ref[i - 1] == hyp[j - 1]:
                current[j] = previous[j - 1]
            else:
                current[j] = 1 + min(previous[j], current[j - 1], previous[j - 1])
        previous = current
    return previous[n] / max(1, m)


def ocr(pred: str, gold: str) -> float:
    return max(0.0, min(1.0, 1.0 - word_error_rate(gold, pred)))


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def free_form(pred: str, gold: str) -> float:
    scores = _rouge().score(gold[:MAX_TEXT_CHARS], pred[:MAX_TEXT_CHARS])
    mean: float = (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3
    return max(0.0, min(1.0, mean))


def regression(pred: str, gold: str) -> float:
    g, p = to_number(gold), to_number(pred)
    if g is None or p is None:
        return 0.0
    relative = (abs(p - g) + 1e-9) / (abs(g) + 1e-9)
    if math.isnan(relative):
        # Deliberate deviation: in Video-R1, max(0.0, nan) is 0.0, so an answer "nan" scores 1 (a reward hack).
        return 0.0
    return 1.0 - min(1.0, max(0.0, relative))


def mean_relative_accuracy(pred: float, target: float, start: float = 0.5, end: float = 0.95,
                           interval: float = 0.05) -> float:
    """Video-R1's (and VSI-Bench's) MRA, with torch float32 arithmetic exactly as its evaluation computes it."""
    import torch

    p, t = torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    rel_error = torch.abs(p - t) / (torch.abs(t) + 1e-8)
    thresholds = torch.arange(start, end + interval / 2, interval, dtype=torch.float32)
    return float((rel_error < (1 - thresholds)).float().mean().item())


_TRAINING = {
    "multiple choice": multiple_choice,
    "numerical": numerical,
    "OCR": ocr,
    "free-form": free_form,
    "regression": regression,
}


def training_reward(response: str, solution: str, problem_type: str) -> float:
    """Video-R1's training accuracy reward of one response. ``solution`` may be ``<answer>X</answer>`` (as in
    its files) or the bare answer. An unknown problem type scores 0, as in Video-R1."""
    fn = _TRAINING.get(problem_type)
    if fn is None:
        return 0.0
    gold = extract_answer(solution) if "<answer>" in solution else solution.strip()
    try:
        return float(fn(extract_answer(response), gold))
    except Exception:  # noqa: BLE001 - Video-R1 scores any error 0; so do we
        return 0.0


def eval_reward(response: str, solution: str, problem_type: str) -> float:
    """Video-R1's evaluation score of one response (``eval_bench.py`` ``reward_fn``): regression gives MRA,
    OCR and free-form give 0, a response without ``<answer>`` is graded as a whole."""
    pred = extract_answer(response) or response
    gold = extract_answer(solution) if "<answer>" in solution else solution.strip()
    try:
        if problem_type == "multiple choice":
            return multiple_choice(pred, gold)
        if problem_type == "numerical":
            return numerical(pred, gold)
        if problem_type == "regression":
            g, p = to_number(gold), to_number(pred)
            return 0.0 if g is None or p is None else mean_relative_accuracy(p, g)
    except Exception:  # noqa: BLE001
        return 0.0
    return 0.0


def format_reward(response: str) -> float:
    """Video-R1's format reward: the whole response is ``<think>...</think>`` then ``<answer>...</answer>``."""
    return 1.0 if _FORMAT_RE.fullmatch(response or "") else 0.0
