"""Option-rotation groups (``algorithm.option_rotations``): each prompt is rolled out under k rotations of its
options and the advantage baseline spans all of them. Stand-ins speak the rollout and reward groups' contracts;
the real groups run the key end to end in the learning benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vt_ray.config.loader import ConfigError, load_config
from vt_ray.data.schema import OPTION_LETTERS, VideoSample
from vt_ray.rollout.types import Completion, RolloutResult
from vt_ray.rollout.worker import RolloutBatchResult, SkippedSample
from vt_ray.trainer.rollout_phase import RolloutPhase
from vt_ray.trainer.sampler import PromptSampler
from vt_ray.trainer.settings import sampling_for_training
from vt_ray.trainer.update import advantages

COLOURS = ["red", "green", "blue", "yellow"]


def _sample(uid: str = "u", answer: str = "B", video: str = "v.mp4") -> VideoSample:
    return VideoSample(uid=uid, video=video, question="Which colour?", answer=answer, options=list(COLOURS))


def test_four_rotations_put_the_gold_answer_under_every_letter_once() -> None:
    sample = _sample(answer="B")
    rotated = sample.option_rotations(4)
    assert rotated[0] is sample and [r.uid for r in rotated] == ["u", "u~rot1", "u~rot2", "u~rot3"]
    assert sorted(r.answer for r in rotated) == list(OPTION_LETTERS[:4])
    for r in rotated:  # the gold option's text never changes, only the letter it is listed under
        assert r.options[OPTION_LETTERS.index(r.answer)] == "green" and sorted(r.options) == sorted(COLOURS)
    assert [r.answer for r in sample.option_rotations(2)] == ["B", "D"]  # evenly spaced shifts: 0 and 2
    assert sample.option_rotations(1) == [sample]


def test_rotations_of_an_open_question_are_copies_and_k_below_one_fails() -> None:
    open_q = VideoSample(uid="n", video="v.mp4", question="How many?", answer="3", answer_type="numeric")
    copies = open_q.option_rotations(2)
    assert [c.answer for c in copies] == ["3", "3"] and copies[0].uid != copies[1].uid
    with pytest.raises(ValueError, match="k >= 1"):
        _sample().option_rotations(0)


def test_the_key_is_checked_at_load_time_against_rollout_n_and_dynamic_sampling() -> None:
    cfg = load_config(None, ["rollout.n=8", "algorithm.option_rotations=4"])
    assert sampling_for_training(cfg).n == 2  # n / k responses per rotation
    with pytest.raises(ConfigError, match="algorithm.option_rotations"):
        load_config(None, ["rollout.n=6", "algorithm.option_rotations=4"])
    with pytest.raises(ConfigError, match="algorithm.option_rotations"):
        load_config(None, ["rollout.n=8", "algorithm.option_rotations=2", "algorithm.dynamic_sampling=true"])
    with pytest.raises(ConfigError, match="algorithm.option_rotations"):
        load_config(None, ["algorithm.option_rotations=0"])


class _LetterRollout:
    """Speaks RolloutGroup.generate: ``sampling.n`` completions per sample, each answering ``letter``; samples
    whose video is ``bad.mp4`` are skipped as corrupt."""

    def __init__(self, letter: str = "A") -> None:
        self.letter, self.calls = letter, []

    def generate(self, samples, sampling, learner_inputs=False):
        self.calls.append([s.uid for s in samples])
        out = RolloutBatchResult()
        for s in samples:
            if s.video == "bad.mp4":
                out.skipped.append(SkippedSample(s.uid, s.video, "corrupt"))
                continue
            out.results.append(RolloutResult(
                uid=s.uid, prompt_token_ids=[1], prompt=s.options_text(), frames=np.zeros((2, 4, 4, 3), np.uint8),
                completions=[Completion(f"<answer>{self.letter}</answer>", [1, 2], [-0.1] * 2, "stop")
                             for _ in range(sampling.n)]))
        return out


class _ExactRewards:
    """1 when the response's answer is the target's letter, else 0 (the reward workers' rule, for letters)."""

    def __init__(self) -> None:
        self.targets = []

    def score(self, texts, targets):
        self.targets += targets
        return [{"total": float(t.endswith(f"<answer>{g.answer}</answer>")), "accuracy": 0.0}
                for t, g in zip(texts, targets)]


def _phase(samples: list[VideoSample], *overrides: str) -> RolloutPhase:
    cfg = load_config(None, ["rollout.n=8", "trainer.prompts_per_step=2", *overrides])
    sampler = PromptSampler(samples, seed=0)
    sampler._order = list(range(len(samples)))  # in order: the test reads plainly
    return RolloutPhase(cfg, sampler, _LetterRollout(), _ExactRewards())


def test_a_step_rolls_each_prompt_out_under_its_rotations_and_scores_each_against_its_own_letter() -> None:
    phase = _phase([_sample("u0", "A"), _sample("u1", "C"), _sample("u2")], "algorithm.option_rotations=4")
    data, _, _, _ = phase.collect(0)
    assert phase.rollout.calls == [["u0", "u0~rot1", "u0~rot2", "u0~rot3", "u1", "u1~rot1", "u1~rot2", "u1~rot3"]]
    assert len(data.texts) == 16 and data.group_ids == [g for g in range(8) for _ in range(2)]  # 2 per rotation
    assert data.advantage_groups == [0] * 8 + [1] * 8  # the baseline spans a prompt's rotations
    assert [t.answer for t in phase.rewards.targets[::2]] == ["A", "D", "C", "B", "C", "B", "A", "D"]
    assert data.scores.tolist() == [1, 1, 0, 0, 0, 0, 0, 0] + [0, 0, 0, 0, 1, 1, 0, 0]
    assert phase.sampler.state.consumed == 2


def test_a_policy_that_always_answers_one_letter_is_pushed_only_by_rotation_groups() -> None:
    """Answering A whatever the options say: per-option-order groups are all right or all wrong, so GRPO gives
    that habit no signal at all; rotation groups reward A where the options put the gold under A and punish it
    everywhere else, with no net push on the letter itself (the advantages sum to 0)."""
    for rotations, expect_signal in (("1", False), ("4", True)):
        phase = _phase([_sample("u0", "A"), _sample("u1", "C")], f"algorithm.option_rotations={rotations}")
        data, _, _, _ = phase.collect(0)
        adv, _, _ = advantages(phase.cfg.algorithm, data.scored_tensor(), data)
        assert bool(adv.abs().sum() > 0) is expect_signal, rotations
        assert float(adv.sum()) == pytest.approx(0.0, abs=1e-5)
    gold_a = torch.tensor([t.answer == "A" for t in phase.rewards.targets])
    assert bool((adv[gold_a] > 0).all()) and bool((adv[~gold_a] < 0).all())


def test_a_skipped_video_drops_all_its_rotations_counts_once_and_is_replaced() -> None:
    phase = _phase([_sample("u0", "A"), _sample("bad", "B", video="bad.mp4"), _sample("u2", "D")],
                   "algorithm.option_rotations=2")
    data, skipped, _, _ = phase.collect(0)
    assert skipped == {"corrupt": 1} and phase.sampler.state.skipped == {"bad": "corrupt"}
    assert phase.rollout.calls[1] == ["u2", "u2~rot2"]  # the refill draws one new prompt, under both rotations
    assert [r.uid for r in data.results] == ["u0", "u0~rot2", "u2", "u2~rot2"]
    assert data.advantage_groups == [0] * 8 + [1] * 8
