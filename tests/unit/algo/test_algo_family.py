"""The GRPO family beyond the anchors (issue 18): registries, GSPO/CISPO/Dr. GRPO/REINFORCE++ properties, DAPO
shaping and dynamic-sampling selection, T-GRPO's temporal reward against a float64 transcription of Video-R1's
rule, and the load-time errors. Pure torch, no Ray (the end-to-end run is in test_algo_family_run.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vt_ray.algo import registry
from vt_ray.algo.advantages import compute_advantages
from vt_ray.algo.config import AlgorithmConfig
from vt_ray.algo.loss_terms import POLICY_LOSSES, Aggregation, agg_loss
from vt_ray.algo.shaping import (
    finite_scores,
    informative_groups,
    overlong_filter,
    soft_overlong_penalty,
    tgrpo_bonus,
)
from vt_ray.config import ConfigError, load_config
from vt_ray.config.roles import LearnerRoleConfig

F64 = torch.float64


def _lp(seed: int = 0, n: int = 3, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    logp = (torch.randn(n, t, dtype=F64, generator=g) * 0.3 - 1).requires_grad_(True)
    old = logp.detach() + torch.randn(n, t, dtype=F64, generator=g) * 0.2
    mask = torch.tensor([[1.0] * k + [0.0] * (t - k) for k in (5, 2, 4)][:n], dtype=F64)
    return logp, old, mask


# --- registries -----------------------------------------------------------------------------------------------


def test_every_registry_lists_exactly_its_builtin_names_once_imported() -> None:
    import vt_ray.algo.advantages  # noqa: F401 - registers the estimators
    import vt_ray.algo.loss_terms  # noqa: F401 - registers losses, KL estimators, aggregations

    for reg in registry.REGISTRIES:
        registered = {n for n in reg._entries if ":" not in n}
        assert registered >= set(reg.builtin), reg.kind
        for name in reg.builtin:
            assert reg.get(name).__doc__, f"{reg.kind} {name} needs a docstring with its formula and source"


@pytest.mark.parametrize(
    ("override", "key", "listed"),
    [
        ("algorithm.adv_estimator=grpoo", "algorithm.adv_estimator", "dr_grpo"),
        ("algorithm.policy_loss=ppo2", "algorithm.policy_loss", "gspo_token"),
        ("algorithm.kl_estimator=k4", "algorithm.kl_estimator", "k3"),
        ("algorithm.loss_agg_mode=token-sum", "algorithm.loss_agg_mode", "seq-mean-token-sum-norm"),
    ],
)
def test_unknown_names_fail_at_load_listing_the_registered_ones(override: str, key: str, listed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.key == key and listed in str(info.value)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("vt_ray.no_such_module:fn", "cannot import module"),
        ("vt_ray.algo.advantages:no_such_fn", "has no attribute"),
        ("vt_ray.algo.config:ADV_ESTIMATORS", "not callable"),
        ("vt_ray..losses:fn", "expected a registered name"),
    ],
)
def test_bad_import_paths_fail_at_load_naming_the_key(path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"algorithm.policy_loss={path}"])
    assert info.value.key == "algorithm.policy_loss" and message in str(info.value)


def test_an_import_path_registers_a_user_function_that_is_then_used() -> None:
    path = "vt_ray.algo.advantages:dr_grpo_estimator"  # any importable callable with the estimator signature
    cfg = load_config(None, [f"algorithm.adv_estimator={path}"]).algorithm
    assert path in registry.ADV_ESTIMATORS.names() or path in registry.ADV_ESTIMATORS._entries
    adv = compute_advantages(cfg.adv_estimator, torch.tensor([1.0, 0.0, 2.0], dtype=F64), [0, 0, 0], cfg)
    torch.testing.assert_close(adv, torch.tensor([0.0, -1.0, 1.0], dtype=F64))


def test_the_decorator_registers_a_user_estimator_by_name() -> None:
    @registry.ADV_ESTIMATORS.register("test_sign")
    def sign(scores, group_ids, cfg, lengths=None):
        """sign(r): a toy estimator for this test."""
        return torch.sign(scores)

    try:
        cfg = load_config(None, ["algorithm.adv_estimator=test_sign"]).algorithm
        adv = compute_advantages(cfg.adv_estimator, torch.tensor([-2.0, 3.0]), [0, 0], cfg)
        assert adv.tolist() == [-1.0, 1.0]
        with pytest.raises(ValueError, match="already registered"):
            registry.ADV_ESTIMATORS.register("test_sign")(lambda *a: None)
    finally:
        registry.ADV_ESTIMATORS._entries.pop("test_sign")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["algorithm.policy_loss=gspo"], "algorithm.loss_agg_mode"),  # GSPO defines seq-mean-token-mean only
        (["algorithm.policy_loss=gspo_token", "algorithm.loss_agg_mode=token-mean"], "algorithm.loss_agg_mode"),
        (["algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=0"], "algorithm.max_refill_rounds"),
        (["algorithm.dynamic_sampling=true", "rollout.n=1"], "algorithm.dynamic_sampling"),
        (["algorithm.overlong_buffer_len=768"], "algorithm.overlong_buffer_len"),
        (["algorithm.tgrpo_rule=papers"], "algorithm.tgrpo_rule"),
        (["algorithm.oversample_factor=0.5"], "algorithm.oversample_factor"),
        (["algorithm.max_refill_rounds=three"], "algorithm.max_refill_rounds"),
    ],
)
def test_incompatible_combinations_fail_at_load_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key


# --- losses -----------------------------------------------------------------------------------------------


def test_gspo_sequence_ratio_hand_computed_and_equal_to_gspo_token() -> None:
    logp, old, mask = _lp(1)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    cfg = AlgorithmConfig(policy_loss="gspo", loss_agg_mode="seq-mean-token-mean", seq_clip_ratio_low=0.05,
                          seq_clip_ratio_high=0.05)
    agg = Aggregation("seq-mean-token-mean")
    loss, _ = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, cfg, agg)
    (grad,) = torch.autograd.grad(loss, logp)
    s = torch.exp(((logp.detach() - old) * mask).sum(-1) / mask.sum(-1))  # [N] length-normalised ratio
    expected = torch.maximum(-adv * s, -adv * s.clamp(0.95, 1.05)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    loss_t, _ = POLICY_LOSSES.get("gspo_token")(logp, old, adv, mask, cfg, agg)
    (grad_t,) = torch.autograd.grad(loss_t, logp)
    assert loss_t.item() == pytest.approx(loss.item(), abs=1e-12)
    torch.testing.assert_close(grad_t, grad, rtol=0, atol=1e-12)
    assert (grad[~mask.bool()] == 0).all()


def test_cispo_keeps_a_gradient_on_clipped_tokens_unlike_ppo() -> None:
    logp, _, mask = _lp(2)
    old = logp.detach() - 1.0  # ratio e ~ 2.7: every token far outside the clip range
    adv = torch.ones(3, dtype=F64)
    cfg = AlgorithmConfig()
    agg = Aggregation("token-mean")
    cispo, _ = POLICY_LOSSES.get("cispo")(logp, old, adv, mask, cfg, agg)
    (g_cispo,) = torch.autograd.grad(cispo, logp)
    ppo, _ = POLICY_LOSSES.get("vanilla")(logp, old, adv, mask, cfg, agg)
    (g_ppo,) = torch.autograd.grad(ppo, logp)
    assert (g_ppo[mask.bool()] == 0).all()  # PPO's clip zeroes these tokens' gradient
    expected = -(1 + cfg.clip_ratio_high) / mask.sum()  # CISPO: -sg(clip(r)) A d(log pi)
    torch.testing.assert_close(g_cispo[mask.bool()], torch.full_like(g_cispo[mask.bool()], expected.item()))


def test_dr_grpo_constant_normaliser_does_not_depend_on_lengths() -> None:
    loss_mat = torch.ones(2, 6, dtype=F64)
    short = torch.tensor([[1.0] * 2 + [0.0] * 4, [1.0] * 6], dtype=F64)
    assert agg_loss(loss_mat, short, "seq-mean-token-sum-norm", scale=10).item() == pytest.approx((2 + 6) / 2 / 10)
    # token-mean would give 1 for any lengths; seq-mean-token-mean too; only the constant keeps length bias away
    assert agg_loss(loss_mat, short, "seq-mean-token-mean").item() == pytest.approx(1.0)


def test_learner_loss_uses_the_recipe_policy_loss_and_max_tokens_as_dr_grpo_constant() -> None:
    from vt_ray.algo.objective import make_loss
    from vt_ray.learner.batch import TrainBatch
    from vt_ray.learner.losses import LossNorm

    logp, old, mask = _lp(3)
    adv = torch.tensor([1.0, -1.0, 0.5], dtype=F64)
    recipe = load_config(None, ["algorithm.policy_loss=cispo", "algorithm.loss_agg_mode=seq-mean-token-sum-norm",
                                "algorithm.kl_coef=0", "rollout.max_tokens=64"])
    batch = TrainBatch(input_ids=torch.zeros(3, 5, dtype=torch.long), attention_mask=torch.ones(3, 5, dtype=torch.long),
                       response_mask=mask, pixel_values_videos=torch.zeros(0, 1),
                       video_grid_thw=torch.ones(3, 3, dtype=torch.long), second_per_grid_ts=torch.ones(3),
                       advantages=adv, old_logprobs=old)
    norm = LossNorm(num_tokens=int(mask.sum()), num_sequences=3)
    loss, _ = make_loss(recipe)(logp, batch, norm)
    expected, _ = POLICY_LOSSES.get("cispo")(logp, old, adv, mask, recipe.algorithm,
                                             Aggregation("seq-mean-token-sum-norm", scale=64))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    # a learner rank binds the loss to its role config (vt_ray.config.roles), which carries the same constant
    role_loss, _ = make_loss(LearnerRoleConfig.of(recipe))(logp, batch, norm)
    assert role_loss.item() == loss.item()


def test_reinforce_pp_whitens_over_the_batch_by_tokens() -> None:
    scores = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    lengths = torch.tensor([3.0, 1.0, 2.0], dtype=F64)
    adv = compute_advantages("reinforce_plus_plus", scores, [0, 1, 2], AlgorithmConfig(), lengths)
    tokens = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=F64)  # each response's return on its tokens
    expected = (tokens - tokens.mean()) / torch.sqrt(tokens.var() + 1e-8)
    torch.testing.assert_close(adv, expected[[0, 3, 4]])


# --- DAPO ---------------------------------------------------------------------------------------------------


def test_soft_overlong_punishment_is_dapo_eq_13() -> None:
    lengths = torch.tensor([10, 60, 70, 80, 100, 120])
    out = soft_overlong_penalty(lengths, max_len=100, buffer_len=40, factor=1.0)
    expected = [0.0, 0.0, -10 / 40, -20 / 40, -40 / 40, -1.0]  # ramp over the last 40 tokens, -1 beyond
    assert out.tolist() == pytest.approx(expected)
    assert soft_overlong_penalty(lengths, 100, 0).abs().sum() == 0  # off
    assert soft_overlong_penalty(lengths, 100, 40, factor=0.5)[4].item() == pytest.approx(-0.5)


def test_overlong_filter_masks_truncated_responses_and_leaves_the_rest() -> None:
    keep = torch.tensor([True, True, False, True, False])  # [N]; False = already dropped (zero-variance group)
    out, frac = overlong_filter(keep, [False, True, False, True, True])
    assert out.tolist() == [True, False, False, False, False]
    assert frac == pytest.approx(3 / 5)  # the share of truncated responses, whether or not already dropped
    assert keep.tolist() == [True, True, False, True, False]  # the caller's mask is not modified in place
    same, none = overlong_filter(keep, [False] * 5)
    assert same.tolist() == keep.tolist() and none == 0.0
    empty, zero = overlong_filter(torch.ones(0, dtype=torch.bool), [])
    assert empty.shape == (0,) and empty.dtype == torch.bool and zero == 0.0
    with pytest.raises(ValueError, match="4 truncated flags"):
        overlong_filter(keep, [True] * 4)


def test_dynamic_sampling_keeps_groups_with_unequal_rewards_in_order() -> None:
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0, 0.0])
    groups = [3, 3, 1, 1, 0, 0, 2, 2]
    assert informative_groups(scores, groups) == [1, 2]


def test_nonfinite_rewards_are_zeroed_and_counted() -> None:
    scores, bad = finite_scores([1.0, float("nan"), float("inf"), -float("inf"), 0.5, None])
    assert bad == 4 and scores.tolist() == [1.0, 0.0, 0.0, 0.0, 0.5, 0.0]
    assert torch.isfinite(compute_advantages("grpo", scores, [0, 0, 0, 1, 1, 1])).all()


# --- T-GRPO ---------------------------------------------------------------------------------------------------


def _tgrpo_reference(acc, groups, sh_acc, sh_groups, alpha, rule):
    """Float64 transcription of Video-R1 section 3.2 eq. 1 (paper) / its trainer (code), one prompt at a time."""
    out = [0.0] * len(acc)
    for g in dict.fromkeys(groups):
        mine = [i for i, x in enumerate(groups) if x == g]
        theirs = [sh_acc[i] for i, x in enumerate(sh_groups) if x == g]
        if not theirs:
            continue
        p = sum(acc[i] > 0.1 for i in mine) / len(mine)
        p_tilde = sum(a > 0.1 for a in theirs) / len(theirs)
        if (p > p_tilde) if rule == "paper" else (p >= 0.8 * p_tilde):
            for i in mine:
                out[i] = alpha if acc[i] > 0.1 else 0.0
    return out


@pytest.mark.parametrize("rule", ["paper", "code"])
@pytest.mark.parametrize("seed", range(6))
def test_tgrpo_bonus_matches_a_float64_transcription_of_the_rule(rule: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = [g for g in range(5) for _ in range(4)]
    acc = rng.integers(0, 2, size=len(groups)).astype(float).tolist()
    sh_groups = [g for g in range(4) for _ in range(2)]  # prompt 4 has no shuffled responses: no bonus
    sh_acc = rng.integers(0, 2, size=len(sh_groups)).astype(float).tolist()
    bonus, metrics = tgrpo_bonus(torch.tensor(acc), groups, torch.tensor(sh_acc), sh_groups, alpha=0.3, rule=rule)
    assert bonus.tolist() == pytest.approx(_tgrpo_reference(acc, groups, sh_acc, sh_groups, 0.3, rule), abs=1e-12)
    assert 0 <= metrics["tgrpo/bonus_group_frac"] <= 1


def test_tgrpo_rules_differ_exactly_where_the_paper_and_the_code_differ() -> None:
    # p = p~ = 0.5: the paper's strict p > p~ gives nothing, the code's p >= 0.8 p~ gives the bonus.
    acc, sh = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])
    assert tgrpo_bonus(acc, [0, 0], sh, [0, 0], rule="paper")[0].tolist() == [0.0, 0.0]
    assert tgrpo_bonus(acc, [0, 0], sh, [0, 0], rule="code")[0].tolist() == pytest.approx([0.3, 0.0])


def test_shuffled_frame_order_is_a_fixed_non_identity_permutation() -> None:
    from vt_ray.rollout.worker import shuffle_order

    for n in (2, 4, 16):
        for uid in ("a", "b", "c"):
            order = shuffle_order(n, 7, uid)
            assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))
            assert order.tolist() == shuffle_order(n, 7, uid).tolist()  # a resumed step shuffles the same way
    assert shuffle_order(1, 0, "x").tolist() == [0]
    assert not math.isnan(0.0)


def test_recipe_keys_select_every_family() -> None:
    families = {
        "grpo": [],
        "dr_grpo": ["algorithm.adv_estimator=dr_grpo", "algorithm.loss_agg_mode=seq-mean-token-sum-norm"],
        "gspo": ["algorithm.policy_loss=gspo", "algorithm.loss_agg_mode=seq-mean-token-mean"],
        "dapo": ["algorithm.dynamic_sampling=true", "algorithm.clip_ratio_high=0.28", "algorithm.overlong_filter=true",
                 "algorithm.overlong_buffer_len=128", "algorithm.kl_coef=0"],
        "tgrpo": ["algorithm.tgrpo=true"],
        "cispo": ["algorithm.policy_loss=cispo"],
        "reinforce_plus_plus": ["algorithm.adv_estimator=reinforce_plus_plus"],
    }
    for name, overrides in families.items():
        cfg = load_config("recipes/tiny_cpu.yaml", overrides).algorithm
        assert isinstance(cfg, AlgorithmConfig), name


# --- the rollout phase's dynamic-sampling loop (stand-ins for the Ray groups; the real ones run in
# test_algo_family_run.py) -----------------------------------------------------------------------------------


class _StandInRollout:
    """Speaks the RolloutGroup.generate contract: every prompt gets n completions named after its uid."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, []

    def generate(self, samples, sampling, learner_inputs=False):
        from vt_ray.rollout.types import Completion, RolloutResult
        from vt_ray.rollout.worker import RolloutBatchResult

        self.calls.append([s.uid for s in samples])
        results = [RolloutResult(uid=s.uid, prompt_token_ids=[1], prompt="p", frames=np.zeros((2, 4, 4, 3), np.uint8),
                                 completions=[Completion(f"{s.uid}/{j}", [1, 2, 3], [-0.1] * 3, "stop")
                                              for j in range(self.n)]) for s in samples]
        return RolloutBatchResult(results=results)


