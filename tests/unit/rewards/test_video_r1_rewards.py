"""Video-R1's rewards and MRA, against its definitions (tulerfeng/Video-R1@59d65c3 grpo.py accuracy_reward /
format_reward, eval_bench.py reward_fn / mean_relative_accuracy), edge cases included."""

from __future__ import annotations

import pytest

from vt_ray.rewards import RewardConfig, RewardTarget, score_response
from vt_ray.rewards import video_r1 as vr


def ans(text: str) -> str:
    return f"<think>let me think</think><answer>{text}</answer>"


@pytest.mark.parametrize(
    ("response", "solution", "expected"),
    [
        (ans("A"), "<answer>A</answer>", 1.0),
        (ans(" A \n"), "<answer>A</answer>", 1.0),  # stripped on both sides
        (ans("a"), "<answer>A</answer>", 0.0),  # case-sensitive
        (ans("A."), "<answer>A</answer>", 0.0),  # exact string, no letter parsing
        (ans("(A)"), "<answer>A</answer>", 0.0),
        ("A", "<answer>A</answer>", 0.0),  # no tags: "" != "A"
        (ans("B") + ans("A"), "<answer>A</answer>", 0.0),  # the FIRST answer block counts
        (ans(""), "<answer>A</answer>", 0.0),
    ],
)
def test_multiple_choice(response: str, solution: str, expected: float) -> None:
    assert vr.training_reward(response, solution, "multiple choice") == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("3", "3", 1.0),
        ("3.0", "3", 0.0),  # one side has a decimal point
        ("3", "3.0", 0.0),
        ("3.00", "3.0", 1.0),
        ("3.004", "3.0", 1.0),  # equal after round(., 2)
        ("3.006", "3.0", 0.0),
        ("1,000", "1000", 0.0),  # the comma counts as a decimal mark for the check
        ("1,000", "1,000", 1.0),
        ("1000.0", "1,000", 1.0),  # both "decimal", both 1000 after removing commas
        ("", "3", 0.0),  # empty answer
        ("three", "3", 0.0),
        ("-2", "-2", 1.0),
        (" 7 ", "7", 1.0),
        ("٣", "3", 1.0),  # unicode digits: Python's float reads Arabic-Indic digits, as Video-R1's does
        ("1_000", "1000", 1.0),  # float() accepts underscores
        ("nan", "5", 0.0),
        ("inf", "inf", 1.0),
    ],
)
def test_numerical(pred: str, gold: str, expected: float) -> None:
    assert vr.training_reward(ans(pred), f"<answer>{gold}</answer>", "numerical") == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("the cat sat", "the cat sat", 1.0),
        ("the cat", "the cat sat", pytest.approx(2 / 3)),  # one deletion
        ("the dog sat", "the cat sat", pytest.approx(2 / 3)),  # one substitution
        ("the cat sat down", "the cat sat", pytest.approx(2 / 3)),  # one insertion
        ("", "the cat sat", 0.0),  # empty prediction: WER 1
        ("", "", 1.0),  # both empty: WER 0 / max(1, 0)
        ("a b c d e f g", "x y", 0.0),  # long wrong answer: WER >= 1, clipped
        ("The Cat", "the cat", 0.0),  # case-sensitive tokens
        ("café 東京", "café 東京", 1.0),
    ],
)
def test_ocr(pred: str, gold: str, expected: float) -> None:
    assert vr.training_reward(ans(pred), f"<answer>{gold}</answer>", "OCR") == expected


def test_word_error_rate_matches_full_table_beyond_the_short_cut() -> None:
    # n >= 2m takes the bound (n - m) / m: check it equals the edit distance when every word differs.
    assert vr.word_error_rate("a b", "c d e f") == 1.0
    assert vr.word_error_rate("a b", "a b x y") == 1.0  # 2 insertions / 2


