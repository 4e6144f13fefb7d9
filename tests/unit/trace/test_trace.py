"""The trace parser on well-formed, malformed, truncated and adversarial inputs."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vt_ray import trace as T
from vt_ray.trace import Step, parse_trace, parse_window, render_trace

PAPER_STYLE = (
    "<time>00:00-00:10</time> <caption>A red circle enters from the left.</caption> "
    "<think>The red shape is first.</think> Hmm, let's see what happens next... "
    "<time>00:10-00:20</time> <caption>A blue square leaves.</caption> <think>Then blue leaves.</think> "
    "Option A is wrong because... Option C fits. <answer>C</answer>"
)


def test_paper_style_trace_parses_cleanly() -> None:
    p = parse_trace(PAPER_STYLE)
    assert p.violations == ()
    assert p.answer == "C"
    assert [s.kind for s in p.steps] == ["time", "caption", "think"] * 2
    assert p.windows == [(0.0, 10.0), (10.0, 20.0)]
    assert p.captions == ["A red circle enters from the left.", "A blue square leaves."]
    assert p.complete_triples() == 2


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("12.5-30", (12.5, 30.0)),
        ("12.5s - 30s", (12.5, 30.0)),
        ("00:12-00:30", (12.0, 30.0)),
        ("0.0-5.0 seconds", (0.0, 5.0)),
        ("1:02:03-1:02:10", (3723.0, 3730.0)),
        ("3 to 5", (3.0, 5.0)),
        ("from 3s to 5s", (3.0, 5.0)),
        ("00:05.5-00:07", (5.5, 7.0)),
        ("  7 - 7 ", (7.0, 7.0)),
    ],
)
def test_window_formats(text: str, window: tuple[float, float]) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize("text", ["", "abc", "10-5", "00:75-01:00", "1-2-3", "-3-4", "1:2:3:4-5", "5", "x" * 500])
def test_bad_windows_are_none(text: str) -> None:
    assert parse_window(text) is None


def test_bad_window_is_kept_as_step_with_violation() -> None:
    p = parse_trace("<time>soon</time><caption>c</caption><think>t</think><answer>A</answer>")
    assert p.steps[0].window is None
    assert T.BAD_TIME_WINDOW in p.violations


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("<time>1-2</time><caption>c</caption><think>t</think>", T.NO_ANSWER),
        ("<time>1-2</time><caption>c</caption><think>t</think><answer></answer>", T.EMPTY_ANSWER),
        ("<time>1-2</time><answer>A</answer><answer>B</answer>", T.MULTIPLE_ANSWERS),
        ("<time>1-2</time><answer>A</answer> trailing words", T.TEXT_AFTER_ANSWER),
        ("<answer>A</answer><time>1-2</time>", T.STEP_AFTER_ANSWER),
        ("<time>1-2</time><caption>never closed <answer>A</answer>", T.NESTED_TAG),
        ("<time>1-2</time><think>open at the end", T.UNCLOSED_TAG),
        ("<time>1-2</time></caption><answer>A</answer>", T.STRAY_CLOSING_TAG),
        ("<time>1-2</time><caption>  </caption><answer>A</answer>", T.EMPTY_STEP),
        ("just text <answer>A</answer>", T.NO_STEPS),
    ],
)
def test_violations(text: str, code: str) -> None:
    assert code in parse_trace(text).violations


def test_last_answer_wins_and_is_counted() -> None:
    p = parse_trace("<answer>A</answer> wait, no <answer>B</answer>")
    assert p.answer == "B"
    assert p.answer_count == 2


def test_tags_are_case_and_space_insensitive() -> None:
    p = parse_trace("<TIME>1-2</ TIME><Caption>c</Caption><think >t</think><Answer>D</Answer>")
    assert p.violations == ()
    assert p.answer == "D"


def test_truncated_output_keeps_complete_steps() -> None:
    p = parse_trace(PAPER_STYLE[: PAPER_STYLE.index("<time>00:10")] + "<time>00:10-00:2")
    assert p.windows == [(0.0, 10.0)]
    assert T.UNCLOSED_TAG in p.violations
    assert p.answer is None


def test_complete_triples_need_order() -> None:
    assert parse_trace("<think>t</think><caption>c</caption><time>1-2</time>").complete_triples() == 0
    assert parse_trace("<time>1-2</time><time>3-4</time><caption>c</caption><think>t</think>").complete_triples() == 1


def test_render_round_trip() -> None:
    steps = [Step("time", "", (3.0, 7.0)), Step("caption", "a red circle"), Step("think", "so red")]
    text = render_trace(steps, "B", between=["", "", "Hmm, next."])
    assert text.startswith("<time>00:03-00:07</time>")
    p = parse_trace(text)
    assert p.violations == ()
    assert p.windows == [(3.0, 7.0)] and p.answer == "B" and p.captions == ["a red circle"]


def test_large_degenerate_output_is_linear() -> None:
    text = "<time>" * 20000 + "</think>" * 20000 + "<answer>" + "A" * 100_000
    start = time.perf_counter()
    p = parse_trace(text)
    assert p.answer is None and T.UNCLOSED_TAG in p.violations
    assert time.perf_counter() - start < 30  # guard only: a quadratic parser would take minutes


_TAGS = ["<time>", "</time>", "<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>"]
_fragments = st.one_of(st.sampled_from(_TAGS), st.text(max_size=12), st.sampled_from(["00:01-00:02", "3-4", "A"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(_fragments, max_size=40).map("".join))
def test_never_raises_and_is_consistent(text: str) -> None:
    p = parse_trace(text)
    assert all(s.kind in T.STEP_KINDS for s in p.steps)
    assert (p.answer is None) == (T.NO_ANSWER in p.violations)
    assert all(s.window is not None or s.kind != "time" or T.BAD_TIME_WINDOW in p.violations for s in p.steps)
    if p.violations == ():
        assert p.answer and p.steps


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_unicode_never_raises(text: str) -> None:
    parse_trace(text)
    parse_window(text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3599), st.integers(0, 600), st.text(alphabet="abc xyz.", min_size=1, max_size=20)),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from("ABCD"),
)
def test_render_parse_round_trip_property(items: list[tuple[int, int, str]], answer: str) -> None:
    steps: list[Step] = []
    for start, length, words in items:
        steps += [Step("time", "", (float(start), float(start + length))), Step("caption", words.strip() or "x")]
        steps.append(Step("think", "so"))
    p = parse_trace(render_trace(steps, answer))
    assert p.violations == ()
    assert p.windows == [s.window for s in steps if s.kind == "time"]
    assert p.complete_triples() == len(items)