class _StandInRewards:
    """Prompts u0, u2, u4, ... score the same for every response (zero variance); odd ones vary."""

    def score(self, texts, targets):
        out = []
        for text in texts:
            k, j = (int(x) for x in text[1:].split("/"))
            total = 1.0 if k % 2 == 0 else float(j)
            out.append({"total": total, "accuracy": 0.0})
        return out


def _phase(*overrides: str):
    from vt_ray.data.schema import VideoSample
    from vt_ray.trainer.rollout_phase import RolloutPhase
    from vt_ray.trainer.sampler import PromptSampler

    cfg = load_config(None, ["rollout.n=3", "trainer.prompts_per_step=3", *overrides])
    samples = [VideoSample(uid=f"u{k}", video="v.mp4", question="q", answer="A", options=["x", "y"]) for k in range(40)]
    sampler = PromptSampler(samples, seed=0)
    sampler._order = list(range(len(samples)))  # u0, u1, u2, ... in order: the test reads plainly
    return RolloutPhase(cfg, sampler, _StandInRollout(cfg.rollout.n), _StandInRewards())


def test_dynamic_sampling_refills_with_informative_groups_and_counts_rounds() -> None:
    phase = _phase("algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=3")
    data, _, metrics, _ = phase.collect(0)
    # round 0: u0 u1 u2 -> keeps u1; round 1: 2 more (u3 u4) -> u3; round 2: 1 more (u5) -> u5: full
    assert phase.rollout.calls == [["u0", "u1", "u2"], ["u3", "u4"], ["u5"]]
    assert [r.uid for r in data.results] == ["u1", "u3", "u5"] and data.group_ids == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.scores.tolist() == [0.0, 1.0, 2.0] * 3
    assert metrics["dapo/refill_rounds"] == 2 and metrics["dapo/prompts_generated"] == 6
    assert metrics["dapo/short_batch"] == 0 and phase.sampler.state.consumed == 6  # resumable: the sampler moved


