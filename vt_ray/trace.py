"""The Video-Thinker trace format: parse a response into ordered steps and an answer, and render one.

Contract (what the parser accepts, and what it reports instead of raising):

* Tags: ``<time>``, ``<caption>``, ``<think>``, ``<answer>``, case-insensitive, no attributes. Any other text,
  including unknown tags and free text between steps ("Hmm, let me look again..."), is kept out of the steps
  and is not a violation; the paper's model writes such text.
* A step is a closed, non-nested ``<time>``/``<caption>``/``<think>`` block, kept in order of appearance.
  Repeats and interleavings are allowed (self-correction revisits a window).
* ``<time>`` contents are parsed by :func:`parse_window`; an unparseable window stays a step with
  ``window=None`` and adds a ``bad_time_window`` violation.
* The answer is the content of the last closed ``<answer>`` block. More than one, an empty one, or text after
  it are violations; the answer text is still returned so callers decide how strict to be.
* Unclosed, nested or stray tags are violations; the parser resynchronises at the next opening tag.
* :func:`parse_trace` never raises on any ``str`` and runs in linear time (one regex scan), so a 100 kB
  degenerate output costs milliseconds.

Not covered: windows against the video's duration (the format reward does that, it knows the duration), and
the meaning of the answer (the accuracy reward).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

StepKind = Literal["time", "caption", "think"]
STEP_KINDS: tuple[StepKind, ...] = ("time", "caption", "think")
_TAG_RE = re.compile(r"<\s*(/?)\s*(time|caption|think|answer)\s*>", re.IGNORECASE)

# Violation codes. Stable strings: rewards, metrics and tests key on them.
NO_ANSWER = "no_answer"
EMPTY_ANSWER = "empty_answer"
MULTIPLE_ANSWERS = "multiple_answers"
TEXT_AFTER_ANSWER = "text_after_answer"
STEP_AFTER_ANSWER = "step_after_answer"
UNCLOSED_TAG = "unclosed_tag"
NESTED_TAG = "nested_tag"
STRAY_CLOSING_TAG = "stray_closing_tag"
BAD_TIME_WINDOW = "bad_time_window"
EMPTY_STEP = "empty_step"
NO_STEPS = "no_steps"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    text: str  # stripped tag contents
    window: tuple[float, float] | None = None  # seconds, only for kind == "time" and when parseable


@dataclass(frozen=True)
class ParsedTrace:
    steps: tuple[Step, ...]
    answer: str | None  # stripped contents of the last closed <answer>, None when there is none
    violations: tuple[str, ...]  # codes above, in order of detection, may repeat
    answer_count: int = 0

    @property
    def windows(self) -> list[tuple[float, float]]:
        return [s.window for s in self.steps if s.kind == "time" and s.window is not None]

    @property
    def captions(self) -> list[str]:
        return [s.text for s in self.steps if s.kind == "caption"]

    @property
    def thoughts(self) -> list[str]:
        return [s.text for s in self.steps if s.kind == "think"]

    def has_violation(self, code: str) -> bool:
        return code in self.violations

    def complete_triples(self) -> int:
        """Number of time -> caption -> think sequences, each step used once, in order of appearance."""
        want, count = 0, 0
        for step in self.steps:
            if step.kind == STEP_KINDS[want]:
                want += 1
                if want == 3:
                    count, want = count + 1, 0
            elif step.kind == "time":
                want = 1
        return count


# --- time windows -------------------------------------------------------------------------------------------

_NUM = r"\d+(?:\.\d+)?"
_CLOCK = r"\d+:\d{1,2}(?::\d{1,2})?(?:\.\d+)?"  # MM:SS, H:MM:SS, with optional fraction
_POINT = rf"(?:{_CLOCK}|{_NUM})\s*(?:s|sec|secs|second|seconds)?"
_WINDOW_RE = re.compile(
    rf"^\s*(?:from\s+)?({_POINT})\s*(?:-|–|—|to|~)\s*({_POINT})\s*(?:s|sec|secs|seconds?)?\s*\.?\s*$",
    re.IGNORECASE,
)
_UNIT_RE = re.compile(r"\s*(?:s|sec|secs|second|seconds)$", re.IGNORECASE)


def parse_time_point(text: str) -> float | None:
    """Seconds from ``12.5``, ``12.5s``, ``00:12``, ``1:02:03.5``; None if not a time."""
    t = _UNIT_RE.sub("", text.strip())
    if not t:
        return None
    parts = t.split(":")
    if len(parts) > 3:
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    if any(v < 0 for v in values) or any(v >= 60 for v in values[1:]):
        return None
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return seconds


def parse_window(text: str) -> tuple[float, float] | None:
    """A ``start-end`` window in seconds, or None. Accepts ``12.5-30``, ``12.5s - 30s``, ``00:12-00:30``,
    ``0.0-5.0 seconds``, ``1:02:03-1:02:10``, ``from 3 to 5``. Requires start <= end."""
    if len(text) > 200:  # a window is short; refuse pathological contents cheaply
        return None
    m = _WINDOW_RE.match(text)
    if not m:
        return None
    start, end = parse_time_point(m.group(1)), parse_time_point(m.group(2))
    if start is None or end is None or start > end:
        return None
    return (start, end)


def format_clock(seconds: float) -> str:
    """``MM:SS`` (``H:MM:SS`` past an hour), the way the trained model writes times; whole seconds."""
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_window(window: tuple[float, float]) -> str:
    return f"{format_clock(window[0])}-{format_clock(window[1])}"


# --- parsing ------------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    steps: list[Step] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    last_answer_end: int = -1
    step_after_answer: bool = False


def parse_trace(text: str) -> ParsedTrace:
    """Parse a model response; never raises (see the module docstring for the contract)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    scan = _Scan()
    open_tag: str | None = None
    open_end = 0
    for m in _TAG_RE.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2).lower()
        if not closing:
            if open_tag is not None:  # a new block opens inside another: drop the outer, resync here
                scan.violations.append(NESTED_TAG)
            open_tag, open_end = tag, m.end()
            continue
        if open_tag != tag:
            scan.violations.append(STRAY_CLOSING_TAG)
            continue
        _close_block(scan, tag, text[open_end : m.start()], m.end())
        open_tag = None
    if open_tag is not None:
        scan.violations.append(UNCLOSED_TAG)
    return _finish(scan, text)


