"""The tiny GRPO run several tests share: its command line, the fault-free reference run and readers of a
run directory.

The short chaos soak compares its faulted run with the fault-free run that the trainer tests check on their own,
so it is made once per session (the ``straight_run`` fixture in ``conftest.py``): one driver start fewer.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from vt_ray.trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]

# Dense rewards for a random model (it never writes a valid trace): graded format + length penalty.
TRAIN_OVERRIDES = (
    "run.name=t", "trainer.total_steps=4", "trainer.save_every=2", "trainer.wandb_mode=disabled",
    "rollout.max_tokens=48", "reward.format_mode=graded", "reward.length_penalty_weight=1",
    "reward.length_max_words=24", "reward.length_buffer_words=20", "trainer.write_report=false",
)


def train_command(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vt_ray", "train", f"recipe={ROOT / 'recipes/tiny_cpu.yaml'}",
        f"model.path={model}", f"data.train_file={data / 'train.jsonl'}", f"data.val_file={data / 'val.jsonl'}",
        f"run.output_dir={out}", *TRAIN_OVERRIDES, *extra,
    ]


def run_cli(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def run_until_then_signal(cmd: list[str], pattern: str, *, with_stderr: bool, sig: int = signal.SIGTERM,
                          timeout: float = 300) -> tuple[subprocess.Popen, str, re.Match[str] | None]:
    """Start ``cmd`` in a new session, read its output (stdout, and stderr ``with_stderr``) until a line matches
    ``pattern`` (a real step has run), send ``sig`` to its whole process group and wait. Returns (the finished
    process, all its output, the match). The group is SIGKILLed if it outlives ``timeout``."""
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if with_stderr else subprocess.DEVNULL, text=True, cwd=ROOT,
                            start_new_session=True)
    lines, found = [], None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            found = re.search(pattern, line)
            if found:
                os.killpg(proc.pid, sig)  # the driver's group, not just the driver
                break
        rest, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, "".join(lines) + rest, found


def logged_steps(run_dir: Path) -> dict[int, dict]:
    """``metrics.jsonl`` by step, failing if a step was logged twice."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r for r in rows}


def step_uids(run_dir: Path) -> dict[int, list[str]]:
    """The per-sample ledger: which prompts each step trained on."""
    return {r["step"]: r["uids"] for r in read_metrics(run_dir / "samples.jsonl")}


def rollout_keys(run_dir: Path) -> list[tuple[int, str, str]]:
    """(step, split, uid) of every rollout saved for the report, in file order."""
    return [(r["step"], r["split"], r["uid"]) for r in read_metrics(run_dir / "rollouts.jsonl")]
