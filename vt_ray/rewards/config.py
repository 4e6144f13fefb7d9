"""Reward section of the recipe: the paper's r = r_accuracy + r_format, plus optional and user rewards.

Paper: r = r_correct (0/1) + r_format, weights 1 and 1. The paper does not define r_format; our strict
definition is documented in :mod:`vt_ray.rewards.format`. Everything else here (tolerances, optional rewards,
timeouts) is our own choice and off or neutral by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from vt_ray.common.choices import set_choice
from vt_ray.common.errors import check
from vt_ray.common.registry import Registry

_IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
REWARD_COMPONENTS = Registry(
    "reward component", "reward", "vt_ray.rewards.composite",
    ("accuracy", "format", "temporal_iou", "caption_similarity", "length_penalty"),
)
"""name -> ``component(trace, response, target, cfg) -> float``, computed for every response in this order
(cheap, linear-time by contract, reported even at weight 0). A user's own reward goes in ``reward.custom``
instead: that runs isolated, under a time limit."""
BUILTIN_COMPONENTS = REWARD_COMPONENTS.builtin
RESERVED_NAMES = (*BUILTIN_COMPONENTS, "total", "errors", "timeouts")



class FormatMode(StrEnum):
    strict = "strict"
    graded = "graded"
    think_answer = "think_answer"


class AnswerRules(StrEnum):
    sample = "sample"
    project = "project"
    video_r1 = "video_r1"


class FreeTextMatch(StrEnum):
    exact = "exact"
    token_f1 = "token_f1"


class CaptionMetric(StrEnum):
    rouge_l = "rouge_l"
    token_f1 = "token_f1"


class Isolation(StrEnum):
    process = "process"
    thread = "thread"

@dataclass(frozen=True)
class CustomRewardConfig:
    name: str = ""
    """Component name in results and metrics (``reward/<name>``); must not clash with a built-in one."""
    path: str = ""
    """Import path ``package.module:function``. The function takes ``(response: str, target: RewardTarget)``
    and returns a float. It runs isolated (``reward.isolation``) under ``reward.timeout_s``."""
    weight: float = 1.0
    """Weight in the total."""


@dataclass(frozen=True)
class RewardConfig:
    accuracy_weight: float = 1.0
    """Weight of the accuracy reward (paper: 1)."""
    format_weight: float = 1.0
    """Weight of the format reward (paper: 1)."""
    format_mode: FormatMode = FormatMode.strict
    """strict: 1 if every format criterion holds, else 0 (our reading of the paper). graded: the fraction of
    criteria met (assumption; gives a denser signal to a model that does not yet follow the format).
    think_answer: Video-R1's format reward (the response is exactly <think>...</think> <answer>...</answer>)."""
    answer_rules: AnswerRules = AnswerRules.sample
    """Which definitions grade answers: sample (each sample's own: Video-R1 files load as video_r1, everything
    else as project) | project | video_r1 (Video-R1's exact rewards, vt_ray.rewards.video_r1)."""
    answer_fallback: bool = False
    """Also look for the answer outside ``<answer>`` ("the answer is B") when the response has none. Off by
    default: the paper rewards only the tagged answer."""
    numeric_abs_tol: float = 1e-6
    """Numeric answers match when |pred - gold| <= max(abs_tol, rel_tol * |gold|) (assumption)."""
    numeric_rel_tol: float = 0.0
    """Relative tolerance for numeric answers (assumption: exact by default)."""
    free_text_match: FreeTextMatch = FreeTextMatch.exact
    """Free-text answers: exact (normalised exact match, 0/1, paper) | token_f1 (SQuAD-style F1 in [0, 1])."""
    window_slack_s: float = 1.0
    """A ``<time>`` window counts as inside the video if its end <= duration + slack. The trained model writes
    whole seconds (MM:SS), so a 10.4 s video may be cited as 00:00-00:11 (assumption)."""
    temporal_iou_weight: float = 0.0
    """Optional: IoU of the union of predicted windows with the union of ground-truth windows (0 = off)."""
    caption_similarity_weight: float = 0.0
    """Optional: similarity of the predicted captions to the reference captions (0 = off)."""
    caption_metric: CaptionMetric = CaptionMetric.rouge_l
    """rouge_l (F-measure, rouge-score package) | token_f1."""
    length_penalty_weight: float = 0.0
    """Optional: weight of the soft over-length penalty in [-1, 0] (0 = off; use a positive weight)."""
    length_max_words: int = 512
    """Words (whitespace-split) at which the length penalty reaches -1."""
    length_buffer_words: int = 128
    """The penalty ramps linearly from 0 at ``length_max_words - buffer`` to -1 at ``length_max_words``."""
    custom: list[CustomRewardConfig] = field(default_factory=list)
    """User rewards by import path: ``[{name, path: "pkg.module:function", weight}]``."""
    timeout_s: float = 5.0
    """Time limit for one custom reward call; a slower call scores 0 and counts in ``timeouts``."""
    isolation: Isolation = Isolation.process
    """How custom rewards run. process: a persistent worker subprocess, killed and restarted on a timeout or
    crash (survives infinite loops and ``os._exit``). thread: a helper thread with a timeout (cheaper, but a
    stuck call leaks its thread and ``os._exit`` kills the caller). Built-in rewards always run inline: they
    are linear-time by contract and tested on adversarial text."""

    def __post_init__(self) -> None:
        set_choice(self, "format_mode", FormatMode, "reward.format_mode")
        set_choice(self, "answer_rules", AnswerRules, "reward.answer_rules")
        set_choice(self, "free_text_match", FreeTextMatch, "reward.free_text_match")
        set_choice(self, "caption_metric", CaptionMetric, "reward.caption_metric")
        check(self.numeric_abs_tol >= 0, "reward.numeric_abs_tol", "must be >= 0")
        check(self.numeric_rel_tol >= 0, "reward.numeric_rel_tol", "must be >= 0")
        check(self.window_slack_s >= 0, "reward.window_slack_s", "must be >= 0")
        check(self.length_max_words >= 1, "reward.length_max_words", "must be >= 1")
        check(
            0 <= self.length_buffer_words <= self.length_max_words,
            "reward.length_buffer_words",
            "must be in [0, length_max_words]",
        )
        check(self.timeout_s > 0, "reward.timeout_s", "must be > 0")
        set_choice(self, "isolation", Isolation, "reward.isolation")
        seen: set[str] = set()
        for i, c in enumerate(self.custom):
            key = f"reward.custom[{i}]"
            check(bool(re.fullmatch(r"[A-Za-z_][\w]*", c.name)), f"{key}.name", f"not an identifier: {c.name!r}")
            check(c.name not in RESERVED_NAMES, f"{key}.name", f"{c.name!r} is a built-in component name")
            check(c.name not in seen, f"{key}.name", f"duplicate reward name {c.name!r}")
            seen.add(c.name)
            check(
                bool(_IMPORT_PATH_RE.match(c.path)),
                f"{key}.path",
                f"expected 'package.module:function', got {c.path!r}",
            )

    def weights(self) -> dict[str, float]:
        """Weight of every component, built-in and custom, in result order."""
        out = {
            "accuracy": self.accuracy_weight,
            "format": self.format_weight,
            "temporal_iou": self.temporal_iou_weight,
            "caption_similarity": self.caption_similarity_weight,
            "length_penalty": self.length_penalty_weight,
        }
        out.update({c.name: c.weight for c in self.custom})
        return out
