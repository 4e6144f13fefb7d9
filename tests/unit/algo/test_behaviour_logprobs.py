"""Behaviour-policy log-probs (issue 16 item 8): typed batch fields, the recipe key that picks the old policy,
the engine/learner mismatch metrics and truncated importance sampling. Pure torch, no Ray."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vt_ray.algo.config import AlgorithmConfig
from vt_ray.algo.loss_terms import policy_loss
from vt_ray.algo.objective import make_loss, mismatch_stats, tis_weights
from vt_ray.config import ConfigError, load_config
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.losses import LossNorm

F64 = torch.float64


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(4, 6, dtype=F64, generator=g) * 0.3 - 1
    learner_old = logp + torch.randn(4, 6, dtype=F64, generator=g) * 0.2
    engine = learner_old + torch.randn(4, 6, dtype=F64, generator=g) * 0.5
    adv = torch.tensor([1.0, -1.0, 0.5, -0.25], dtype=F64)
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in (6, 3, 1, 5)], dtype=F64)
    return logp, learner_old, engine, adv, mask


def _batch(mask, adv, **logprobs) -> TrainBatch:
    b, length = mask.shape
    return TrainBatch(
        input_ids=torch.zeros(b, length, dtype=torch.long),
        attention_mask=torch.ones(b, length, dtype=torch.long),
        response_mask=mask,
        pixel_values_videos=torch.zeros(0, 1),
        video_grid_thw=torch.ones(b, 3, dtype=torch.long),
        second_per_grid_ts=torch.ones(b),
        advantages=adv,
        **logprobs,
    )


def _norm(mask) -> LossNorm:
    return LossNorm(num_tokens=int(mask.sum()), num_sequences=int(mask.shape[0]))


def _expected(logp, old, adv, mask, weights=None) -> torch.Tensor:
    return policy_loss(logp, old, adv, mask, num_tokens=int(mask.sum()), token_weights=weights)[0]


def _cfg(**kw) -> AlgorithmConfig:
    return AlgorithmConfig(kl_coef=0.0, log_entropy=False, **kw)


def test_engine_mode_uses_the_engine_logprobs_as_old_policy() -> None:
    logp, learner_old, engine, adv, mask = _data()
    batch = _batch(mask, adv, behaviour_logprobs=engine, old_logprobs=learner_old)
    loss, _ = make_loss(_cfg(behaviour_logprobs="engine"))(logp, batch, _norm(mask))
    torch.testing.assert_close(loss, _expected(logp, engine, adv, mask), rtol=0, atol=1e-12)
    assert not torch.allclose(loss, _expected(logp, learner_old, adv, mask))  # the paths differ on this data
    with pytest.raises(ValueError, match="behaviour_logprobs=engine"):
        make_loss(_cfg(behaviour_logprobs="engine"))(logp, _batch(mask, adv), _norm(mask))


def test_recompute_mode_uses_the_learner_old_logprobs_and_requires_them() -> None:
    logp, learner_old, engine, adv, mask = _data(1)
    batch = _batch(mask, adv, behaviour_logprobs=engine, old_logprobs=learner_old)
    loss, _ = make_loss(_cfg(behaviour_logprobs="recompute"))(logp, batch, _norm(mask))
    torch.testing.assert_close(loss, _expected(logp, learner_old, adv, mask), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="behaviour_logprobs=recompute"):
        make_loss(_cfg(behaviour_logprobs="recompute"))(logp, _batch(mask, adv, behaviour_logprobs=engine),
                                                         _norm(mask))


def test_auto_mode_is_recomputed_when_present_else_on_policy() -> None:
    logp, learner_old, engine, adv, mask = _data(2)
    fn = make_loss(_cfg())
    with_old, _ = fn(logp, _batch(mask, adv, behaviour_logprobs=engine, old_logprobs=learner_old), _norm(mask))
    torch.testing.assert_close(with_old, _expected(logp, learner_old, adv, mask), rtol=0, atol=1e-12)
    on_policy, _ = fn(logp, _batch(mask, adv, behaviour_logprobs=engine), _norm(mask))
    torch.testing.assert_close(on_policy, _expected(logp, logp, adv, mask), rtol=0, atol=1e-12)  # ratio 1


def test_retired_string_keys_and_misspelt_fields_fail() -> None:
    logp, learner_old, engine, adv, mask = _data(3)
    for key in ("old_logprobs", "ref_logprobs", "rollout_logprobs", "sampler_logprobs", "entropy"):
        batch = _batch(mask, adv)
        batch.token_extras[key] = learner_old
        with pytest.raises(ValueError, match=key):
            make_loss(_cfg())(logp, batch, _norm(mask))
    batch = _batch(mask, adv)
    batch.seq_extras["advantages"] = adv  # the field is batch.advantages
    with pytest.raises(ValueError, match="advantages"):
        make_loss(_cfg())(logp, batch, _norm(mask))
    batch = _batch(mask, adv)
    batch.advantages = None
    with pytest.raises(ValueError, match="needs batch.advantages"):
        make_loss(_cfg())(logp, batch, _norm(mask))
    batch = _batch(mask, adv)
    with pytest.raises(AttributeError):
        batch.old_logprob = learner_old  # slots: a misspelt field cannot be set silently
    with pytest.raises(TypeError):
        _batch(mask, adv, behavior_logprobs=engine)
    with pytest.raises(ConfigError) as info:
        load_config(None, ["algorithm.behavior_logprobs=engine"])  # American spelling: an unknown key
    assert "behavior_logprobs" in str(info.value)


def test_typed_fields_survive_select_concat_and_fillers() -> None:
    logp, learner_old, engine, adv, mask = _data(4)
    batch = _batch(mask, adv, behaviour_logprobs=engine, old_logprobs=learner_old)
    parts = batch.split(3)
    assert all(p is not None and p.behaviour_logprobs is not None and p.ref_logprobs is None for p in parts)
    back = TrainBatch.concat([p for p in parts if p is not None])
    torch.testing.assert_close(back.behaviour_logprobs * mask, engine * mask)
    torch.testing.assert_close(back.old_logprobs * mask, learner_old * mask)
    assert batch.without_loss().behaviour_logprobs.shape[0] == 1
    assert {f.name for f in dataclasses.fields(TrainBatch)} >= set(TrainBatch.LOGPROB_FIELDS)


def test_mismatch_metrics_hand_computed_and_free_in_the_single_update_loss() -> None:
    logp, learner_old, engine, adv, mask = _data(5)
    n = float(mask.sum())
    d = (learner_old - engine)[mask.bool()]
    stats = mismatch_stats(learner_old, engine, mask, n)
    assert float(stats["actor/engine_learner_abs_diff_mean"]) == pytest.approx(float(d.abs().mean()), abs=1e-12)
    assert float(stats["actor/engine_learner_abs_diff_max"]) == pytest.approx(float(d.abs().max()), abs=1e-12)
    k3 = torch.exp(d) - d - 1  # r = p_learner / p_engine on engine samples: KL(engine || learner)
    assert float(stats["actor/engine_learner_k3_kl"]) == pytest.approx(float(k3.mean()), abs=1e-12)
    # One update per step, no recompute: the loss measures the mismatch against its own forward (logp).
    _, metrics = make_loss(_cfg())(logp, _batch(mask, adv, behaviour_logprobs=engine), _norm(mask))
    own = (logp - engine)[mask.bool()].abs()
    assert float(metrics["actor/engine_learner_abs_diff_max"]) == pytest.approx(float(own.max()), abs=1e-12)
    _, off = make_loss(_cfg(log_logprob_mismatch=False))(logp, _batch(mask, adv, behaviour_logprobs=engine),
                                                          _norm(mask))
    assert not any(k.startswith("actor/engine_learner") for k in off)


def test_truncated_is_weights_each_token_by_the_capped_ratio() -> None:
    logp, learner_old, engine, adv, mask = _data(6)
    engine = engine - 0.5 * (torch.arange(6, dtype=F64) % 2)  # some tokens far less likely under the engine
    w = tis_weights(learner_old, engine, 2.0)
    torch.testing.assert_close(w, torch.exp(learner_old - engine).clamp(max=2.0))
    assert (w[mask.bool()] == 2.0).any() and (w[mask.bool()] < 1.0).any()  # the cap binds on this data
    batch = _batch(mask, adv, behaviour_logprobs=engine, old_logprobs=learner_old)
    loss, metrics = make_loss(_cfg(tis_cap=2.0))(logp, batch, _norm(mask))
    torch.testing.assert_close(loss, _expected(logp, learner_old, adv, mask, w), rtol=0, atol=1e-12)
    plain, _ = make_loss(_cfg())(logp, batch, _norm(mask))
    assert not torch.allclose(loss, plain)  # off by default, and it changes the loss when on
    assert 0 < float(metrics["actor/tis_capped_frac"]) < 1


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.behaviour_logprobs=engin", "algorithm.behaviour_logprobs"),
        ("algorithm.tis_cap=0.5", "algorithm.tis_cap"),
    ],
)
def test_bad_behaviour_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.key == key


def test_engine_with_tis_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["algorithm.behaviour_logprobs=engine", "algorithm.tis_cap=2"])
    assert info.value.key == "algorithm.tis_cap"


@pytest.mark.parametrize(
    ("mode", "updates", "recompute", "policy_pass"),
    [
        ("auto", 1, False, False),  # the update's own forward is the pre-update policy: free
        ("auto", 2, True, True),
        ("recompute", 1, True, True),
        ("engine", 1, False, False),
        ("engine", 3, False, True),  # a pass for the mismatch metric alone
    ],
)
def test_which_steps_pay_a_policy_logprob_pass(mode: str, updates: int, recompute: bool, policy_pass: bool) -> None:
    cfg = AlgorithmConfig(behaviour_logprobs=mode)
    assert cfg.recompute_old_logprobs(updates) is recompute
    assert cfg.policy_logprob_pass(updates) is policy_pass
    assert AlgorithmConfig(behaviour_logprobs="engine", log_logprob_mismatch=False).policy_logprob_pass(3) is False


@pytest.mark.parametrize(
    ("overrides", "cap"),
    [
        ([], 0.0),  # sync: on-policy samples, no weight
        (["trainer.mode=one_step_off"], 2.0),  # stale samples: the weight is the correction
        (["trainer.mode=async", "trainer.max_staleness=2"], 2.0),
        (["trainer.mode=one_step_off", "algorithm.tis_cap=0"], 0.0),  # said explicitly: kept
        (["trainer.mode=one_step_off", "algorithm.tis_cap=3"], 3.0),
        (["trainer.mode=one_step_off", "algorithm.behaviour_logprobs=engine"], 0.0),  # ratio vs the engine instead
    ],
)
def test_unset_tis_cap_follows_the_trainer_mode(overrides: list[str], cap: float) -> None:
    assert load_config(None, overrides).algorithm.tis_cap == cap


def test_a_stale_batch_with_one_update_is_weighted_towards_the_current_policy() -> None:
    """One update per step (auto, no recompute): the ratio is 1, and the truncated weight pi_now / pi_behaviour
    is all that separates a stale batch's gradient from an on-policy one's."""
    logp, _, engine, adv, mask = _data(5)
    engine = engine - 0.7 * (torch.arange(6) % 3 == 0).to(F64)  # an older policy that liked these less
    batch = _batch(mask, adv, behaviour_logprobs=engine)
    loss, metrics = make_loss(_cfg(tis_cap=2.0))(logp, batch, _norm(mask))
    w = tis_weights(logp.detach(), engine, 2.0)
    torch.testing.assert_close(loss, _expected(logp, logp.detach(), adv, mask, w), rtol=0, atol=1e-12)
    assert float(metrics["actor/tis_weight_mean"]) != 1.0