def test_dynamic_sampling_oversamples_and_plain_grpo_does_not_filter() -> None:
    phase = _phase("algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=1",
                   "algorithm.oversample_factor=2")
    data, _, metrics, _ = phase.collect(0)
    assert [len(c) for c in phase.rollout.calls] == [6]  # ceil(3 x 2) prompts: u1, u3, u5 are informative
    assert metrics["dapo/refill_rounds"] == 0 and [r.uid for r in data.results] == ["u1", "u3", "u5"]
    off = _phase()
    plain, _, plain_metrics, _ = off.collect(0)
    assert [r.uid for r in plain.results] == ["u0", "u1", "u2"] and "dapo/refill_rounds" not in plain_metrics


def test_dynamic_sampling_with_no_informative_group_trains_the_first_round_and_says_so() -> None:
    phase = _phase("algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=2")
    phase.rewards.score = lambda texts, targets: [{"total": 1.0, "accuracy": 0.0} for _ in texts]
    data, _, metrics, _ = phase.collect(0)
    assert len(phase.rollout.calls) == 3 and metrics["dapo/refill_rounds"] == 2
    assert metrics["dapo/informative_groups"] == 0 and metrics["dapo/short_batch"] == 1
    assert [r.uid for r in data.results] == ["u0", "u1", "u2"]