def test_free_form_is_mean_rouge_with_stemming() -> None:
    from rouge_score import rouge_scorer

    gold, pred = "The dogs are running in the park", "a dog runs in a park"
    scores = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(gold, pred)
    expected = sum(s.fmeasure for s in scores.values()) / 3
    assert vr.training_reward(ans(pred), f"<answer>{gold}</answer>", "free-form") == pytest.approx(expected)
    assert 0 < expected < 1
    assert vr.training_reward(ans(gold), f"<answer>{gold}</answer>", "free-form") == pytest.approx(1.0)
    assert vr.training_reward(ans(""), f"<answer>{gold}</answer>", "free-form") == 0.0
    assert vr.training_reward("no tags", f"<answer>{gold}</answer>", "free-form") == 0.0


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("10", "10", pytest.approx(1.0)),
        ("12", "10", pytest.approx(0.8)),
        ("8", "10", pytest.approx(0.8)),
        ("30", "10", 0.0),  # relative error clipped at 1
        ("0", "0", 0.0),  # Video-R1: (0 + 1e-9) / (0 + 1e-9) = 1 -> 0
        ("abc", "10", 0.0),
        ("", "10", 0.0),
        ("nan", "10", 0.0),  # deliberate deviation: Video-R1 scores 1 here (max(0.0, nan) == 0.0)
        ("1,5", "15", pytest.approx(1.0)),  # commas removed: 15
    ],
)
def test_regression(pred: str, gold: str, expected: float) -> None:
    assert vr.training_reward(ans(pred), f"<answer>{gold}</answer>", "regression") == expected


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        (10.0, 10.0, 1.0),
        (10.4, 10.0, 1.0),  # rel 0.04 < 0.05
        # rel 0.1 fails only 0.95 in float32 (0.1f < 1 - 0.9f): 0.9, where exact arithmetic gives 0.8.
        (11.0, 10.0, 0.9),
        (12.0, 10.0, 0.6),
        (13.0, 10.0, 0.4),  # rel 0.3 < 1 - t for t in 0.50..0.65
        (15.0, 10.0, 0.0),  # rel 0.5 is not < 0.5
        (0.0, 0.0, 1.0),  # MRA's epsilon is 1e-8 and the error is 0: every threshold passes
    ],
)
def test_mean_relative_accuracy(pred: float, target: float, expected: float) -> None:
    assert vr.mean_relative_accuracy(pred, target) == pytest.approx(expected)


def test_eval_reward_follows_eval_bench() -> None:
    assert vr.eval_reward("B", "<answer>B</answer>", "multiple choice") == 1.0  # no tags: the whole output
    assert vr.eval_reward(ans("11"), "<answer>10</answer>", "regression") == pytest.approx(0.9)
    assert vr.eval_reward(ans("hello"), "<answer>hello</answer>", "OCR") == 0.0  # not graded in eval
    assert vr.eval_reward(ans("x"), "<answer>x</answer>", "free-form") == 0.0
    assert vr.eval_reward(ans("3.0"), "<answer>3</answer>", "numerical") == 0.0


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>a</think><answer>B</answer>", 1.0),
        ("<think>a</think>\n\n<answer>B</answer>", 1.0),
        ("<think>a</think><answer>B</answer> trailing", 0.0),
        ("lead <think>a</think><answer>B</answer>", 0.0),
        ("<answer>B</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_format_reward(response: str, expected: float) -> None:
    assert vr.format_reward(response) == expected


def test_unknown_problem_type_scores_zero() -> None:
    assert vr.training_reward(ans("A"), "<answer>A</answer>", "yes/no") == 0.0


def test_scorer_uses_video_r1_rules_per_sample_and_by_recipe() -> None:
    cfg = RewardConfig(format_mode="think_answer")
    # "(B)" is B under our rules, not under Video-R1's exact string match.
    target = RewardTarget(answer="B", options=("x", "y"), rules="video_r1")
    assert score_response(ans("(B)"), target, cfg)["accuracy"] == 0.0
    assert score_response(ans("B"), target, cfg)["accuracy"] == 1.0
    assert score_response(ans("B"), target, cfg)["format"] == 1.0
    project = RewardTarget(answer="B", options=("x", "y"))
    assert score_response(ans("(B)"), project, cfg)["accuracy"] == 1.0
    forced = RewardConfig(answer_rules="video_r1")
    assert score_response(ans("(B)"), project, forced)["accuracy"] == 0.0
    # ocr and regression are graded by Video-R1's definitions whatever the rules
    assert score_response(ans("12"), RewardTarget(answer="10", answer_type="regression"), RewardConfig())[
        "accuracy"] == pytest.approx(0.8)
    assert score_response(ans("the cat"), RewardTarget(answer="the cat sat", answer_type="ocr"), RewardConfig())[
        "accuracy"] == pytest.approx(2 / 3)


def test_adversarial_inputs_are_cheap_and_never_raise() -> None:
    long = "word " * 50_000
    assert vr.training_reward(ans(long), "<answer>a b c</answer>", "OCR") == 0.0
    assert 0.0 <= vr.training_reward(ans(long), "<answer>a b c</answer>", "free-form") <= 1.0
    for kind in vr.PROBLEM_TYPES:
        assert vr.training_reward("<answer>" * 1000, "<answer>1</answer>", kind) in (0.0, 1.0)


def test_reward_metrics_by_type() -> None:
    from vt_ray.rewards.composite import reward_metrics_by_type

    results = [{"accuracy": 1.0}, {"accuracy": 0.5}, {"accuracy": 0.0}]
    out = reward_metrics_by_type(results, ["ocr", "ocr", "regression"])
    assert out == {"reward/accuracy/ocr": 0.75, "reward/accuracy/regression": 0.0,
                   "reward/count/ocr": 2.0, "reward/count/regression": 1.0}
    with pytest.raises(ValueError):
        reward_metrics_by_type(results, ["ocr"])
