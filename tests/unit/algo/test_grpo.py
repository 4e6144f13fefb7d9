"""GRPO core: hand-computed float64 references on small tensors, plus the properties the learner relies on."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vt_ray.algo import advantages as adv_mod
from vt_ray.algo.advantages import compute_advantages, grpo_advantages, nonzero_variance_mask, rloo_advantages
from vt_ray.algo.config import ADV_ESTIMATORS, AlgorithmConfig
from vt_ray.algo.grpo import apply_kl_in_reward, compute_grpo_advantages, grpo_loss
from vt_ray.algo.loss_terms import agg_loss, entropy_from_logits, kl_estimate, kl_penalized_scores, policy_loss
from vt_ray.config import ConfigError, load_config

F64 = torch.float64
MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


# --- advantages ---------------------------------------------------------------------------------------------


def test_grpo_advantage_hand_computed() -> None:
    # One group [1, 0, 1, 0]: mean 0.5, Bessel std sqrt(1/3).
    adv = grpo_advantages(t([1, 0, 1, 0]), [0, 0, 0, 0], eps=1e-6)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(adv, t([expected, -expected, expected, -expected]), rtol=0, atol=1e-12)


def test_dr_grpo_has_no_std_scaling() -> None:
    adv = grpo_advantages(t([2, 0, 1, 1]), ["a"] * 4, norm_by_std=False)
    torch.testing.assert_close(adv, t([1, -1, 0, 0]))


def test_rloo_leave_one_out_baseline() -> None:
    # r_i - mean of the others: 3 - 1.5, 1 - 2.5, 2 - 2.
    adv = rloo_advantages(t([3, 1, 2]), [7, 7, 7], norm_by_std=False)
    torch.testing.assert_close(adv, t([1.5, -1.5, 0.0]))
    std = torch.std(t([3, 1, 2])).item()
    torch.testing.assert_close(rloo_advantages(t([3, 1, 2]), [7, 7, 7]), t([1.5, -1.5, 0.0]) / (std + 1e-6))


def test_groups_by_id_any_order_and_singletons_get_zero() -> None:
    scores = t([1, 5, 0, 3, 9])
    ids = ["g1", "g2", "g1", "g2", "solo"]
    adv = grpo_advantages(scores, ids, norm_by_std=False)
    torch.testing.assert_close(adv, t([0.5, 1.0, -0.5, -1.0, 0.0]))
    # Same with integer tensor ids.
    adv_t = grpo_advantages(scores, torch.tensor([4, 2, 4, 2, 0]), norm_by_std=False)
    torch.testing.assert_close(adv_t, adv)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=8), min_size=1, max_size=5),
    st.sampled_from(["grpo", "dr_grpo", "rloo"]),  # the group-relative ones (REINFORCE++ whitens the batch)
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_group_advantages_sum_to_zero_and_are_order_invariant(groups, estimator, norm, rnd) -> None:
    scores = t([s for g in groups for s in g])
    ids = [i for i, g in enumerate(groups) for _ in g]
    cfg = AlgorithmConfig(norm_by_std=norm)
    adv = compute_advantages(estimator, scores, ids, cfg)
    for gid in range(len(groups)):
        sel = torch.tensor([i == gid for i in ids])
        assert abs(adv[sel].sum().item()) < 1e-6 * max(1.0, adv[sel].abs().max().item())
    perm = list(range(len(ids)))
    rnd.shuffle(perm)
    adv_perm = compute_advantages(estimator, scores[perm], [ids[i] for i in perm], cfg)
    torch.testing.assert_close(adv_perm, adv[perm])


def test_zero_variance_filter() -> None:
    scores = t([1, 1, 1, 0, 1, 2, 2])
    ids = [0, 0, 0, 1, 1, 2, 2]
    assert nonzero_variance_mask(scores, ids).tolist() == [False, False, False, True, True, False, False]
    cfg = AlgorithmConfig(filter_zero_variance_groups=True)
    adv, keep, metrics = compute_grpo_advantages(cfg, scores, ids)
    assert keep.tolist() == [False, False, False, True, True, False, False]
    assert adv[~keep].abs().sum().item() == 0
    assert metrics["algo/zero_variance_group_frac"] == pytest.approx(2 / 3)
    assert metrics["algo/kept_frac"] == pytest.approx(2 / 7)
    _, keep_all, _ = compute_grpo_advantages(AlgorithmConfig(), scores, ids)
    assert keep_all.all()


def test_unknown_estimator_and_registry_in_sync_with_config() -> None:
    assert set(adv_mod.ADV_ESTIMATORS.names()) == set(ADV_ESTIMATORS)
    with pytest.raises(KeyError, match="unknown advantage estimator"):
        compute_advantages("ppo_gae", t([1, 0]), [0, 0])


# --- policy loss --------------------------------------------------------------------------------------------


def _pl(logp, adv, mask=None, old=None, **kw):
    logp = t(logp)
    old = torch.zeros_like(logp) if old is None else t(old)
    mask = torch.ones_like(logp) if mask is None else t(mask)
    return policy_loss(logp, old, t(adv), mask, **kw)


def test_policy_loss_hand_computed_positive_and_negative_advantage() -> None:
    logp = [[math.log(1.5), math.log(0.5)]]
    # A=+1: token 1 ratio 1.5 -> max(-1.5, -1.2) = -1.2; token 2 ratio 0.5 -> max(-0.5, -0.8) = -0.5.
    loss, stats = _pl(logp, [1.0])
    assert loss.item() == pytest.approx(-0.85, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    # A=-1: token 1 -> max(1.5, 1.2) = 1.5; token 2 -> max(0.5, 0.8) = 0.8.
    loss, stats = _pl(logp, [-1.0])
    assert loss.item() == pytest.approx(1.15, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    # ppo_kl = mean(old - new) = -(log 1.5 + log 0.5) / 2
    assert stats["ppo_kl"].item() == pytest.approx(-(math.log(1.5) + math.log(0.5)) / 2)


def test_clip_higher_uses_separate_bounds() -> None:
    loss, _ = _pl([[math.log(1.5)]], [1.0], clip_ratio_low=0.2, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx(-1.28, abs=1e-12)
    loss, _ = _pl([[math.log(0.5)]], [-1.0], clip_ratio_low=0.1, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx(0.9, abs=1e-12)  # max(0.5, 0.9)


def test_dual_clip_bounds_negative_advantage_loss() -> None:
    # ratio 5, A = -2: ordinary clip gives max(10, 2.4) = 10; dual clip caps at -A * c = 6.
    loss, _ = _pl([[math.log(5.0)]], [-2.0])
    assert loss.item() == pytest.approx(10.0)
    loss, stats = _pl([[math.log(5.0)]], [-2.0], dual_clip_c=3.0)
    assert loss.item() == pytest.approx(6.0)
    assert stats["clipfrac_lower"].item() == 1.0
    # Positive advantages are untouched by the dual clip.
    loss, _ = _pl([[math.log(5.0)]], [2.0], dual_clip_c=3.0)
    assert loss.item() == pytest.approx(-2.4)


@settings(max_examples=50, deadline=None)
@given(st.floats(-8, 8), st.floats(-5, 5), st.floats(1.01, 10))
def test_dual_clip_bound_property(log_ratio: float, a: float, c: float) -> None:
    loss, _ = _pl([[log_ratio]], [a], dual_clip_c=c)
    if a < 0:
        assert loss.item() <= -a * c + 1e-9
    plain, _ = _pl([[log_ratio]], [a])
    assert loss.item() <= plain.item() + 1e-12


def test_ratio_one_and_zero_advantage_give_zero_loss_and_gradient() -> None:
    logp = torch.randn(3, 4, dtype=F64, requires_grad=True)
    mask = torch.ones(3, 4, dtype=F64)
    loss, _ = policy_loss(logp, logp.detach(), torch.zeros(3, dtype=F64), mask)
    loss.backward()
    assert loss.item() == 0.0 and logp.grad.abs().sum().item() == 0.0
    # Ratio != 1 but zero advantage (all-equal rewards): still no policy gradient.
    logp.grad = None
    loss, _ = policy_loss(logp, logp.detach() + 0.3, torch.zeros(3, dtype=F64), mask)
    loss.backward()
    assert loss.item() == 0.0 and logp.grad.abs().sum().item() == 0.0


def test_on_policy_gradient_is_advantage_weighted_logprob_gradient() -> None:
    # ratio 1 => d loss / d logp_t = -A_n / (number of kept tokens) under token-mean.
    logp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    mask = t([[1, 1, 0], [1, 0, 0]])
    loss, _ = policy_loss(logp, logp.detach(), t([2.0, -1.0]), mask)
    loss.backward()
    torch.testing.assert_close(logp.grad, t([[-2 / 3, -2 / 3, 0], [1 / 3, 0, 0]]))


# --- aggregation, padding, masks ----------------------------------------------------------------------------


def test_agg_modes_hand_computed() -> None:
    loss_mat, mask = t([[1, 2, 3], [4, 0, 0]]), t([[1, 1, 1], [1, 0, 0]])
    assert agg_loss(loss_mat, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert agg_loss(loss_mat, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert agg_loss(loss_mat, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    with pytest.raises(ValueError):
        agg_loss(loss_mat, mask, "sum")


def test_fully_masked_response_does_not_count() -> None:
    loss_mat, mask = t([[1, 2], [100, 100]]), t([[1, 1], [0, 0]])
    assert agg_loss(loss_mat, mask, "seq-mean-token-sum").item() == pytest.approx(3.0)
    assert agg_loss(loss_mat, mask, "seq-mean-token-mean").item() == pytest.approx(1.5)
    assert agg_loss(loss_mat, t([[0, 0], [0, 0]]), "token-mean").item() == 0.0


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(4, 5, dtype=F64, generator=g) * 0.3 - 1
    old = logp + torch.randn(4, 5, dtype=F64, generator=g) * 0.3
    ref = logp + torch.randn(4, 5, dtype=F64, generator=g) * 0.3
    adv = torch.randn(4, dtype=F64, generator=g)
    lengths = [5, 3, 1, 4]
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths], dtype=F64)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("mode", MODES)
def test_loss_and_grads_invariant_to_right_padding_even_with_inf_nan(mode: str) -> None:
    logp, old, ref, adv, mask = _batch()
    cfg = AlgorithmConfig(loss_agg_mode=mode, dual_clip_c=3.0, entropy_coef=0.01)
    logits = torch.randn(4, 5, 7, dtype=F64, generator=torch.Generator().manual_seed(1))

    def run(pad: int, fill: float):
        lp = torch.cat([logp, torch.full((4, pad), fill, dtype=F64)], 1).requires_grad_(True)
        pad_with = lambda x: torch.cat([x, torch.full((4, pad), fill, dtype=F64)], 1)  # noqa: E731
        m = torch.cat([mask, torch.zeros(4, pad, dtype=F64)], 1)
        lg = torch.cat([logits, torch.full((4, pad, 7), 0.0, dtype=F64)], 1)
        loss, metrics = grpo_loss(cfg, lp, adv, m, old_logp=pad_with(old), ref_logp=pad_with(ref), logits=lg)
        loss.backward()
        return loss, lp.grad, metrics

    base_loss, base_grad, base_metrics = run(0, 0.0)
    for fill in (0.0, -float("inf"), float("nan")):
        loss, grad, metrics = run(3, fill)
        torch.testing.assert_close(loss, base_loss, rtol=0, atol=1e-12)
        torch.testing.assert_close(grad[:, :5], base_grad, rtol=0, atol=1e-12)
        assert torch.isfinite(grad).all() and grad[:, 5:].abs().sum().item() == 0.0
        assert metrics == pytest.approx(base_metrics)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_only_on_masked_in_tokens(mode: str) -> None:
    logp, old, ref, adv, mask = _batch(3)
    logp.requires_grad_(True)
    loss, _ = grpo_loss(AlgorithmConfig(loss_agg_mode=mode), logp, adv, mask, old_logp=old, ref_logp=ref)
    loss.backward()
    assert (logp.grad[mask == 0] == 0).all()
    assert (logp.grad[mask == 1] != 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_global_denominators_make_micro_batches_add_up(mode: str) -> None:
    logp, old, ref, adv, mask = _batch(5)
    cfg = AlgorithmConfig(loss_agg_mode=mode)
    full, _ = grpo_loss(cfg, logp, adv, mask, old_logp=old, ref_logp=ref)
    n_tok, n_seq = mask.sum().item(), float((mask.sum(-1) > 0).sum())
    parts = [
        grpo_loss(cfg, logp[s], adv[s], mask[s], old_logp=old[s], ref_logp=ref[s], num_tokens=n_tok, num_seqs=n_seq)[0]
        for s in (slice(0, 2), slice(2, 4))
    ]
    torch.testing.assert_close(sum(parts), full, rtol=0, atol=1e-12)


# --- KL, entropy --------------------------------------------------------------------------------------------


def test_kl_estimators_hand_computed() -> None:
    logp, ref = t([[math.log(0.5)]]), t([[math.log(0.25)]])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_estimate(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_k3_is_nonnegative_and_clamped() -> None:
    x = torch.linspace(-30, 30, 61, dtype=F64).unsqueeze(0)
    k3 = kl_estimate(x, torch.zeros_like(x), "k3")
    assert (k3 >= 0).all() and (k3 <= 10).all()


def test_kl_loss_term_uses_coefficient() -> None:
    logp, old, ref, adv, mask = _batch(7)
    no_kl, _ = grpo_loss(AlgorithmConfig(kl_coef=0.0), logp, adv, mask, old_logp=old)
    with_kl, metrics = grpo_loss(AlgorithmConfig(kl_coef=0.5), logp, adv, mask, old_logp=old, ref_logp=ref)
    expected_kl = agg_loss(kl_estimate(logp, ref, "k3"), mask, "token-mean")
    torch.testing.assert_close(with_kl - no_kl, 0.5 * expected_kl)
    assert metrics["actor/kl_loss"] == pytest.approx(expected_kl.item())
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(AlgorithmConfig(), logp, adv, mask, old_logp=old)


def test_kl_as_reward_penalty() -> None:
    scores, mask = t([1.0, 0.0]), t([[1, 1], [1, 0]])
    logp, ref = t([[0.0, -1.0], [-2.0, 5.0]]), t([[-0.5, -1.5], [-1.0, 0.0]])
    out = kl_penalized_scores(scores, logp, ref, mask, coef=0.1, estimator="k1")
    torch.testing.assert_close(out, t([1.0 - 0.1 * (0.5 + 0.5), 0.0 - 0.1 * (-1.0)]))
    cfg = AlgorithmConfig(use_kl_loss=False, use_kl_in_reward=True, kl_coef=0.1, kl_estimator="k1")
    penalized, metrics = apply_kl_in_reward(cfg, scores, logp, ref, mask)
    torch.testing.assert_close(penalized, out)
    assert metrics["algo/kl_in_reward"] == pytest.approx((1.0 - 1.0) / 2)
    same, _ = apply_kl_in_reward(AlgorithmConfig(), scores, logp, ref, mask)
    assert same is scores


def test_entropy_from_logits() -> None:
    uniform = torch.zeros(2, 3, 8, dtype=F64)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2, 3), math.log(8), dtype=torch.float32))
    probs = t([0.5, 0.25, 0.25])
    expected = -(probs * probs.log()).sum().item()
    assert entropy_from_logits(probs.log()).item() == pytest.approx(expected, rel=1e-6)
    peaked = t([[0.0, -1e4, -1e4]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_bonus_and_metrics() -> None:
    logp, old, ref, adv, mask = _batch(9)
    logits = torch.randn(4, 5, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    base, metrics = grpo_loss(AlgorithmConfig(), logp, adv, mask, old_logp=old, ref_logp=ref, logits=logits)
    bonus, _ = grpo_loss(AlgorithmConfig(entropy_coef=0.1), logp, adv, mask, old_logp=old, ref_logp=ref, logits=logits)
    ent = agg_loss(entropy_from_logits(logits).double(), mask, "token-mean").item()
    assert base.item() - bonus.item() == pytest.approx(0.1 * ent, rel=1e-6)
    assert metrics["actor/entropy"] == pytest.approx(ent, rel=1e-6)
    for key in ("actor/pg_loss", "actor/pg_clipfrac", "actor/pg_ppo_kl", "actor/kl_loss", "actor/loss"):
        assert key in metrics and math.isfinite(metrics[key])
    with pytest.raises(ValueError, match="entropy"):
        grpo_loss(AlgorithmConfig(entropy_coef=0.1), logp, adv, mask, old_logp=old, ref_logp=ref)


# --- config -------------------------------------------------------------------------------------------------


def test_algorithm_defaults_and_reference_need() -> None:
    cfg = load_config(None).algorithm
    assert (cfg.adv_estimator, cfg.kl_coef, cfg.kl_estimator, cfg.loss_agg_mode) == ("grpo", 0.04, "k3", "token-mean")
    assert cfg.needs_reference
    assert not load_config(None, ["algorithm.kl_coef=0"]).algorithm.needs_reference


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.adv_estimator=gae", "algorithm.adv_estimator"),
        ("algorithm.loss_agg_mode=sum", "algorithm.loss_agg_mode"),
        ("algorithm.kl_estimator=k4", "algorithm.kl_estimator"),
        ("algorithm.dual_clip_c=0.5", "algorithm.dual_clip_c"),
        ("algorithm.clip_ratio_low=1.5", "algorithm.clip_ratio_low"),
        ("algorithm.use_kl_in_reward=true", "algorithm.use_kl_in_reward"),
        ("algorithm.eps=0", "algorithm.eps"),
    ],
)
def test_bad_algorithm_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.key == key


# --- the learner adapter ------------------------------------------------------------------------------------


def _train_batch(logp, old, ref, adv, mask):
    from vt_ray.learner.batch import TrainBatch

    b, length = mask.shape
    return TrainBatch(
        input_ids=torch.zeros(b, length, dtype=torch.long),
        attention_mask=torch.ones(b, length, dtype=torch.long),
        response_mask=mask,
        pixel_values_videos=torch.zeros(0, 1),
        video_grid_thw=torch.ones(b, 3, dtype=torch.long),
        second_per_grid_ts=torch.ones(b),
        advantages=adv,
        old_logprobs=old,
        ref_logprobs=ref,
    )


@pytest.mark.parametrize("mode", MODES)
def test_learner_loss_shares_add_up_to_grpo_loss(mode: str) -> None:
    from vt_ray.algo.objective import make_loss
    from vt_ray.learner.losses import LossNorm, resolve_loss

    logp, old, ref, adv, mask = _batch(11)
    recipe = load_config(None, [f"algorithm.loss_agg_mode={mode}", "algorithm.dual_clip_c=3"])
    loss_fn = resolve_loss("grpo", recipe)  # the learner's lookup reaches vt_ray.algo.objective.make_loss
    batch = _train_batch(logp, old, ref, adv, mask)
    norm = LossNorm(num_tokens=int(mask.sum()), num_sequences=len(batch))
    full, _ = grpo_loss(recipe.algorithm, logp, adv, mask, old_logp=old, ref_logp=ref)
    shares = [loss_fn(logp[s], batch.select(s.start, s.stop), norm) for s in (slice(0, 1), slice(1, 4))]
    torch.testing.assert_close(sum(loss for loss, _ in shares), full, rtol=0, atol=1e-6)
    _, full_metrics = grpo_loss(recipe.algorithm, logp, adv, mask, old_logp=old, ref_logp=ref)
    summed = {k: sum(float(m[k]) for _, m in shares) for k in shares[0][1]}
    for key in ("actor/pg_loss", "actor/pg_clipfrac", "actor/pg_ppo_kl", "actor/kl_loss"):
        assert summed[key] == pytest.approx(full_metrics[key], abs=1e-6)
    assert loss_fn.entropy == "metric"  # logged by default, no gradient
    with pytest.raises(ValueError, match="entropy"):
        make_loss(AlgorithmConfig(entropy_coef=0.1))(logp, batch, norm)  # the learner must supply it


@pytest.mark.parametrize("mode", MODES)
def test_learner_loss_entropy_bonus_shares_match_grpo_loss(mode: str) -> None:
    from vt_ray.algo.objective import make_loss
    from vt_ray.learner.losses import LossNorm

    logp, old, ref, adv, mask = _batch(12)
    logits = torch.randn(*mask.shape, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    cfg = AlgorithmConfig(loss_agg_mode=mode, entropy_coef=0.1)
    loss_fn = make_loss(cfg)
    assert loss_fn.entropy == "grad"
    batch = _train_batch(logp, old, ref, adv, mask)
    batch.entropy = entropy_from_logits(logits).double()
    norm = LossNorm(num_tokens=int(mask.sum()), num_sequences=len(batch))
    full, full_metrics = grpo_loss(cfg, logp, adv, mask, old_logp=old, ref_logp=ref, logits=logits)
    shares = [loss_fn(logp[s], batch.select(s.start, s.stop), norm) for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(sum(loss for loss, _ in shares), full, rtol=0, atol=1e-6)
    assert sum(float(m["actor/entropy"]) for _, m in shares) == pytest.approx(full_metrics["actor/entropy"], abs=1e-6)
    assert make_loss(AlgorithmConfig(log_entropy=False)).entropy is None