def test_deferred_scoring_waits_in_the_update_and_dapo_refill_scores_first() -> None:
    """Sync mode sends the rewards and the update waits for them while the learners compute log-probs; DAPO's
    refill needs the scores to pick groups, so it scores first whatever the driver asked."""
    sent = []

    class Submitting(_StandInRewards):
        def submit(self, texts, targets):
            sent.append(len(texts))
            return lambda: self.score(texts, targets)

    phase = _phase()
    phase.rewards, phase.defer_scoring = Submitting(), True
    data, _, metrics, (_, reward_s) = phase.collect(0)
    assert sent == [9] and data.pending_scores is not None and not data.scored and reward_s == 0.0
    with pytest.raises(RuntimeError, match="not been scored"):
        data.scored_tensor()
    waited = data.wait_scores()
    assert data.scores.tolist() == [1.0] * 3 + [0.0, 1.0, 2.0] + [1.0] * 3 and waited["time/reward_s"] >= 0
    assert waited["reward/nonfinite"] == 0 and data.pending_scores is None and data.wait_scores() == {}
    refill = _phase("algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=3")
    refill.rewards, refill.defer_scoring = Submitting(), True
    scored, _, _, _ = refill.collect(0)
    assert scored.pending_scores is None and [r.uid for r in scored.results] == ["u1", "u3", "u5"]


