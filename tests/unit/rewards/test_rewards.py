"""Rewards: every answer form, format criteria, optional rewards, adversarial text, and custom-reward isolation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vt_ray.config import ConfigError, load_config
from vt_ray.data.schema import VideoSample
from vt_ray.rewards import CustomRewardConfig, RewardConfig, RewardScorer, RewardTarget, reward_metrics, score_response
from vt_ray.rewards.accuracy import extract_choice, extract_number, token_f1
from vt_ray.rewards.config import BUILTIN_COMPONENTS, REWARD_COMPONENTS
from vt_ray.rewards.format import format_criteria, format_reward
from vt_ray.rewards.optional import caption_similarity, length_penalty, temporal_iou
from vt_ray.trace import parse_trace

OPTIONS = ("blue square", "red circle", "green triangle", "yellow star")
MC = RewardTarget(answer="B", options=OPTIONS, duration=20.0, windows=((2.0, 6.0),), captions=("a red circle",))
GOOD_STEPS = "<time>00:02-00:06</time> <caption>a red circle moves</caption> <think>it is red</think>"


def wrap(answer: str) -> str:
    return f"{GOOD_STEPS} <answer>{answer}</answer>"


def accuracy(response: str, target: RewardTarget = MC, **cfg) -> float:
    return score_response(response, target, RewardConfig(**cfg))["accuracy"]


# --- multiple choice ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", 1.0),
        ("(B)", 1.0),
        ("B.", 1.0),
        ("B) red", 1.0),
        ("B) red circle", 1.0),
        ("B. red circle", 1.0),
        ("[B]", 1.0),
        ("**B**", 1.0),
        ("b", 1.0),
        ("(b)", 1.0),
        ("Answer: B", 1.0),
        ("answer: (B).", 1.0),
        ("The answer is B", 1.0),
        ("the answer is B.", 1.0),
        ("Option B", 1.0),
        ("b) red circle", 1.0),
        ("The correct answer is B because it is round", 1.0),
        ("B because it is round", 0.0),  # no prefix: "B because" is not a recognised answer form
        ("red circle", 1.0),
        ("Red  Circle", 1.0),
        ("the red circle.", 1.0),
        ("A red circle", 1.0),  # the article "A", not option A: the words are option B's text
        ("a red circle", 1.0),
        ("Answer: A red circle", 1.0),
        ("It is the red circle that moves", 1.0),  # the only option text mentioned
        ("A", 0.0),
        ("A) red circle", 0.0),  # an explicit letter wins over the text after it
        ("C", 0.0),
        ("blue square", 0.0),
        ("A blue square", 0.0),
        ("B and C", 0.0),
        ("A and C", 0.0),
        ("red circle or blue square", 0.0),  # two options mentioned: ambiguous
        ("E", 0.0),  # not one of the four options
        ("", 0.0),  # empty answer is a known hack
        ("   ", 0.0),
        ("I don't know", 0.0),
    ],
)
def test_multiple_choice_forms(answer: str, expected: float) -> None:
    assert accuracy(wrap(answer)) == expected


def test_article_a_is_option_a_only_when_its_text_follows() -> None:
    options = ("red circle", "blue square")
    assert extract_choice("A red circle", options) == "A"
    assert extract_choice("A blue square", options) == "B"
    assert extract_choice("A because it moves", options) is None


def test_option_text_with_punctuation() -> None:
    options = ("Tom's hat", "the cat's toy")
    assert extract_choice("tom's hat", options) == "A"
    assert extract_choice("**The cat's toy**", options) == "B"


def test_gold_may_be_option_text() -> None:
    target = RewardTarget(answer="red circle", options=OPTIONS)
    assert accuracy(wrap("B"), target) == 1.0


def test_answer_outside_tags_needs_fallback() -> None:
    for response in (f"{GOOD_STEPS} The answer is B.", f"{GOOD_STEPS}\nAnswer: (B)", f"{GOOD_STEPS}\nB"):
        assert accuracy(response) == 0.0
        assert accuracy(response, answer_fallback=True) == 1.0
    # The tagged answer wins over any untagged text, even with fallback on.
    assert accuracy(f"The answer is B. {wrap('C')}", answer_fallback=True) == 0.0
    # Fallback takes the last explicit phrase.
    assert accuracy("The answer is C... wait, the answer is B", answer_fallback=True) == 1.0


def test_last_answer_block_is_graded() -> None:
    assert accuracy(f"{GOOD_STEPS} <answer>C</answer> <answer>B</answer>") == 1.0


# --- numeric and free text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3.0),
        ("The answer is 3.", 3.0),
        ("3 people", 3.0),
        ("1,000", 1000.0),
        ("-2.5", -2.5),
        ("3/4", 0.75),
        ("40%", 40.0),
        ("three", 3.0),
        ("answer: 5 out of 7", 5.0),
        ("between 2 and 3", None),
        ("no number", None),
        ("v2", None),
    ],
)
def test_extract_number(text: str, value: float | None) -> None:
    assert extract_number(text) == value


def test_numeric_tolerance() -> None:
    target = RewardTarget(answer="10", answer_type="numeric")
    assert accuracy(wrap("10.0"), target) == 1.0
    assert accuracy(wrap("10.4"), target) == 0.0
    assert accuracy(wrap("10.4"), target, numeric_rel_tol=0.05) == 1.0
    assert accuracy(wrap("11"), target, numeric_abs_tol=0.5) == 0.0
    assert accuracy(wrap(""), target) == 0.0


def test_free_text_exact_and_f1() -> None:
    target = RewardTarget(answer="The red circle", answer_type="free_text")
    assert accuracy(wrap("red circle!"), target) == 1.0
    assert accuracy(wrap("a red circle moving"), target) == 0.0
    assert accuracy(wrap("a red circle moving"), target, free_text_match="token_f1") == pytest.approx(0.8)
    assert token_f1("red circle moving", "red circle") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert accuracy(wrap("anything"), RewardTarget(answer="", answer_type="free_text")) == 0.0


# --- format -------------------------------------------------------------------------------------------------


def fmt(response: str, duration: float | None = 20.0, mode: str = "strict") -> float:
    return format_reward(parse_trace(response), duration, mode, slack_s=1.0)


@pytest.mark.parametrize(
    ("response", "failed"),
    [
        (wrap("B"), set()),
        (wrap("B") + "\n", set()),  # trailing whitespace is fine
        ("Hmm. " + GOOD_STEPS + " Let me look again. " + GOOD_STEPS + " <answer>B</answer>", set()),
        ("<time>00:02-00:06</time> <think>x</think> <answer>B</answer>", {"triple"}),
        ("<caption>c</caption> <think>x</think> <answer>B</answer>", {"triple", "windows"}),
        ("<time>00:02-00:30</time> <caption>c</caption> <think>x</think> <answer>B</answer>", {"windows"}),
        ("<time>later</time> <caption>c</caption> <think>x</think> <answer>B</answer>", {"windows"}),
        (GOOD_STEPS + " <time>05-02</time> <answer>B</answer>", {"windows"}),
        (GOOD_STEPS + " <answer></answer>", {"one_answer"}),
        (GOOD_STEPS + " <answer>B</answer><answer>B</answer>", {"one_answer"}),
        (GOOD_STEPS + " <answer>B</answer> because red", {"answer_last"}),
        (GOOD_STEPS + " <answer>B</answer> <think>more</think>", {"answer_last"}),
        (GOOD_STEPS, {"one_answer", "answer_last"}),
        (GOOD_STEPS + " <think>unclosed <answer>B</answer>", {"well_formed"}),
        (GOOD_STEPS + " </caption> <answer>B</answer>", {"well_formed"}),
        (GOOD_STEPS + " <caption></caption> <answer>B</answer>", {"well_formed"}),
    ],
)
def test_format_criteria(response: str, failed: set[str]) -> None:
    met = format_criteria(parse_trace(response), 20.0, slack_s=1.0)
    assert {k for k, ok in met.items() if not ok} == failed
    assert fmt(response) == float(not failed)
    assert fmt(response, mode="graded") == pytest.approx(1 - len(failed) / 5)


def test_windows_against_duration_and_slack() -> None:
    response = "<time>00:00-00:11</time> <caption>c</caption> <think>t</think> <answer>B</answer>"
    assert fmt(response, duration=10.4) == 1.0  # within the 1 s slack for whole-second times
    assert fmt(response, duration=9.5) == 0.0
    assert fmt(response, duration=None) == 1.0  # unknown duration: only parseability is checked


def test_format_reward_is_bounded_under_duplication() -> None:
    assert fmt(GOOD_STEPS * 50 + " <answer>B</answer>") == 1.0
    assert score_response(GOOD_STEPS * 50 + "<answer>B</answer>", MC, RewardConfig())["total"] == 2.0


# --- optional rewards ---------------------------------------------------------------------------------------


def test_temporal_iou_hand_computed() -> None:
    assert temporal_iou([(0, 5)], [(0, 4)]) == pytest.approx(0.8)
    assert temporal_iou([(0, 2), (3, 5)], [(1, 4)]) == pytest.approx(2 / 5)  # union of predictions
    assert temporal_iou([(0, 100)], [(2, 6)], duration=20.0) == pytest.approx(4 / 20)  # clipped to the video
    assert temporal_iou([(2, 6)] * 5 + [(10, 14)], [(2, 6)]) == pytest.approx(0.5)  # spamming does not pay
    assert temporal_iou([], [(1, 2)]) == 0.0 and temporal_iou([(1, 2)], []) == 0.0


def test_caption_similarity_and_length_penalty() -> None:
    assert caption_similarity(["a red circle"], ["a red circle"]) == pytest.approx(1.0)
    assert caption_similarity(["a blue square"], ["a red circle"], "token_f1") == 0.0
    assert 0 < caption_similarity(["the red circle moves left"], ["a red circle"]) < 1
    assert caption_similarity([], ["x"]) == 0.0
    assert length_penalty("w " * 10, max_words=20, buffer_words=5) == 0.0
    assert length_penalty("w " * 17, max_words=20, buffer_words=5) == pytest.approx(-2 / 5)
    assert length_penalty("w " * 50, max_words=20, buffer_words=5) == -1.0


def test_composite_total_is_weighted_sum() -> None:
    cfg = RewardConfig(temporal_iou_weight=0.5, caption_similarity_weight=0.25, length_penalty_weight=2.0,
                       length_max_words=10, length_buffer_words=5)  # fmt: skip
    out = score_response(wrap("B"), MC, cfg)
    assert set(out) == {*BUILTIN_COMPONENTS, "total", "errors", "timeouts"}
    expected = (out["accuracy"] + out["format"] + 0.5 * out["temporal_iou"] + 0.25 * out["caption_similarity"]
                + 2.0 * out["length_penalty"])  # fmt: skip
    assert out["total"] == pytest.approx(expected)
    assert out["temporal_iou"] == pytest.approx(1.0) and out["length_penalty"] < 0
    assert list(out)[:len(BUILTIN_COMPONENTS)] == list(BUILTIN_COMPONENTS)  # the registry's order
    assert all(REWARD_COMPONENTS.get(name).__doc__ for name in BUILTIN_COMPONENTS)


def test_target_from_sample_and_json() -> None:
    sample = VideoSample(uid="u", video="v.mp4", question="q", answer="B", options=list(OPTIONS), duration=20.0,
                         windows=[[2, 6]], captions=["a red circle"])  # fmt: skip
    target = sample.reward_target()
    assert (target.answer, target.options, target.windows, target.duration) == ("B", OPTIONS, ((2.0, 6.0),), 20.0)
    assert RewardTarget.from_json(target.to_json()) == target
    assert RewardTarget.from_json({"answer": "4"}).answer_type == "numeric"
    assert RewardTarget.from_json({"answer": "a dog"}).answer_type == "free_text"
    with pytest.raises(ValueError):
        RewardTarget.from_json({"answer": "B", "options": ["x"], "answer_type": "essay"})


def test_reward_metrics_sums_counters_and_averages_components() -> None:
    results = [{"accuracy": 1.0, "total": 2.0, "errors": 1.0, "timeouts": 0.0},
               {"accuracy": 0.0, "total": 1.0, "errors": 2.0, "timeouts": 1.0}]  # fmt: skip
    assert reward_metrics(results) == {"reward/accuracy": 0.5, "reward/total": 1.5, "reward/errors": 3.0,
                                       "reward/timeouts": 1.0}  # fmt: skip


# --- adversarial text ---------------------------------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    ["<time>", "</time>", "<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>", "< answer >",
     "00:05-00:02", "1:02:03-1:02:10", "-", "B", "(B)", "A ", "red circle", "answer is", "99999999999999999999",
     "1e309", "nan", "\x00", "é", "\n", " "]  # fmt: skip
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400), st.lists(_FRAGMENTS | st.text(max_size=5), max_size=60).map("".join)))
def test_adversarial_text_never_raises(text: str) -> None:
    cfg = RewardConfig(
        temporal_iou_weight=1, caption_similarity_weight=1, length_penalty_weight=1, answer_fallback=True
    )
    for target in (MC, RewardTarget(answer="5", answer_type="numeric", duration=3.0),
                   RewardTarget(answer="red", answer_type="free_text")):  # fmt: skip
        out = score_response(text, target, cfg)
        assert out["errors"] == 0 and all(math.isfinite(v) for v in out.values())
        assert 0 <= out["format"] <= 1 and 0 <= out["accuracy"] <= 1
        if "answer" not in text.lower():
            # Nothing to grade without an <answer> block: 0 (fallback off reads nothing outside the tags).
            assert score_response(text, target, RewardConfig())["accuracy"] == 0.0


def test_huge_and_degenerate_outputs_score_zero() -> None:
    for text in ("<answer>" * 20_000, "B" * 100_000, "<time>" + "0" * 100_000 + "</time>", "\x00" * 100_000, None):
        out = score_response(text, MC, RewardConfig(answer_fallback=True))  # type: ignore[arg-type]
        assert out["accuracy"] == 0.0 and out["format"] == 0.0 and out["errors"] == 0


# --- custom rewards -----------------------------------------------------------------------------------------

def test_bad_custom_import_path_fails_naming_the_key() -> None:
    cfg = RewardConfig(custom=[CustomRewardConfig(name="mine", path="no_such_module_xyz.sub:fn")])
    with pytest.raises(ConfigError) as info:
        RewardScorer(cfg)
    assert info.value.key == "reward.custom[0].path" and "no_such_module_xyz" in str(info.value)
    with pytest.raises(ConfigError, match="no attribute"):
        RewardScorer(RewardConfig(custom=[CustomRewardConfig(name="m", path=f"{__name__}:missing")]))


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("{name: mine, path: not-a-path}", "reward.custom[0].path"),
        ("{name: accuracy, path: 'a.b:c'}", "reward.custom[0].name"),
        ("{name: 'bad name', path: 'a.b:c'}", "reward.custom[0].name"),
    ],
)
def test_custom_reward_config_validated_at_load(tmp_path: Path, entry: str, key: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"reward:\n  custom:\n    - {entry}\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("reward.format_mode=lenient", "reward.format_mode"),
        ("reward.timeout_s=0", "reward.timeout_s"),
        ("reward.isolation=none", "reward.isolation"),
        ("reward.length_buffer_words=10000", "reward.length_buffer_words"),
    ],
)
def test_bad_reward_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.key == key


def test_paper_default_reward() -> None:
    cfg = load_config(None).reward
    assert cfg.weights() == {"accuracy": 1.0, "format": 1.0, "temporal_iou": 0.0, "caption_similarity": 0.0,
                             "length_penalty": 0.0}  # fmt: skip
    assert score_response(wrap("B"), MC, cfg)["total"] == 2.0
    assert score_response(wrap("C"), MC, cfg)["total"] == 1.0
    assert score_response("B", MC, cfg)["total"] == 0.0
