"""The GRPO driver end to end on a local Ray cluster (tiny model, synthetic videos, a corrupt video in the
data), run as the real command in subprocesses, plus its pure parts.

Reliability targets (notes/field-conventions.md C8) checked here: resume equivalence after a crash during a
checkpoint save (the partial checkpoint is ignored, the run continues from the previous complete one and its
steps equal an uninterrupted run's), bad videos skipped and counted without failing the step, a clean stop on
SIGTERM to the driver's process group that checkpoints, leaves no process behind and resumes, and a stuck role
that raises an error naming itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from benchmarks.chaos_soak import same_figure
from train_runs import run_cli, train_command  # pytest puts tests/ on sys.path (rootdir conftest)
from vt_ray.trainer.metrics import read_metrics, truncate_jsonl
from vt_ray.trainer.sampler import PromptSampler

ROOT = Path(__file__).resolve().parents[1]


# --- pure parts -----------------------------------------------------------------------------------------------


class _S:
    def __init__(self, uid: str) -> None:
        self.uid = uid


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


_command, _run = train_command, run_cli


def _steps(run_dir: Path) -> dict[int, dict]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r for r in rows}


def _uids(run_dir: Path) -> dict[int, list[str]]:
    return {r["step"]: r["uids"] for r in read_metrics(run_dir / "samples.jsonl")}


def _rollout_keys(run_dir: Path) -> list[tuple[int, str, str]]:
    return [(r["step"], r["split"], r["uid"]) for r in read_metrics(run_dir / "rollouts.jsonl")]


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


COMPARED = ("reward/total", "reward/format", "reward/length_penalty", "actor/pg_loss", "actor/kl_loss",
            "response/length_mean", "data/consumed_total")


@pytest.mark.slow
def test_crash_during_save_resumes_from_last_complete_checkpoint_with_identical_steps(
    tiny_model_dir: Path, train_data: Path, straight_run: tuple[subprocess.CompletedProcess, Path], tmp_path: Path
) -> None:
    straight, straight_dir = straight_run  # the fault-free run (conftest.py), shared with the chaos soak
    assert f"[train] report: {straight_dir / 'report' / 'report.html'}" in straight.stdout
    a = _steps(straight_dir)
    assert sorted(a) == [0, 1, 2, 3, 4]
    assert a[4]["data/skipped_corrupt"] == 1  # the corrupt video was met, skipped, counted, and replaced
    assert all(a[s]["data/prompts"] == 4 for s in (1, 2, 3, 4))
    _check_rollouts_and_report(straight_dir)
    # one update per step: the engine-vs-learner mismatch is measured in the update's own forward, every step
    assert all(0 <= a[s]["rollout/engine_learner_abs_diff_max"] < 1e-4 for s in (1, 2, 3, 4))

    # Kill the run while the step-4 checkpoint is being written (learner rank 0 dies after its shards).
    crashed = _run(_command(tiny_model_dir, train_data, tmp_path / "b"),
                   env={"VT_RAY_CRASH_AT": "learner.save_checkpoint@0#2"})
    assert crashed.returncode != 0
    ckpts = tmp_path / "b" / "t" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000002"
    assert list(ckpts.glob(".tmp_step_00000004"))  # the partial save is on disk ...
    # Determinism: the crashed run logged steps 1-4 before it died, with the same seed as the straight run: on
    # CPU (gloo, seeded vLLM-CPU) every figure but wall times must be bitwise equal; the engine-vs-learner
    # mismatch diagnostics (vLLM's float noise, ~1e-7) to 1e-6 (benchmarks/chaos_soak.py: same_figure).
    crashed_rows = _steps(tmp_path / "b" / "t")
    for step in (1, 2, 3, 4):
        timeless = {k: v for k, v in a[step].items() if not (k.startswith("time/") or k.endswith("_time_s"))}
        assert timeless.keys() <= crashed_rows[step].keys(), step
        assert [k for k in timeless if not same_figure(k, crashed_rows[step][k], timeless[k])] == [], step

    resumed = _run(_command(tiny_model_dir, train_data, tmp_path / "b"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ignoring incomplete checkpoint" in resumed.stdout  # ... and was reported, not used
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    b = _steps(tmp_path / "b" / "t")
    assert sorted(b) == [0, 1, 2, 3, 4]
    for step in (3, 4):
        for key in COMPARED:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-6), (step, key)
    assert _uids(tmp_path / "b" / "t") == _uids(straight_dir)  # same samples, none replayed or skipped
    assert _rollout_keys(tmp_path / "b" / "t") == _rollout_keys(straight_dir)  # truncated on resume too
    assert (tmp_path / "b" / "t" / "hf" / "config.json").is_file()


@pytest.mark.slow
def test_rollout_actor_crashes_restart_then_exhaust_the_budget_after_saving(
    tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    """A rollout actor that dies is restarted and its prompts re-sent (counted in rollout/actor_restarts); once
    trainer.max_actor_restarts is used up, the run saves its last completed step and fails, and the same
    command resumes from there. The crash fires on the 2nd generate of each actor process (no validation, no
    corrupt video, so every generate is one step's rollout): step 2 crashes once and recovers, step 3 crashes
    the restarted actor and exhausts a budget of 1."""
    cmd = _command(tiny_model_dir, synthetic_dir, tmp_path, "trainer.total_steps=3", "trainer.save_every=10",
                   "trainer.max_actor_restarts=1", f"data.val_file={tmp_path / 'no_validation.jsonl'}")
    failed = _run(cmd, env={"VT_RAY_CRASH_AT": "rollout.generate@0#2"})
    assert failed.returncode != 0
    assert "RolloutRestartBudgetExhausted" in failed.stderr, failed.stderr[-3000:]
    assert "saving step 2 before failing" in failed.stdout, failed.stdout[-3000:]
    run_dir = tmp_path / "t"
    first = _steps(run_dir)
    assert sorted(first) == [1, 2]
    assert first[1]["rollout/actor_restarts"] == 0 and first[2]["rollout/actor_restarts"] == 1
    assert first[2]["data/prompts"] == 4  # the dead actor's prompts were re-sent: none lost
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"

    resumed = _run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    assert sorted(_steps(run_dir)) == [1, 2, 3]
    uids = _uids(run_dir)
    assert sorted(uids) == [1, 2, 3] and not set(uids[3]) & (set(uids[1]) | set(uids[2]))  # nothing replayed


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
def test_sigterm_checkpoints_and_the_same_command_resumes(tiny_model_dir: Path, train_data: Path, tmp_path: Path) -> None:
    """SIGTERM to the driver's whole process group (Ctrl-C-like delivery, ``timeout``, systemd or a container
    stop of the group): the local Ray cluster is in its own session, so it keeps serving until the driver has
    finished the step and checkpointed; afterwards nothing of the run or its cluster is left."""
    cmd = _command(tiny_model_dir, train_data, tmp_path, "trainer.total_steps=50", "trainer.save_every=100")
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, start_new_session=True)
    lines = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # wait for a real training step, then preempt
            lines.append(line)
            if line.startswith("[step 1]"):
                os.killpg(proc.pid, signal.SIGTERM)  # the driver's group, not just the driver
                break
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines) + out
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]  # unfinished: a retry must not see success
    assert "checkpointing after the current step" in text
    summary = json.loads(text[text.rindex("{\n"):])
    assert summary["stopped_early"] is True and summary["stop_signal"] == signal.SIGTERM
    stopped_at = summary["step"]
    assert summary["checkpoint_step"] == stopped_at
    run_dir = tmp_path / "t"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}"
    assert max(_steps(run_dir)) == stopped_at
    cluster_sid = int(re.search(r"local Ray cluster at \S+: session (\d+)", text).group(1))
    assert cluster_sid != proc.pid
    assert _wait_gone(proc.pid) == []  # nothing left in the driver's session ...
    assert _wait_gone(cluster_sid) == []  # ... nor in the cluster's: raylet, GCS, actors all gone

    again = _run(_command(tiny_model_dir, train_data, tmp_path, f"trainer.total_steps={stopped_at + 1}",
                          "trainer.save_every=100"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {stopped_at}" in again.stdout
    assert sorted(_steps(run_dir)) == list(range(stopped_at + 2))  # no step logged twice, none missing
    sampled = [r["step"] for r in read_metrics(run_dir / "samples.jsonl")]
    assert sampled == list(range(1, stopped_at + 2))  # each step's prompts recorded once, in order


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
        group = RewardGroup(RewardConfig(), 2, lambda rank: {"num_cpus": 0.1}, call_timeout_s=300)
        group.call_timeout_s = 3  # after start-up, as the trainer tightens timeouts after its first step
        target = RewardTarget(answer="A", options=("x", "y"))
        with pytest.raises(StepTimeout, match=r"reward\[1\]\.score"):
            group.score(["<answer>A</answer>"] * 4, [target] * 4)
        group.shutdown()
    finally:
        ray.shutdown()
