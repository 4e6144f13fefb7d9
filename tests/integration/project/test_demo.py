"""`make demo`'s job end to end, as a user runs it: the main command must keep working at every commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


def test_demo_runs_every_stage_sft_teaches_the_format_and_grpo_the_content(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    # The demo as `make demo` runs it, but 20 GRPO steps on the colour task instead of 30: accuracy is past the
    # bar below from step 5 in every run seen, and the 10 steps saved are about a minute of the suite's budget.
    # And 3 GRPO steps on the paper-format task instead of the recipe's 6: there the test checks that GRPO runs,
    # times its phases, checkpoints and reports, not what it learns (~3 s a step). Its SFT keeps the recipe's 40
    # epochs: with 20, greedy format validity after SFT was 0.0 (measured), far below the bar of 0.75.
    proc = subprocess.run([sys.executable, "-m", "vt_ray", "demo", "--out", str(out), "--color-steps", "20",
                           "trainer.total_steps=3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "vt_ray demo summary" in proc.stdout

    summary = json.loads((out / "summary.json").read_text())
    _colour_task_learned(summary)
    assert "colour task" in proc.stdout and "95% CI" in proc.stdout
    assert set(summary["eval"]) == {"base", "sft", "grpo"}
    base, sft = summary["eval"]["base"], summary["eval"]["sft"]
    assert base["format_valid"] <= 0.25
    assert sft["format_valid"] >= 0.75, summary["eval"]  # greedy traces parse after SFT
    assert sft["mIoU"] > base["mIoU"]
    assert summary["sft"]["loss_last"] < summary["sft"]["loss_first"] / 5
    grpo = summary["grpo"]
    assert grpo["steps"] == 3  # the override reached the paper-format GRPO run (the recipe says 6)
    assert all(grpo["mean_time_per_phase_s"][p] > 0 for p in ("rollout", "update", "weight_sync"))
    assert Path(grpo["run_dir"], "metrics.jsonl").is_file()
    for name in ("base", "sft", "grpo"):
        assert Path(summary["eval"][name]["report"]).is_file()
    report = Path(grpo["run_dir"], "report", "report.html")
    assert f"[demo] report: {report}" in proc.stdout and report.is_file()  # the demo ends with its report's path


def _colour_task_learned(summary: dict) -> None:
    """GRPO must raise held-out accuracy on the colour task from chance to clearly above it. This is the suite's
    check that the update learns: a sign flip in the advantage, a detached loss or a weight sync that does not
    take leaves the greedy val accuracy at the SFT model's (chance, by construction of the SFT targets)."""
    color = summary["color"]
    sft, grpo = color["eval"]["sft"], color["eval"]["grpo"]
    assert sft["n"] == grpo["n"] == 64
    assert abs(sft["accuracy"] - 0.25) <= 0.1, color  # SFT taught the format, not the answers
    # Greedy val accuracy moves in quarters (one colour flips at a time) and the step at which the second and third
    # colours flip varies with seed and CPU (measured: 0.5 from step 5 to 20 in CI; 0.95-1.0 from step 15-25 in
    # the runs seen here). 0.5 is two colours of four: its 95% interval (n=64) is 0.38-0.62, clear of chance.
    assert grpo["accuracy"] >= 0.5, color
    assert grpo["accuracy"] >= sft["accuracy"] + 0.2, color
    assert grpo["accuracy_letter"] == grpo["accuracy"]  # answered with the letter itself
    assert color["verdict"].startswith("learned"), color["verdict"]
