"""Accuracy reward: does the final answer match the ground truth? (paper: 1 or 0)

Contract. The answer is the content of the last ``<answer>`` block (:func:`vt_ray.trace.parse_trace`). An
empty block scores 0 (a known reward hack). Only when ``reward.answer_fallback`` is on and there is no
``<answer>`` block at all, an explicit "answer is X" / "Answer: X" phrase or a last line that is only an
answer is used instead. Nothing here executes or evaluates model text, and every function is linear-time
regex work on the (capped) answer text, so adversarial strings cost little and never raise.

Multiple choice accepts, case-insensitively where unambiguous: ``B``, ``(B)``, ``[B]``, ``B.``, ``B:``,
``B) red``, ``b) red``, ``B. red``, ``Answer: B``, ``The answer is (B)``, ``**B**``, and the option text
itself (``red circle``, ``A red circle``, ``the red circle.``). A capital letter directly followed by words
("A red circle") is read as a letter only if those words are that option's text; otherwise the option-text
match decides, so the article "A" is not taken for option A. After an explicit "answer is"/"Answer:" prefix a
capital followed by words no option matches is the letter ("The answer is B because ..."). Not covered:
several letters ("A and C": no single choice, 0), negations ("not B" reads as B only through the "answer is"
forms, not here), option texts that are only mentioned inside a longer sentence together with another option
(ambiguous: 0).

Numeric: the answer must contain exactly one number, or a number right after "answer is"/"answer:";
``1,000``, ``-2.5``, ``3/4``, ``40%`` (as 40) and the words zero..twenty are understood.

Free text: SQuAD-style normalisation (lower case, no punctuation, no articles, single spaces), then exact
match or token F1.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from vt_ray.rewards import video_r1
from vt_ray.rewards.config import RewardConfig
from vt_ray.rewards.target import OPTION_LETTERS, RewardTarget
from vt_ray.trace import ParsedTrace

MAX_ANSWER_CHARS = 2000  # an answer is short; longer contents are cut so adversarial text stays cheap

# --- answer text --------------------------------------------------------------------------------------------

_FALLBACK_RE = re.compile(
    r"(?:final\s+answer|correct\s+(?:answer|option|choice)|answer|option|choice)\s*(?:is|:|=|-)\s*",
    re.IGNORECASE,
)


def answer_text(trace: ParsedTrace, response: str, fallback: bool) -> str | None:
    """The text to grade: the last ``<answer>`` content, else (fallback only) an explicit answer phrase or the
    last non-empty line of the response. None when there is nothing to grade."""
    if trace.answer is not None:
        return trace.answer[:MAX_ANSWER_CHARS] if trace.answer else None
    if not fallback:
        return None
    tail = response[-MAX_ANSWER_CHARS:]
    matches = list(_FALLBACK_RE.finditer(tail))
    if matches:  # the last phrase: a model that corrects itself ("the answer is C... wait, it is B")
        rest = tail[matches[-1].end() : matches[-1].end() + 200].strip()
        return rest.splitlines()[0].strip() if rest else None
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else None


# --- multiple choice ----------------------------------------------------------------------------------------

_DECOR_RE = re.compile(r"[*_`\"'“”‘’]+")
_PREFIX_RE = re.compile(
    r"^(?:the\s+)?(?:final\s+|correct\s+|best\s+)?(?:answer|option|choice)\s*(?:is\s*:?|:|=|-)?\s*",
    re.IGNORECASE,
)
# A lone letter, optionally bracketed and followed by punctuation: B | (B) | [B] | B. | B: | B) | (B).
_LONE_RE = re.compile(r"^[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:;,!]?$")
# A letter then a delimiter then text: "B) red", "B. red", "(B) red", "B: red", "B - red".
_DELIM_RE = re.compile(
    r"^(?:[(\[]\s*([A-Za-z])\s*[)\]]|([A-Z])\s*[.:)\]]|([A-Z])\s+-|([a-z])\))\s*(.+)$", re.DOTALL
)
# An upper-case letter then plain words: "A red circle" (article or letter? decided by the option texts).
_WEAK_RE = re.compile(r"^([A-Z])\s+(\S.*)$", re.DOTALL)
_ARTICLE_RE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


_PUNCT_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


def _norm(text: str) -> str:
    """No markdown/quotes, lower case, punctuation to spaces, single spaces: option-text comparison ignores
    case, spacing and punctuation, identically for the answer and the options."""
    text = _DECOR_RE.sub("", text).lower().translate(_PUNCT_TO_SPACE)
    return " ".join(text.split())


def _match_option_text(text: str, options: tuple[str, ...]) -> str | None:
    """The letter whose option text is the answer: equal after normalisation (with or without a leading
    article), else the only option whose text appears as whole words in the answer."""
    if not options:
        return None
    normed = [_norm(o) for o in options]
    candidates = {_norm(text), _norm(_ARTICLE_RE.sub("", text.strip()))}
    exact = [i for i, o in enumerate(normed) if o and o in candidates]
    if len(exact) == 1:
        return OPTION_LETTERS[exact[0]]
    padded = f" {_norm(text)} "
    inside = [i for i, o in enumerate(normed) if o and f" {o} " in padded]
    # Drop options whose text is part of another matched option's text ("red" inside "red circle").
    inside = [i for i in inside if not any(j != i and normed[i] in normed[j] for j in inside)]
    return OPTION_LETTERS[inside[0]] if len(inside) == 1 else None


def extract_choice(text: str, options: tuple[str, ...] | list[str]) -> str | None:
    """The option letter an answer text chooses, or None (see the module docstring for accepted forms).
    With no options given, any letter A-Z is accepted and option-text matching is skipped."""
    options = tuple(options)
    valid = OPTION_LETTERS[: len(options)] if options else OPTION_LETTERS
    t = " ".join(_DECOR_RE.sub("", text[:MAX_ANSWER_CHARS]).split())
    stripped = _PREFIX_RE.sub("", t, count=1)  # "Answer: B", "The answer is (B)" -> "B", "(B)"
    had_prefix = bool(stripped) and stripped != t
    t = stripped or t

    m = _LONE_RE.match(t)
    if m:
        letter = m.group(1).upper()
        return letter if letter in valid else None
    m = _DELIM_RE.match(t)
    if m:
        letter = (m.group(1) or m.group(2) or m.group(3) or m.group(4)).upper()
        return letter if letter in valid else None
    weak = _WEAK_RE.match(t)
    if weak and options:
        letter, rest = weak.group(1), weak.group(2)
        if letter in valid and _norm(rest) == _norm(options[valid.index(letter)]):
            return letter  # "A red circle" where option A is "red circle"
    by_text = _match_option_text(t, options)
    if by_text is not None:
        return by_text
    if weak and had_prefix and weak.group(1) in valid:
        return weak.group(1)  # "The answer is B because ...": after an explicit prefix a capital is a letter
    return None


# --- numeric ------------------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUM_RE = re.compile(
    r"(?<![\w.])(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+)(?![\w.]*\d)|"
    rf"\b({'|'.join(_NUMBER_WORDS)})\b",
    re.IGNORECASE,
)
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:|=)\s*", re.IGNORECASE)


def _to_float(token: str) -> float | None:
    token = token.lower().replace(",", "")
    if token in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[token])
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(num) / float(den) if float(den) != 0 else None
        return float(token)
    except ValueError:
        return None


def extract_number(text: str) -> float | None:
    """The number an answer gives: the one right after "answer is", else the only number in the text."""
    text = text[:MAX_ANSWER_CHARS]
    after = _ANSWER_IS_RE.search(text)
    if after:
        m = _NUM_RE.match(text, after.end())
        if m:
            return _to_float(m.group(1) or m.group(2))
    found = [m.group(1) or m.group(2) for m in _NUM_RE.finditer(text)]
    return _to_float(found[0]) if len(found) == 1 else None


def numbers_match(pred: float, gold: float, abs_tol: float, rel_tol: float) -> bool:
    return abs(pred - gold) <= max(abs_tol, rel_tol * abs(gold))


# --- free text ----------------------------------------------------------------------------------------------

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    """SQuAD-style: lower case, punctuation removed, articles removed, single spaces."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


