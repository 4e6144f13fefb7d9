"""The look-up examples must teach reading, not a colour -> letter table: the letter is the one the shuffled
options list the named colour under, and the think names the same letter the answer gives."""

from __future__ import annotations

from collections import Counter

from benchmarks.option_lookup import lookup_samples


def test_lookup_examples_answer_the_letter_the_options_give_the_named_colour() -> None:
    samples = lookup_samples(48, "t", "videos/dark.mp4")
    for s in samples:
        colour = s.extra["color"]
        assert s.question == f"Which option is {colour}?"
        assert s.options[ord(s.answer) - ord("A")] == colour
        assert s.trace.endswith(f"{colour} is option {s.answer}.</think> <answer>{s.answer}</answer>")
    assert set(Counter(s.extra["color"] for s in samples).values()) == {12}
    by_colour: dict[str, set[str]] = {}
    for s in samples:
        by_colour.setdefault(s.extra["color"], set()).add(s.answer)
    assert all(len(letters) > 1 for letters in by_colour.values())  # the letter is not a function of the colour
