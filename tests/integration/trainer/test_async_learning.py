"""One-step-off GRPO learns what the video shows (issue 24): the learning benchmark's colour task, in the suite.

The same path as ``python -m benchmarks.learning_curve`` (tiny model, synthetic colour videos, SFT whose answers
carry no colour, then GRPO), shortened: 32 held-out videos, 20 steps. The rollouts of step t are made by the
policy of step t-1 while the learners update, and the truncated importance weight (on by default in the
overlapped modes) corrects for it. Chance is 0.25; after SFT the held-out accuracy is at chance by
construction (the SFT answer letters are random and balanced within each colour).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vt_ray.trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_one_step_off_grpo_raises_held_out_accuracy_well_above_chance(tmp_path: Path) -> None:
    out = tmp_path / "lc"
    cmd = [sys.executable, "-m", "benchmarks.learning_curve", "--seeds", "2", "--option-order", "fixed",
           "--no-control", "--num-val", "32", "--out", str(out), "trainer.mode=one_step_off",
           "trainer.total_steps=20", "trainer.val_every=20"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    grpo = json.loads((out / "learning_curve.json").read_text())["runs"][0]["grpo"]
    accuracy = grpo["curve"]["val_accuracy"]
    assert grpo["curve"]["val_step"] == [0, 20]
    assert accuracy[0] <= 0.4, accuracy  # after SFT: chance (0.25), 32 videos
    # 16 of 32 is outside chance: the 95% Wilson interval of 0.5 at n = 32 starts at 0.34 > 0.25. Runs are not
    # bit-identical (vLLM's float noise enters the loss) and the policy learns one colour at a time, so accuracy
    # moves in steps of about 0.25. Six recorded curves (docs/async/lc_*.json: seeds 0 and 2, sync and one-step-off)
    # read 0.50-1.00 at step 15 (two at 0.50) and 0.50-1.00 at step 20 (four at 1.00), hence 20 steps.
    assert accuracy[-1] >= 0.5, accuracy
    samples = read_metrics(Path(grpo["run_dir"]) / "samples.jsonl")
    staleness = {r["step"]: r["step"] - 1 - r["policy_version"] for r in samples}
    assert set(staleness.values()) <= {0, 1} and staleness[1] == 0 and staleness[2] == 1, staleness
    steps = {r["step"]: r for r in read_metrics(Path(grpo["run_dir"]) / "metrics.jsonl") if r["step"] >= 1}
    assert all("actor/tis_weight_mean" in steps[s] for s in steps)  # the stale batches were weighted
