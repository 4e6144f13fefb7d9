"""Eval metrics against hand-computed values (pure functions; METEOR uses the offline WordNet)."""

from __future__ import annotations

import math

import pytest

from vt_ray.data.schema import VideoSample
from vt_ray.eval import metrics as M
from vt_ray.eval.wordnet import WordNetMissingError, ensure_wordnet, nltk_data_dir
from vt_ray.trace import parse_trace


def _wordnet_ready() -> bool:
    try:
        ensure_wordnet()
        return True
    except WordNetMissingError:
        return False


needs_wordnet = pytest.mark.skipif(not _wordnet_ready(), reason="run `bash tools/setup_wordnet.sh` first")

# --- answers ---


@pytest.mark.parametrize(
    ("text", "expected"),
    # "A red ball" names option A's text and no other: the reader shared with the accuracy reward picks A.
    [("C", "C"), ("(B)", "B"), ("B. blue ball", "B"), ("The answer is D", "D"), ("red", "A"), ("A red ball", "A"),
     ("", None), (None, None), ("E", None)],
)
def test_extract_multiple_choice(text, expected):
    assert M.extract_answer(text, "multiple_choice", ["red", "blue ball", "green", "pink"]) == expected


def test_answer_correct_numeric_and_free_text():
    assert M.answer_correct(M.extract_answer("about 3.0 seconds", "numeric"), "3", "numeric")
    assert not M.answer_correct(M.extract_answer("3.1", "numeric"), "3", "numeric")
    assert M.answer_correct(M.extract_answer("The Red Car.", "free_text"), "red car", "free_text")
    assert not M.answer_correct(None, "A", "multiple_choice")


# --- grounding ---


def test_interval_iou_hand_values():
    assert M.interval_iou([0, 10], [5, 15]) == pytest.approx(5 / 15)
    assert M.interval_iou([0, 10], [0, 10]) == 1.0
    assert M.interval_iou([0, 10], [10, 20]) == 0.0
    assert M.interval_iou([0, 10], [2, 4]) == pytest.approx(0.2)
    assert M.interval_iou([5, 5], [5, 5]) == 1.0  # identical zero-length windows
    assert M.interval_iou([5, 5], [6, 6]) == 0.0


def test_item_iou_is_mean_best_iou_per_gt_window():
    gt = [[0, 10], [20, 30]]
    pred = [[0, 5], [20, 30], [22, 28]]
    # gt[0]: best is [0,5] -> 0.5 ; gt[1]: best is [20,30] -> 1.0
    assert M.best_ious(gt, pred) == pytest.approx([0.5, 1.0])
    assert M.item_iou(gt, pred) == pytest.approx(0.75)
    assert M.item_iou(gt, []) == 0.0
    assert M.item_iou([], pred) is None


def test_grounding_summary_recall_thresholds():
    # item 1: best IoUs 0.5, 1.0 ; item 2: 0.2 ; item 3: no annotation (skipped)
    s = M.grounding_summary([[0.5, 1.0], [0.2], []], thresholds=(0.3, 0.5, 0.7))
    assert s.items == 2
    assert s.miou == pytest.approx((0.75 + 0.2) / 2)
    assert s.recall[0.3] == pytest.approx((1.0 + 0.0) / 2)
    assert s.recall[0.5] == pytest.approx((1.0 + 0.0) / 2)  # 0.5 >= 0.5 counts
    assert s.recall[0.7] == pytest.approx((0.5 + 0.0) / 2)
    assert M.grounding_summary([]).items == 0


# --- captions ---


def test_bleu_identical_is_100_and_disjoint_is_0():
    sent = "a man in a red shirt opens the door of the car"
    assert M.bleu([sent], [sent]) == pytest.approx(100.0)
    assert M.bleu([sent], [sent], max_order=1) == pytest.approx(100.0)
    assert M.bleu(["zebra xylophone quantum"], [sent]) == pytest.approx(0.0)


