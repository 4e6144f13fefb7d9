"""Validation's pure pieces: letter-only accuracy per gold letter (the engines and rewards around it are tested
in tests/integration/trainer/)."""

from __future__ import annotations

import pytest

from vt_ray.trainer.validation import accuracy_by_gold_letter


def test_accuracy_by_gold_letter_counts_only_the_letter_itself() -> None:
    answers = ["A", "A", "B", " C ", "red", None, "D", "A"]
    golds = ["A", "A", "C", "C", "C", "D", "D", "D"]
    # A: 2 of 2; C: "B" wrong, " C " right (spaces aside), "red" (the option text) wrong; D: None wrong, "D" right,
    # "A" wrong. No gold B: no key, not a 0 that would read as "never right".
    assert accuracy_by_gold_letter(answers, golds) == pytest.approx({"A": 1.0, "C": 1 / 3, "D": 1 / 3})


def test_accuracy_by_gold_letter_refuses_mismatched_lists() -> None:
    with pytest.raises(ValueError):
        accuracy_by_gold_letter(["A"], ["A", "B"])
