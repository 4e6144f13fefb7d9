"""The GRPO driver end to end on a local Ray cluster (tiny model, synthetic videos, a corrupt video in the
data), run as the real command in subprocesses, plus its pure parts.

Reliability targets (notes/field-conventions.md C8) checked here: bad videos skipped and counted without failing
the step, rollout actors restarted until their budget is spent, a clean stop on SIGTERM to the driver's process
group that checkpoints, leaves no process behind and resumes, and a stuck role that raises an error naming
itself. Resume equivalence after a crash during a checkpoint save is checked by the short chaos soak
(test_recovery.py), against this file's fault-free run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from train_runs import (  # tests/ is on sys.path (rootdir conftest)
    logged_steps,
    run_cli,
    run_until_then_signal,
    step_uids,
    train_command,
)
from vt_ray.trainer.metrics import read_metrics, truncate_jsonl
from vt_ray.trainer.sampler import PromptSampler

ROOT = Path(__file__).resolve().parents[3]


# --- pure parts -----------------------------------------------------------------------------------------------


class _S:
    def __init__(self, uid: str) -> None:
        self.uid = uid


def test_fixed_length_settings_reach_training_rollouts_and_not_validation() -> None:
    from vt_ray.config.loader import load_config
    from vt_ray.trainer.driver import sampling_for_training, sampling_for_validation

    cfg = load_config(None, ["rollout.max_tokens=16", "rollout.min_tokens=16", "rollout.ignore_eos=true"])
    train = sampling_for_training(cfg, step=3)
    val = sampling_for_validation(cfg)
    assert (train.min_tokens, train.ignore_eos, train.max_tokens) == (16, True, 16)
    assert (val.min_tokens, val.ignore_eos, val.temperature) == (0, False, 0.0)


def test_sampler_order_is_a_function_of_seed_and_resumes_exactly() -> None:
    items = [_S(str(i)) for i in range(7)]
    a = PromptSampler(items, seed=3)
    straight = [s.uid for s in a.take(20)]
    b = PromptSampler(items, seed=3)
    first = [s.uid for s in b.take(9)]
    state = json.loads(json.dumps(b.state_dict()))  # through a checkpoint file
    c = PromptSampler(items, seed=3)
    c.load_state_dict(state)
    assert first + [s.uid for s in c.take(11)] == straight
    assert sorted(straight[:7]) == sorted(s.uid for s in items)  # each epoch is a permutation
    assert [s.uid for s in PromptSampler(items, seed=4).take(20)] != straight


def test_sampler_never_returns_a_skipped_sample_and_fails_when_all_are() -> None:
    items = [_S(str(i)) for i in range(4)]
    s = PromptSampler(items, seed=0)
    s.mark_skipped("2", "corrupt")
    assert "2" not in {x.uid for x in s.take(12)}
    for uid in "013":
        s.mark_skipped(uid, "corrupt")
    with pytest.raises(RuntimeError, match="skipped"):
        s.next()


def test_skip_list_survives_a_checkpoint_round_trip() -> None:
    items = [_S(str(i)) for i in range(6)]
    a = PromptSampler(items, seed=1)
    a.take(2)
    a.mark_skipped("4", "corrupt")
    a.mark_skipped("5", "overlong")
    saved = json.dumps({"sampler": a.state_dict()})  # as the driver state travels in trainer_state.json
    b = PromptSampler(items, seed=1)
    b.load_state_dict(json.loads(saved)["sampler"])
    assert b.state_dict() == a.state_dict()
    rest = [x.uid for x in b.take(8)]
    assert rest == [x.uid for x in a.take(8)]
    assert not {"4", "5"} & set(rest)  # a resumed run never retries a video it already found bad


def test_truncate_jsonl_drops_steps_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": i, "x": i}) + "\n" for i in range(5)))
    truncate_jsonl(path, 2)
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    path.write_text(path.read_text() + '{"step": 3, "responses": [{"te')  # a kill cut the last write short
    truncate_jsonl(path, 2)  # that line is from after the checkpoint: dropped, not a crash on resume
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]


# --- end to end -----------------------------------------------------------------------------------------------


_command, _run, _steps, _uids = train_command, run_cli, logged_steps, step_uids


def _check_rollouts_and_report(run_dir: Path) -> None:
    """The rollouts a real run saved for the report (trainer.rollouts_per_step=2 of each step's 4 groups, and
    2 validation prompts before and after training), and the report made from them."""
    from vt_ray.report.page import write_report

    rows = read_metrics(run_dir / "rollouts.jsonl")
    assert [(r["step"], r["split"]) for r in rows] == (
        [(0, "val")] * 2 + [(s, "train") for s in (1, 2, 3, 4) for _ in range(2)] + [(4, "val")] * 2)
    for r in rows:
        assert len(r["frame_indices"]) == len(r["frame_times"]) == 8 and r["gold_windows"] and r["video"]
        assert len(r["responses"]) == (4 if r["split"] == "train" else 1)
        if r["split"] == "train":
            assert abs(sum(x["advantage"] for x in r["responses"])) < 1e-4  # standardised within the group
            assert {"accuracy", "format", "total"} <= set(r["responses"][0]["reward"])
    assert (run_dir / "environment.json").is_file()
    report = write_report(run_dir)
    assert report.problems == [] and report.rollouts == 4 * 2 * 4 + 2 * 2


@pytest.mark.slow
def test_fault_free_run_logs_every_step_skips_the_corrupt_video_and_writes_its_report(
    straight_run: tuple[subprocess.CompletedProcess, Path]
) -> None:
    """The suite's shared fault-free run (conftest.py; the short chaos soak in test_recovery.py crashes the same
    command during a checkpoint save and compares the result with it)."""
    straight, straight_dir = straight_run
    assert f"[train] report: {straight_dir / 'report' / 'report.html'}" in straight.stdout
    a = _steps(straight_dir)
    assert sorted(a) == [0, 1, 2, 3, 4]
    assert a[4]["data/skipped_corrupt"] == 1  # the corrupt video was met, skipped, counted, and replaced
    assert all(a[s]["data/prompts"] == 4 for s in (1, 2, 3, 4))
    _check_rollouts_and_report(straight_dir)
    # one update per step: the engine-vs-learner mismatch is measured in the update's own forward, every step
    assert all(0 <= a[s]["rollout/engine_learner_abs_diff_max"] < 1e-4 for s in (1, 2, 3, 4))
    assert (straight_dir / "hf" / "config.json").is_file()
    _check_run_costs(straight_dir, a)


def _check_run_costs(run_dir: Path, steps: dict[int, dict]) -> None:
    """Peak memory of every role process and the seconds of every start-up and shut-down phase (issue 24)."""
    roles = json.loads((run_dir / "memory.json").read_text())["roles"]
    assert set(roles) == {"driver", "learner0", "learner1", "rollout0", "reward0", "ray"}
    for role, r in roles.items():  # a sampled PSS peak never exceeds the kernel's RSS high-water marks
        assert 0.01 < r["peak_pss_gib"] <= r["peak_rss_gib"] + 0.01, (role, r)
    assert roles["rollout0"]["peak_pss_gib"] < 1.0  # the tiny recipe's KV cache is sized to its need (~25 MiB)
    for step in (1, 4):  # the first and the last step carry the peaks so far
        assert steps[step]["memory/rollout0_peak_gib"] > 0 and steps[step]["memory/learner1_peak_gib"] > 0
    assert not any(k.startswith("memory/") for k in steps[2])
    phases = json.loads((run_dir / "phases.json").read_text())
    assert {"start_roles", "validate_before", "step_1"} <= set(phases["startup"]["phases"])
    assert {"checkpoint", "hf_export", "shutdown", "shutdown_learner"} <= set(phases["shutdown"]["phases"])
    assert phases["steps"]["count"] == 4 and set(phases["outer"]) == {"ray_init_s", "ray_stop_s"}


def _session_processes(sid: int) -> list:
    import psutil

    procs = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                procs.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return procs


def _wait_gone(sid: int) -> list[str]:
    """Processes of session ``sid`` still alive after they were given 30 s to exit (a bound, not a wait)."""
    import psutil

    _, alive = psutil.wait_procs(_session_processes(sid), timeout=30)
    return [" ".join(p.cmdline())[:120] for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_rollout_budget_spent_saves_then_a_sigterm_checkpoints_and_the_same_command_resumes_both(
    tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    """One run's life through two kinds of stop, each resumed by the same command (one driver start fewer than
    two tests would need):

    1. A rollout actor that dies is restarted and its prompts re-sent (counted in rollout/actor_restarts); once
       trainer.max_actor_restarts is used up, the run saves its last completed step and fails. The crash fires
       on the 2nd generate of each actor process (no validation, no corrupt video, so every generate is one
       step's rollout): step 2 crashes once and recovers, step 3 crashes the restarted actor and exhausts a
       budget of 1.
    2. The same command resumes from step 2; SIGTERM to the driver's whole process group (Ctrl-C-like delivery,
       ``timeout``, systemd or a container stop of the group) after its first step: the local Ray cluster is in
       its own session, so it keeps serving until the driver has finished the step and checkpointed;
       afterwards nothing of the run or its cluster is left.
    3. The same command resumes from there and finishes: no step logged twice, no prompt trained twice."""
    def command(total_steps: int) -> list[str]:
        return _command(tiny_model_dir, synthetic_dir, tmp_path, f"trainer.total_steps={total_steps}",
                        "trainer.save_every=100", "trainer.max_actor_restarts=1",
                        f"data.val_file={tmp_path / 'no_validation.jsonl'}")

    run_dir = tmp_path / "t"
    failed = _run(command(50), env={"VT_RAY_CRASH_AT": "rollout.generate@0#2"})
    assert failed.returncode != 0
    assert "RolloutRestartBudgetExhausted" in failed.stderr, failed.stderr[-3000:]
    assert "saving step 2 before failing" in failed.stdout, failed.stdout[-3000:]
    first = _steps(run_dir)
    assert sorted(first) == [1, 2]
    assert first[1]["rollout/actor_restarts"] == 0 and first[2]["rollout/actor_restarts"] == 1
    assert first[2]["data/prompts"] == 4  # the dead actor's prompts were re-sent: none lost
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"

    proc, text, _ = run_until_then_signal(command(50), r"^\[step 3\]", with_stderr=False)  # a real step, then preempt
    assert "resumed from" in text and "at step 2" in text, text[-3000:]
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]  # unfinished: a retry must not see success
    assert "checkpointing after the current step" in text
    summary = json.loads(text[text.rindex("{\n"):])
    assert summary["stopped_early"] is True and summary["stop_signal"] == signal.SIGTERM
    stopped_at = summary["step"]
    assert stopped_at >= 3 and summary["checkpoint_step"] == stopped_at
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}"
    assert max(_steps(run_dir)) == stopped_at
    cluster_sid = int(re.search(r"local Ray cluster at \S+: session (\d+)", text).group(1))
    assert cluster_sid != proc.pid
    assert _wait_gone(proc.pid) == []  # nothing left in the driver's session ...
    assert _wait_gone(cluster_sid) == []  # ... nor in the cluster's: raylet, GCS, actors all gone

    again = _run(command(stopped_at + 1))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {stopped_at}" in again.stdout
    assert sorted(_steps(run_dir)) == list(range(1, stopped_at + 2))  # no step logged twice, none missing
    sampled = [r["step"] for r in read_metrics(run_dir / "samples.jsonl")]
    assert sampled == list(range(1, stopped_at + 2))  # each step's prompts recorded once, in order
    uids = _uids(run_dir)  # 13 training prompts, 4 per step: steps 1-3 are 12 distinct ones when none is replayed
    assert len({u for step in (1, 2, 3) for u in uids[step]}) == 12


@pytest.mark.slow
def test_a_stuck_role_raises_an_error_naming_it() -> None:
    import ray

    from vt_ray.rewards.config import RewardConfig
    from vt_ray.rewards.target import RewardTarget
    from vt_ray.rollout.group import StepTimeout
    from vt_ray.trainer.reward_group import RewardGroup

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VT_RAY_HANG_AT": "reward.score@1"}})
    try:
        group = RewardGroup(RewardConfig(), 2, lambda rank: {"num_cpus": 0.1}, timeout_s=300)
        group.timeout_s = 3  # after start-up, as the trainer tightens timeouts after its first step
        target = RewardTarget(answer="A", options=("x", "y"))
        with pytest.raises(StepTimeout, match=r"reward\[1\]\.score"):
            group.score(["<answer>A</answer>"] * 4, [target] * 4)
        group.shutdown()
    finally:
        ray.shutdown()


def _printed_result(text: str) -> dict:
    """The result JSON ``vt_ray sft`` prints (the report line and logs may follow it)."""
    return json.JSONDecoder().raw_decode(text[text.rindex('{\n  "hf_dir"'):])[0]


@pytest.mark.slow
def test_sft_stops_on_sigterm_with_a_checkpoint_and_the_same_command_resumes(
    tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    """``vt_ray sft`` stops the way ``train`` does: SIGTERM to its process group finishes the current step,
    writes a checkpoint, exports no HF model of a partial stage and exits 143, leaving no process behind; the
    same command resumes at the next batch and finishes with every step logged once."""
    import sys

    out = tmp_path / "sft"
    # 13 samples in batches of 4: 4 steps an epoch, 12 in all. SIGTERM lands right after step 2 is logged, so the
    # stop comes 9 steps (seconds) before the end and the resume is mid-epoch; each step more is ~0.3 s per run.
    cmd = [sys.executable, "-m", "vt_ray", "sft", f"recipe={ROOT / 'recipes/tiny_cpu.yaml'}",
           f"model.path={tiny_model_dir}", f"data.train_file={synthetic_dir / 'train.jsonl'}",
           f"sft.output_dir={out}", "sft.epochs=3", "sft.batch_size=4", "trainer.wandb_mode=disabled"]
    proc, text, second = run_until_then_signal(cmd, r"SFT step 2/(\d+)", with_stderr=True)  # a real step
    assert second is not None, text[-3000:]
    total = int(second.group(1))
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "checkpointing after the current step" in text
    result = _printed_result(text)
    stopped_at = result["steps"]
    assert result["stopped_early"] is True and result["stop_signal"] == signal.SIGTERM and result["hf_dir"] == ""
    assert 2 <= stopped_at < total
    assert not (out / "hf").exists()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, stopped_at + 1))
    assert _wait_gone(proc.pid) == []

    again = run_cli(cmd)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    finished = _printed_result(again.stdout)
    assert finished["resumed_from_step"] == stopped_at and finished["steps"] == total
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, total + 1))  # none twice
    assert (out / "hf" / "config.json").is_file()