def test_tgrpo_bonus_is_a_no_op_under_std_normalisation_of_a_binary_reward() -> None:
    """Measured on the learnable task (T-GRPO and GRPO logged identical accuracies for 30 steps), and true in
    general: when a group's rewards are c + a_i with a_i in {0, 1}, the bonus alpha * a_i only rescales the
    deviations, and GRPO's (r - mean) / std removes the scale. Without std normalisation (Dr. GRPO) the same
    bonus scales the group's advantages by 1 + alpha, which is how it can favour groups that used the order."""
    acc = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    shuffled = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # group 0 beats its shuffled mates
    bonus, _ = tgrpo_bonus(acc, groups, shuffled, groups, alpha=0.3)
    assert bonus.tolist() == pytest.approx([0.3, 0, 0, 0.3, 0, 0, 0, 0])
    scores = 1.0 + acc  # format reward 1 everywhere, as on the learnable task
    for estimator, scale in (("grpo", (1.0, 1.0)), ("dr_grpo", (1.3, 1.0))):
        plain = compute_advantages(estimator, scores.double(), groups)
        shaped = compute_advantages(estimator, (scores + bonus).double(), groups)
        assert shaped[:4] == pytest.approx(scale[0] * plain[:4], abs=1e-5), estimator
        assert shaped[4:] == pytest.approx(scale[1] * plain[4:], abs=1e-5), estimator
