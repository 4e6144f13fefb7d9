"""Our estimators and losses against verl's own ``verl.trainer.ppo.core_algos`` (golden numbers made by
tests/fixtures/verl_core_algos/make_fixtures.py in a throwaway environment; verl is not a dependency).

Tolerance 1e-6 (float64 inputs). One known, deliberate difference: for a group of one response verl passes the
raw reward through as the advantage (mean 0, std 1), ours gives 0 (no baseline to compare against); the tests
check that this is the only difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vt_ray.algo.advantages import compute_advantages
from vt_ray.algo.config import AlgorithmConfig
from vt_ray.algo.loss_terms import POLICY_LOSSES, Aggregation, agg_loss, kl_estimate

FIXTURE = json.loads((Path(__file__).parents[2] / "fixtures/verl_core_algos/core_algos.json").read_text())
INPUTS = FIXTURE["inputs"]
VERL = FIXTURE["verl_version"]
F64 = torch.float64
TOL = 1e-6
MASK = torch.tensor(INPUTS["mask"], dtype=F64)
SCORES = torch.tensor(INPUTS["scores"], dtype=F64)
LENGTHS = torch.tensor(INPUTS["lengths"], dtype=F64)
SINGLE = [i for i, g in enumerate(INPUTS["groups"]) if INPUTS["groups"].count(g) == 1]
# ours -> verl's fixture key
# verl's RLOO has no std division: ours with algorithm.norm_by_std=false.
CFG = {"rloo": AlgorithmConfig(eps=1e-6, norm_by_std=False)}
ESTIMATORS = {"grpo": "grpo", "dr_grpo": "grpo_no_std", "rloo": "rloo", "reinforce_plus_plus": "reinforce_plus_plus",
              "reinforce_plus_plus_baseline": "reinforce_plus_plus_baseline"}


def test_fixture_names_the_verl_version_it_came_from() -> None:
    assert VERL == "0.9.1" and FIXTURE["made_by"].endswith("make_fixtures.py")
    assert SINGLE == [7]  # the batch has a group of one ...
    assert INPUTS["scores"][8] == INPUTS["scores"][9]  # ... and a group with equal rewards


def _per_response(verl_adv: list) -> torch.Tensor:
    """verl's [N, T] advantages (the response's value on each of its tokens) -> [N]; checks they are constant."""
    adv = torch.tensor(verl_adv, dtype=F64)
    per = adv[:, 0]
    torch.testing.assert_close(adv * MASK, per[:, None] * MASK, rtol=0, atol=1e-12)
    return per


@pytest.mark.parametrize("ours", sorted(ESTIMATORS))
def test_advantages_match_verl_without_groups_of_one(ours: str) -> None:
    fixture = FIXTURE["advantages_no_single"]
    adv = compute_advantages(ours, SCORES.clone(), fixture["groups"], CFG.get(ours, AlgorithmConfig(eps=1e-6)), LENGTHS)
    torch.testing.assert_close(adv, _per_response(fixture[ESTIMATORS[ours]]), rtol=0, atol=TOL,
                               msg=f"{ours} vs verl {VERL}")


@pytest.mark.parametrize("ours", ["grpo", "dr_grpo", "rloo", "reinforce_plus_plus"])
def test_a_group_of_one_is_the_only_difference(ours: str) -> None:
    adv = compute_advantages(ours, SCORES.clone(), INPUTS["groups"], CFG.get(ours, AlgorithmConfig(eps=1e-6)), LENGTHS)
    verl = _per_response(FIXTURE["advantages"][ESTIMATORS[ours]])
    others = [i for i in range(len(adv)) if i not in SINGLE]
    torch.testing.assert_close(adv[others], verl[others], rtol=0, atol=TOL)
    if ours == "reinforce_plus_plus":  # no group baseline at all: no difference either
        torch.testing.assert_close(adv[SINGLE], verl[SINGLE], rtol=0, atol=TOL)
        return
    assert adv[SINGLE].abs().max() == 0  # ours: no baseline, no signal
    raw = SCORES[SINGLE] / ((1 + 1e-6) if ours == "grpo" else 1.0)  # verl: the raw reward (mean 0, std 1)
    torch.testing.assert_close(verl[SINGLE], raw, rtol=0, atol=TOL)


def test_reinforce_pp_baseline_group_of_one_changes_only_through_batch_whitening() -> None:
    """With a group of one, verl centres it to its raw reward and ours to 0; both then whiten over the batch,
    so the difference shows everywhere. Feeding ours verl's centring for that response gives verl's numbers."""
    adv = compute_advantages("reinforce_plus_plus_baseline", SCORES.clone(), INPUTS["groups"], AlgorithmConfig(),
                             LENGTHS)
    verl = _per_response(FIXTURE["advantages"]["reinforce_plus_plus_baseline"])
    assert adv[SINGLE].abs().max() < verl[SINGLE].abs().max()
    from vt_ray.algo.advantages import token_weighted_whiten

    centred = SCORES.clone()
    for g in set(INPUTS["groups"]):
        idx = [i for i, x in enumerate(INPUTS["groups"]) if x == g]
        if len(idx) > 1:
            centred[idx] = SCORES[idx] - SCORES[idx].mean()
    torch.testing.assert_close(token_weighted_whiten(centred, LENGTHS), verl, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_estimators_match_verl(name: str) -> None:
    logp, ref = torch.tensor(INPUTS["logp"], dtype=F64), torch.tensor(INPUTS["ref_logp"], dtype=F64)
    torch.testing.assert_close(kl_estimate(logp, ref, name) * MASK, torch.tensor(FIXTURE["kl"][name]) * MASK,
                               rtol=0, atol=TOL)


@pytest.mark.parametrize("mode", sorted(FIXTURE["agg"]["values"]))
def test_loss_aggregation_matches_verl(mode: str) -> None:
    loss_mat = torch.tensor(FIXTURE["agg"]["loss_mat"], dtype=F64)
    ours = agg_loss(loss_mat, MASK, mode, scale=INPUTS["scale"])
    assert ours.item() == pytest.approx(FIXTURE["agg"]["values"][mode], abs=TOL)


@pytest.mark.parametrize("case", FIXTURE["policy_losses"], ids=lambda c: f"{c['loss']}-{c['mode']}")
def test_policy_losses_match_verl_in_value_metrics_and_gradient(case: dict) -> None:
    sequence_level = case["loss"] == "gspo"
    clips = ({"seq_clip_ratio_low": case["clip_low"], "seq_clip_ratio_high": case["clip_high"]} if sequence_level
             else {"clip_ratio_low": case["clip_low"], "clip_ratio_high": case["clip_high"]})
    cfg = AlgorithmConfig(policy_loss=case["loss"], loss_agg_mode=case["mode"], dual_clip_c=3.0, **clips)
    logp = torch.tensor(INPUTS["logp"], dtype=F64).requires_grad_(True)
    old, adv = torch.tensor(INPUTS["old_logp"], dtype=F64), torch.tensor(INPUTS["advantages"], dtype=F64)
    names = ["gspo", "gspo_token"] if sequence_level else [case["loss"]]
    for name in names:  # GSPO and GSPO-token agree with verl's GSPO (value and gradient) for per-response A
        logp.grad = None
        loss, stats = POLICY_LOSSES.get(name)(
            logp, old, adv, MASK, cfg, Aggregation(case["mode"], scale=INPUTS["scale"])
        )
        loss.backward()
        assert loss.item() == pytest.approx(case["value"], abs=TOL), (name, VERL)
        assert stats["clipfrac"].item() == pytest.approx(case["clipfrac"], abs=TOL)
        assert stats["ppo_kl"].item() == pytest.approx(case["ppo_kl"], abs=TOL)
        torch.testing.assert_close(logp.grad * MASK, torch.tensor(case["grad"], dtype=F64), rtol=0, atol=TOL)
