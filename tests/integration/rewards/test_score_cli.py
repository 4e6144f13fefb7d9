"""``python -m vt_ray score``: scores a JSONL file with the recipe's rewards, every component per line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PYTHON = ROOT / ".venv/bin/python"
STEPS = "<time>00:01-00:03</time> <caption>a red circle</caption> <think>red</think>"
LINES = [
    {"response": f"{STEPS} <answer>B</answer>", "answer": "B", "options": ["blue", "red"], "duration": 5.0,
     "windows": [[1, 3]], "captions": ["a red circle"], "uid": "keep-me"},
    {"response": f"{STEPS} <answer>A</answer>", "answer": "B", "options": ["blue", "red"]},
    {"response": "<answer>4</answer>", "answer": "4"},
    {"response": "no tags at all; the answer is 7", "answer": "7", "answer_type": "numeric"},
    {"response": f"{STEPS} <answer>The Red circle</answer>", "answer": "red circle", "duration": 1.5},
]  # fmt: skip
COMPONENTS = {"accuracy", "format", "temporal_iou", "caption_similarity", "length_penalty", "total", "errors",
              "timeouts"}  # fmt: skip


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYTHON if PYTHON.exists() else sys.executable), "-m", "vt_ray", "score", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    return path


def test_score_writes_every_component_per_line(tmp_path: Path) -> None:
    src, out = _write(tmp_path / "in.jsonl", LINES), tmp_path / "sub" / "out.jsonl"
    proc = _run("--input", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scored) == len(LINES)
    for original, line in zip(LINES, scored):
        assert set(line["rewards"]) == COMPONENTS
        assert {k: line[k] for k in original} == original  # input fields kept, e.g. uid
    totals = [line["rewards"]["total"] for line in scored]
    accuracy = [line["rewards"]["accuracy"] for line in scored]
    fmt = [line["rewards"]["format"] for line in scored]
    assert accuracy == [1.0, 0.0, 1.0, 0.0, 1.0]  # line 4 has no <answer> and fallback is off by default
    assert fmt == [1.0, 1.0, 0.0, 0.0, 0.0]  # line 5: window ends at 3 s, video is 1.5 s (+1 s slack)
    assert totals == [a + f for a, f in zip(accuracy, fmt)]  # paper default: r = r_acc + r_format
    assert scored[0]["rewards"]["temporal_iou"] == 1.0
    summary = json.loads(proc.stdout)
    assert summary["lines"] == 5 and summary["reward/accuracy"] == 0.6


def test_score_applies_reward_overrides(tmp_path: Path) -> None:
    src, out = _write(tmp_path / "in.jsonl", LINES), tmp_path / "out.jsonl"
    proc = _run("--input", str(src), "--out", str(out), "reward.answer_fallback=true", "reward.format_weight=0",
                "reward.temporal_iou_weight=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scored = [json.loads(line)["rewards"] for line in out.read_text().splitlines()]
    assert scored[3]["accuracy"] == 1.0  # fallback reads "the answer is 7"
    assert scored[0]["total"] == 1.0 + 2 * 1.0


def test_score_reports_bad_lines_and_keys(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(LINES[0]) + "\n{not json\n")
    proc = _run("--input", str(src), "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and f"{src}:2" in proc.stderr
    src.write_text(json.dumps({"response": "x"}) + "\n")
    proc = _run("--input", str(src), "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and "answer" in proc.stderr
    proc = _run("--input", str(src), "--out", str(tmp_path / "o.jsonl"), "reward.format_mode=loose")
    assert proc.returncode == 2 and "reward.format_mode" in proc.stderr