def _close_block(scan: _Scan, tag: str, raw: str, end: int) -> None:
    content = raw.strip()
    if tag == "answer":
        scan.answers.append(content)
        scan.last_answer_end = end
        return
    if scan.answers:
        scan.step_after_answer = True
    if not content:
        scan.violations.append(EMPTY_STEP)
    window = None
    if tag == "time":
        window = parse_window(content)
        if window is None:
            scan.violations.append(BAD_TIME_WINDOW)
    scan.steps.append(Step(kind=tag, text=content, window=window))  # type: ignore[arg-type]


def _finish(scan: _Scan, text: str) -> ParsedTrace:
    violations = scan.violations
    answer = scan.answers[-1] if scan.answers else None
    if not scan.steps:
        violations.append(NO_STEPS)
    if answer is None:
        violations.append(NO_ANSWER)
    else:
        if not answer:
            violations.append(EMPTY_ANSWER)
        if len(scan.answers) > 1:
            violations.append(MULTIPLE_ANSWERS)
        if scan.step_after_answer:
            violations.append(STEP_AFTER_ANSWER)
        if text[scan.last_answer_end :].strip():
            violations.append(TEXT_AFTER_ANSWER)
    return ParsedTrace(
        steps=tuple(scan.steps), answer=answer, violations=tuple(violations), answer_count=len(scan.answers)
    )


def display_segments(text: str) -> list[tuple[str, str]]:
    """``text`` cut into ``(tag, piece)`` pieces that concatenate back to it, for highlighting: each block
    :func:`parse_trace` closes (``time``/``caption``/``think``/``answer``, tags included) is one piece named by
    its tag; everything else (free text, stray or unclosed tags) is ``("", piece)``. Never raises."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    pieces: list[tuple[str, str]] = []
    done = 0  # end of the last piece emitted
    open_tag: str | None = None
    open_start = 0
    for m in _TAG_RE.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2).lower()
        if not closing:
            open_tag, open_start = tag, m.start()  # a nested opening drops the outer block, as parse_trace does
        elif open_tag == tag:
            if open_start > done:
                pieces.append(("", text[done:open_start]))
            pieces.append((tag, text[open_start : m.end()]))
            done, open_tag = m.end(), None
    if done < len(text):
        pieces.append(("", text[done:]))
    return pieces


# --- rendering ----------------------------------------------------------------------------------------------


def render_step(step: Step) -> str:
    body = format_window(step.window) if step.kind == "time" and step.window is not None else step.text
    return f"<{step.kind}>{body}</{step.kind}>"


def render_trace(
    steps: Sequence[Step], answer: str, *, separator: str = " ", between: Iterable[str] | None = None
) -> str:
    """Render steps then ``<answer>``. ``between`` optionally gives free text to put after each step (the
    paper's model writes e.g. "Hmm, let's see what happens next..." between triples)."""
    fillers = list(between) if between is not None else []
    parts: list[str] = []
    for i, step in enumerate(steps):
        parts.append(render_step(step))
        if i < len(fillers) and fillers[i]:
            parts.append(fillers[i])
    parts.append(f"<answer>{answer}</answer>")
    return separator.join(parts)