def test_rouge_l_known_values():
    # LCS("the cat sat on the mat", "the cat was on the mat") = 5 of 6 tokens -> P = R = F = 5/6
    assert M.rouge_l(["the cat sat on the mat"], ["the cat was on the mat"]) == pytest.approx(100 * 5 / 6)
    # hyp 2 tokens, ref 4 tokens, LCS 2: P = 1, R = 0.5, F = 2/3
    assert M.rouge_l(["red ball"], ["a red big ball"]) == pytest.approx(100 * 2 / 3)


@needs_wordnet
def test_meteor_reference_value():
    from nltk.translate.meteor_score import meteor_score

    value = meteor_score([["a", "red", "circle", "moves", "left"]], ["a", "red", "ball", "moved", "left"])
    assert value == pytest.approx(0.75, abs=1e-6)
    assert M.meteor(["a red ball moved left"], ["a red circle moves left"]) == pytest.approx(75.0, abs=1e-4)
    assert (nltk_data_dir() / "corpora" / "wordnet" / "lexnames").read_text().count("\n") == 45


def test_wordnet_missing_names_dir_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("VT_RAY_NLTK_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(WordNetMissingError, match=r"nowhere/corpora/wordnet.*tools/setup_wordnet\.sh"):
        ensure_wordnet()


def test_match_captions_by_best_overlap_then_fallback():
    parsed = parse_trace(
        "<time>0-10</time><caption>cap one</caption><think>t</think>"
        "<time>20-30</time><caption>cap two</caption><think>t</think><answer>A</answer>"
    )
    hyps = M.match_captions([[21, 29], [0, 9], [50, 60]], ["r1", "r2", "r3"], parsed)
    assert hyps == ["cap two", "cap one", "cap one cap two"]


# --- format and self-correction ---

VALID = "<time>00:00-00:10</time> <caption>a man opens a door</caption> <think>so</think> <answer>A</answer>"


def test_format_valid():
    assert M.format_valid(parse_trace(VALID))
    assert not M.format_valid(parse_trace("<answer>A</answer>"))  # no triple
    assert not M.format_valid(parse_trace(VALID + " trailing"))  # text after answer


def test_self_correction_definitions():
    revisit = parse_trace(
        "<time>0-10</time><caption>a man opens a door</caption><think>x</think> Wait, "
        "<time>1-10</time><caption>a man closes a door</caption><think>y</think><answer>A</answer>"
    )
    assert M.revisits_window(revisit.windows)  # IoU 0.9 >= 0.5
    assert M.revises_caption(revisit)
    same_caption = parse_trace(
        "<time>0-10</time><caption>A man opens a door.</caption><think>x</think>"
        "<time>0-10</time><caption>a man opens the door</caption><think>y</think><answer>A</answer>"
    )
    assert M.revisits_window(same_caption.windows) and not M.revises_caption(same_caption)  # same after normalising
    assert not M.revisits_window([(0, 10), (6, 16)])  # IoU 4/16 < 0.5
    assert M.revisits_window([(3, 3), (3, 3)])
    assert M.is_reflective("Hmm, let me look again") and not M.is_reflective("The man walks.")


def test_score_item_and_aggregates():
    sample = VideoSample(uid="q1", video="v.mp4", question="?", answer="A", options=["x", "y"],
                         windows=[[0, 10]], captions=["a man opens a door"], category="cause")
    r = M.score_item(sample, VALID, benchmark="B", frames=16)
    assert (r.correct, r.format_valid, r.iou, r.matched_captions) == (True, True, 1.0, ["a man opens a door"])
    wrong = M.score_item(sample, "<answer>B</answer>", benchmark="B", frames=16)
    assert not wrong.correct and wrong.iou == 0.0 and "no_steps" in wrong.violations
    acc = M.accuracy([r, wrong])
    assert acc["accuracy"] == 0.5 and acc["n"] == 2
    fmt = M.format_summary([r, wrong])
    assert fmt["valid_share"] == 0.5 and fmt["violation_share"]["no_steps"] == 0.5
    sc = M.self_correction_summary([r, wrong])
    assert sc["revisit_share"] == 0.0 and math.isclose(sc["accuracy_otherwise"], 0.5)
