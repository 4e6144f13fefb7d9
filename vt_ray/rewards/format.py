"""Format reward: does the response follow the Video-Thinker structure?

The paper rewards the format but never defines r_format; this is our definition (MISSION 1.4). Criteria:

1. ``triple``: at least one complete ``<time>`` -> ``<caption>`` -> ``<think>`` sequence.
2. ``windows``: every ``<time>`` parses as a window (:func:`vt_ray.trace.parse_window`) and, when the video
   duration is known, ends by ``duration + reward.window_slack_s``; at least one window exists.
3. ``one_answer``: exactly one ``<answer>`` block, not empty.
4. ``answer_last``: nothing after the answer (no text, no step).
5. ``well_formed``: no unclosed, nested or stray tags and no empty steps.

strict: 1.0 if all hold, else 0.0. graded: the fraction that hold (0.2 steps).
Guards against known hacks: an empty answer fails 3; duplicated tag blocks cannot earn more than one
criterion's worth (criteria are booleans, not counts); several answers fail 3.
"""

from __future__ import annotations

from vt_ray.trace import (
    EMPTY_ANSWER,
    EMPTY_STEP,
    NESTED_TAG,
    STEP_AFTER_ANSWER,
    STRAY_CLOSING_TAG,
    TEXT_AFTER_ANSWER,
    UNCLOSED_TAG,
    ParsedTrace,
)

FORMAT_CRITERIA = ("triple", "windows", "one_answer", "answer_last", "well_formed")
_MALFORMED = (UNCLOSED_TAG, NESTED_TAG, STRAY_CLOSING_TAG, EMPTY_STEP)


def format_criteria(trace: ParsedTrace, duration: float | None, slack_s: float = 1.0) -> dict[str, bool]:
    """Which of the format criteria a parsed response meets."""
    time_steps = [s for s in trace.steps if s.kind == "time"]
    limit = None if duration is None else duration + slack_s
    windows_ok = bool(time_steps) and all(
        s.window is not None and (limit is None or s.window[1] <= limit) for s in time_steps
    )
    return {
        "triple": trace.complete_triples() >= 1,
        "windows": windows_ok,
        "one_answer": trace.answer_count == 1 and not trace.has_violation(EMPTY_ANSWER),
        "answer_last": trace.answer_count >= 1
        and not (trace.has_violation(TEXT_AFTER_ANSWER) or trace.has_violation(STEP_AFTER_ANSWER)),
        "well_formed": not any(trace.has_violation(code) for code in _MALFORMED),
    }


def format_reward(trace: ParsedTrace, duration: float | None, mode: str = "strict", slack_s: float = 1.0) -> float:
    met = format_criteria(trace, duration, slack_s)
    if mode == "strict":
        return float(all(met.values()))
    if mode == "graded":
        return sum(met.values()) / len(met)
    raise ValueError(f"unknown format mode {mode!r} (strict | graded)")
