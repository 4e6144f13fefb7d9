"""The head-to-head benchmark's bookkeeping (no TRL here: the benchmark installs it in its own environment)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.trl_head_to_head import TreePeak, medians, pinned_distributions, table, trl_figures


def _side(steps: list[float], generate: list[float]) -> dict:
    return {"step_s": steps, "generate_s": generate, "prepare_s": [g + 0.1 for g in generate],
            "completion_len": [64.0] * len(steps), "responses_per_step": 16, "startup_s": 9.0}


def test_trl_figures_skip_the_warm_up_steps_and_take_medians() -> None:
    figures = trl_figures(_side([9.0, 5.0, 2.0, 1.0, 3.0], [8.0, 4.0, 1.0, 0.5, 1.5]), skip=2)
    assert figures["step_s"] == 2.0  # median of the last three steps, the 9 s and 5 s warm-up left out
    assert figures["responses_per_s"] == 8.0 and figures["gen_tok_per_s"] == 512.0
    assert figures["rollout_s"] == 1.0 and figures["rest_s"] == 1.0


def test_trl_figures_keep_every_step_when_the_run_is_shorter_than_the_warm_up() -> None:
    assert trl_figures(_side([4.0, 2.0], [1.0, 1.0]), skip=5)["step_s"] == 3.0


def test_table_gives_each_system_its_ratio_to_trl_at_the_same_length() -> None:
    def run(system: str, tokens: int, step: float, wall: float) -> dict:
        return {"system": system, "tokens": tokens, "step_s": step, "responses_per_s": 16 / step,
                "gen_tok_per_s": 16 * tokens / step, "rollout_s": step / 2, "rest_s": step / 2, "wall_s": wall,
                "peak_pss_gib": 1.0}

    results = {"sync_64": run("sync", 64, 2.0, 60), "trl_64": run("trl", 64, 1.0, 20),
               "sync_256": run("sync", 256, 2.0, 90), "trl_256": run("trl", 256, 4.0, 45)}
    lines = table(results).splitlines()[2:]
    rows = {(c[0], c[1]): c for c in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)}
    assert rows[("64", "sync")][5] == "0.50x" and rows[("64", "sync")][9] == "3.00x"  # speed, whole run
    assert rows[("256", "sync")][5] == "2.00x" and rows[("256", "sync")][9] == "2.00x"
    assert rows[("64", "trl")][5] == "1.00x"


def test_medians_are_per_figure_and_per_role() -> None:
    repeats = [{"step_s": s, "wall_s": 10.0 * s, "role_peak_pss_gib": {"rollout0": s, "learner0": 1.0}, "steps": []}
               for s in (3.0, 1.0, 2.0)]
    m = medians("one_step_off_256", repeats)
    assert (m["system"], m["tokens"], m["step_s"], m["wall_s"]) == ("one_step_off", 256, 2.0, 20.0)
    assert m["role_peak_pss_gib"] == {"rollout0": 2.0, "learner0": 1.0}
    assert len(m["repeats"]) == 3


def test_the_throwaway_environment_is_pinned_to_this_one() -> None:
    pins = pinned_distributions()
    names = {p.split("==")[0].lower() for p in pins}
    assert {"torch", "transformers"} <= names  # pip may not replace what both sides must share
    assert all(p.count("==") == 1 for p in pins)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc")
def test_tree_peak_counts_the_children_of_the_process() -> None:
    hold = "b = b'1' * (200 * 2**20); import sys; sys.stdin.read()"  # 200 MiB written, held until stdin ends
    code = f"b = b'1' * (200 * 2**20); import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}])"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    peak = TreePeak(proc.pid, interval_s=0.05)
    try:
        for _ in range(600):  # parent and child hold 200 MiB each; at most 30 s
            if peak.peak >= 400 * 2**20 or proc.poll() is not None:
                break
            peak._stop.wait(0.05)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait()
    assert peak.stop() >= 0.39