def token_f1(pred: str, gold: str) -> float:
    """Bag-of-words F1 between two normalised texts (SQuAD definition); 1.0 when both are empty."""
    p, g = normalize_text(pred).split(), normalize_text(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


# --- the reward ---------------------------------------------------------------------------------------------


def accuracy_reward(trace: ParsedTrace, response: str, target: RewardTarget, cfg: RewardConfig) -> float:
    """1.0 if the graded answer matches the ground truth, else 0.0 (token F1 in [0, 1] for free text when
    ``reward.free_text_match`` is token_f1). Video-R1's definitions (vt_ray.rewards.video_r1) when the
    sample's rules or ``reward.answer_rules`` say video_r1, and always for ocr and regression answers."""
    rules = target.rules if cfg.answer_rules == "sample" else cfg.answer_rules
    if rules == "video_r1" or target.answer_type in ("ocr", "regression"):
        return video_r1.training_reward(response, target.answer, video_r1.FROM_ANSWER_TYPE[target.answer_type])
    text = answer_text(trace, response, cfg.answer_fallback)
    if not text:
        return 0.0
    if target.answer_type == "multiple_choice":
        gold_letter = extract_choice(target.answer, target.options)  # a letter, or the option's text
        choice = extract_choice(text, target.options)
        return float(choice is not None and choice == gold_letter)
    if target.answer_type == "numeric":
        pred, gold = extract_number(text), _to_float(target.answer.strip())
        if pred is None or gold is None:
            return 0.0
        return float(numbers_match(pred, gold, cfg.numeric_abs_tol, cfg.numeric_rel_tol))
    if cfg.free_text_match == "token_f1":
        return token_f1(text, target.answer)
    gold_text = normalize_text(target.answer)
    return float(bool(gold_text) and normalize_text(text) == gold_text)


def is_letter_answer_correct(answer: str | None, gold_letter: str) -> bool:
    """Strict multiple-choice scoring as Video-R1 and Video-Holmes do it: the ``<answer>`` content must be the
    option letter itself (surrounding spaces aside). The reward accepts more forms (``(B)``, the option text),
    so a policy can learn to answer with the option text; this is the figure to report next to accuracy."""
    return answer is not None and answer.strip() == gold_letter
