"""In-job learner recovery (issue 21, item 2): a learner rank that dies mid-update is not the end of the job.

The driver kills every role, starts them again on new placement groups and resumes from the last complete
checkpoint in the same job; each step is logged once and the prompts follow the fault-free order. Past
``trainer.max_restarts`` the command exits 75 so a RayJob retry takes over. The crash is a real ``os._exit``
of learner rank 1 inside ``train_step`` (vt_ray/testing/faults.py), once (a marker file).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_runs import TRAIN_OVERRIDES, logged_steps, rollout_keys, step_uids  # tests/ is on sys.path (conftest)
from vt_ray.trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[3]


def _command(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vt_ray", "train", f"recipe={ROOT / 'recipes/tiny_cpu.yaml'}",
        f"model.path={model}", f"data.train_file={data / 'train.jsonl'}", f"data.val_file={data / 'val.jsonl'}",
        f"run.output_dir={out}", "run.name=t", "trainer.total_steps=4", "trainer.save_every=2",
        "trainer.wandb_mode=disabled", "rollout.max_tokens=16", "trainer.val_samples=1", *extra,
    ]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)


@pytest.mark.slow
def test_past_the_restart_budget_the_job_exits_75_for_the_rayjob_retry(
    tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    """No in-job restart left: a lost learner ends the job with the documented code (the recovery itself, data
    order and weights included, is checked by the short soak below)."""
    # no validation file: the crash is in the first update, and validating before it proves nothing here
    run = _run(_command(tiny_model_dir, synthetic_dir, tmp_path, "trainer.max_restarts=0", "trainer.total_steps=2",
                        f"data.val_file={tmp_path / 'no_validation.jsonl'}"),
               {"VT_RAY_CRASH_AT": "learner.train_step@1", "VT_RAY_CRASH_MARKER": str(tmp_path / "crashed")})
    assert run.returncode == 75, run.stdout[-2000:] + run.stderr[-3000:]
    assert (tmp_path / "crashed").is_file()
    assert "learner lost again after 0 in-job restart(s) (trainer.max_restarts=0)" in run.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two runs of the driver (and the shared fault-free run); about 2.5 min on 2 idle cores
def test_short_chaos_soak_loses_and_doubles_nothing_and_ends_on_the_same_weights(
    tiny_model_dir: Path, train_data: Path, straight_run: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    """The suite's version of ``python -m benchmarks.chaos_soak``: 4 steps; learner rank 0 dies while the step-4
    checkpoint is written (the next segment ignores the partial save and resumes from step 2), then learner
    rank 1 dies in its first update of that segment (in-job recovery, again from step 2) and that segment runs to
    the end. Against the fault-free run: every step logged once, the same prompts per step, the same figures
    and bit-for-bit the same final weights (CPU float32)."""
    from benchmarks.chaos_soak import Fault, is_training_figure, same_figure, soak, summary

    straight_dir = straight_run[1]
    left: dict[int, dict] = {}

    def after_segment(segment: int, run_dir: Path) -> None:  # what each segment left on disk
        ckpts = run_dir / "checkpoints"
        left[segment] = {"latest": (ckpts / "latest").read_text().strip(), "steps": logged_steps(run_dir),
                         "partial": sorted(p.name for p in ckpts.glob(".tmp_step_*"))}

    faults = [Fault("learner_checkpoint", "learner.save_checkpoint@0#2"),
              Fault("learner_update", "learner.train_step@1#1")]
    # The fault-free run is the suite's shared one (conftest.py): the chaos run uses its command line exactly.
    report = summary(soak(tiny_model_dir, train_data, tmp_path, 4, faults, seed=0,
                          extra=(*TRAIN_OVERRIDES, "trainer.val_samples=0"),
                          reference=straight_dir, name="t", after_segment=after_segment))
    crash, recovered = report["faults"]
    assert crash["fired"] and crash["exit_code"] not in (0, None), report["faults"]  # a failed save ends the job
    assert (recovered["exit_code"], recovered["fired"]) == (0, True), report["faults"]  # recovered in the job
    assert report["driver_reruns"] == 1  # the recovered segment ran to the end
    assert report["in_job_restarts"] == 1 and report["kills_survived"] == 2

    # The crash during the step-4 save left the step-2 checkpoint as the latest, the partial save beside it ...
    assert left[0]["latest"] == "step_00000002" and left[0]["partial"] == [".tmp_step_00000004"], left[0]
    # ... and steps 1-4 logged with the seed of the fault-free run: every figure but wall times and memory peaks
    # to float noise (chaos_soak.same_figure: bit for bit on most machines, 1e-6 relative on an AMX VM), the
    # engine-vs-learner mismatch diagnostics (vLLM's float noise, ~1e-7) to 1e-6.
    reference = logged_steps(straight_dir)
    for step in (1, 2, 3, 4):
        training = {k: v for k, v in reference[step].items() if is_training_figure(k)}
        assert [k for k in training if not same_figure(k, left[0]["steps"][step].get(k), training[k])] == [], step
    log = (tmp_path / "chaos.log").read_text()
    assert "ignoring incomplete checkpoint" in log  # the partial save was reported, not used
    assert "resumed from" in log and "at step 2" in log

    checks = report["checks"]
    assert checks["steps_logged_once"] and checks["ledger_steps_once"] and checks["data_order_equal"], checks
    assert checks["samples_lost"] == 0 and checks["samples_doubled"] == 0
    assert checks["metrics_differing"] == [], checks
    assert checks["weights_within_noise"], checks["max_abs_weight_diff"]  # bit for bit on most machines
    run_dir = tmp_path / "chaos" / "t"
    assert rollout_keys(run_dir) == rollout_keys(straight_dir)  # the report's rollouts are truncated on resume too
    assert step_uids(run_dir) == step_uids(straight_dir)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_one_step_off_run_trains_on_the_previous_version_and_a_recovery_loses_and_doubles_no_sample(
    tiny_model_dir: Path, train_data: Path, straight_run: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    """trainer.mode=one_step_off (issue 24): the next step's rollouts are made while the learners update. Learner
    rank 1 dies in the step-3 update; the in-job recovery closes the rollout pipeline, resumes from the step-2
    checkpoint and makes the in-flight batch again. Every step is logged once, on the prompts of the fault-free
    sync run, and the logged policy version of every trained sample is within the staleness bound: exactly the
    previous version, except the first batch after the start and after the resume (their own version)."""
    from train_runs import run_cli, train_command

    run = run_cli(train_command(tiny_model_dir, train_data, tmp_path, "trainer.mode=one_step_off"),
                  env={"VT_RAY_CRASH_AT": "learner.train_step@1#3", "VT_RAY_CRASH_MARKER": str(tmp_path / "crashed")})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert (tmp_path / "crashed").is_file()
    assert "resumed from" in run.stdout and "at step 2" in run.stdout
    run_dir = tmp_path / "t"
    steps = logged_steps(run_dir)
    assert sorted(steps) == [0, 1, 2, 3, 4]
    assert step_uids(run_dir) == step_uids(straight_run[1])  # nothing lost, nothing doubled, the same order
    versions = {r["step"]: r["policy_version"] for r in read_metrics(run_dir / "samples.jsonl")}
    assert versions == {1: 0, 2: 0, 3: 2, 4: 2}, versions  # trained at step s (after s-1 updates) on version s-2
    assert [steps[s]["rollout/staleness"] for s in (1, 2, 3, 4)] == [0, 1, 0, 1]
    assert all(steps[s]["rollout/weight_version"] == s for s in (1, 2, 3, 4))
    assert all("actor/tis_weight_mean" in steps[s] for s in (1, 2, 3, 4))  # stale samples weighted by default
    assert (run_dir / "hf" / "config.json").is_file()
