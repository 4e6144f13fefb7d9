"""The run report (``python -m vt_ray report``): what it reads, what it writes, what it says when inputs are
missing, and the page itself opened in headless Chromium.

The run directory is made with the trainer's own writers (MetricsLogger, RolloutLog/group_record), the real
reward scorer and GRPO advantages, and real synthetic videos decoded by the project's reader; only the
responses are written by hand (gold traces and damaged variants), so the test needs no model and no Ray.
A short real GRPO run's rollouts are checked in tests/integration/trainer/test_trainer.py.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from vt_ray.algo.grpo import compute_grpo_advantages
from vt_ray.cli import main
from vt_ray.config.loader import load_config, to_yaml
from vt_ray.data.schema import read_samples, resolve_video_paths
from vt_ray.report.browser import find_chromium, load_page, screenshot
from vt_ray.report.page import write_report
from vt_ray.rewards.composite import RewardScorer, reward_metrics
from vt_ray.rollout.types import Completion, RolloutResult
from vt_ray.trace import display_segments, parse_trace
from vt_ray.trainer.metrics import MetricsLogger
from vt_ray.trainer.rollout_log import RolloutLog, group_record
from vt_ray.video.reader import read_frames_at, read_video

ROOT = Path(__file__).resolve().parents[3]
STEPS, GROUPS, G = 3, 2, 4


def _variants(trace: str) -> list[str]:
    """A group of G responses: the gold trace, a wrong answer, shifted windows, and format garbage."""
    wrong = re.sub(r"<answer>(.*?)</answer>", lambda m: f"<answer>{'B' if m.group(1) == 'A' else 'A'}</answer>", trace)
    shifted = re.sub(r"<time>00:0(\d)", lambda m: f"<time>00:0{min(int(m.group(1)) + 2, 9)}", trace)
    return [trace, wrong, "Hmm, let me look again. " + shifted, "<think>the shape is <b>red</b></think> C"]


def make_run_dir(root: Path, data_dir: Path) -> Path:
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [f"run.output_dir={root}", "run.name=run"])
    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(to_yaml(cfg))
    (run_dir / "environment.json").write_text(json.dumps({"python": sys.version.split()[0], "packages": {}}))
    samples = resolve_video_paths(read_samples(data_dir / "train.jsonl"), data_dir)
    logger = MetricsLogger(run_dir, "run", {}, wandb_mode="disabled")
    log = RolloutLog(run_dir / "rollouts.jsonl", every=1, per_step=GROUPS, max_bytes=2**24)
    with RewardScorer(cfg.reward) as scorer:
        for step in range(1, STEPS + 1):
            picked = samples[(step - 1) * GROUPS: step * GROUPS]
            results, scored = [], []
            for s in picked:
                video = read_video(s.video, cfg.video)
                texts = _variants(s.trace or "")
                results.append(RolloutResult(s.uid, [], [Completion(t, list(range(len(t.split()))), [], "stop")
                                                        for t in texts], video_metadata=video.vllm_metadata()))
                scored.append(scorer.score_batch(texts, [s.reward_target()] * len(texts)))
            flat = [x for group in scored for x in group]
            group_ids = [g for g in range(len(picked)) for _ in range(G)]
            scores = torch.tensor([x["total"] for x in flat])
            adv, _, adv_metrics = compute_grpo_advantages(cfg.algorithm, scores, group_ids)
            log.write([group_record(step, "train", r, s, sc, adv[g * G:(g + 1) * G].tolist())
                       for g, (r, s, sc) in enumerate(zip(results, picked, scored))])
            logger.log(step, {**reward_metrics(flat), **adv_metrics, "actor/kl_loss": 0.01 * step,
                              "trace/valid_share": sum(not parse_trace(r.completions[i].text).violations
                                                       for r in results for i in range(G)) / (G * len(picked)),
                              "response/length_mean": 40.0 + step, "time/step_s": 2.0, "time/rollout_s": 0.7})
    logger.close()
    ckpt = run_dir / "checkpoints" / "step_00000002"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"\0" * 2048)
    (run_dir / "checkpoints" / "latest").write_text("step_00000002\n")
    return run_dir


@pytest.fixture
def run_dir(synthetic_dir: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"  # a copy: some tests delete a video
    shutil.copytree(synthetic_dir, data)
    return make_run_dir(tmp_path, data)


def _expected(run_dir: Path) -> tuple[int, int, int]:
    """(responses, predicted windows, gold windows drawn) as the viewer must show them: every response card
    draws its own predicted windows and the group's gold ones."""
    rows = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    responses = [(r, x) for r in rows for x in r["responses"]]
    return (len(responses), sum(len(parse_trace(x["text"]).windows) for _, x in responses),
            sum(len(r["gold_windows"]) for r, _ in responses))


def _viewer_json(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


# --- pure parts ---------------------------------------------------------------------------------------------


def test_display_segments_cut_the_text_as_the_parser_sees_it() -> None:
    text = "Hmm <time>0-5</time> <caption>a <b></caption><think>x <time>1</think> <answer>B</answer> tail"
    pieces = display_segments(text)
    assert "".join(p for _, p in pieces) == text  # nothing lost, nothing added
    assert [t for t, _ in pieces if t] == ["time", "caption", "answer"]  # the think block holds a nested tag
    assert display_segments("<think>unclosed") == [("", "<think>unclosed")]


def test_rollout_log_keeps_to_its_schedule_and_disk_cap(tmp_path: Path) -> None:
    log = RolloutLog(tmp_path / "rollouts.jsonl", every=2, per_step=1, max_bytes=300)
    assert [s for s in range(1, 7) if log.due(s)] == [2, 4, 6]
    record = {"step": 2, "responses": [{"text": "x" * 100}]}
    assert log.write([record, record]) == 1  # at most per_step groups
    assert log.write([{**record, "step": 4}]) == 1
    assert log.write([{**record, "step": 6}]) == 0 and log.capped  # the third would pass 300 bytes
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[-1]["capped"]
    assert log.write([{**record, "step": 8}]) == 0  # stays capped, no more markers


def test_read_frames_at_returns_the_frames_the_model_saw(synthetic_dir: Path) -> None:
    from vt_ray.config.schema import VideoConfig

    path = next((synthetic_dir / "videos").glob("*.mp4"))
    seen = read_video(path, VideoConfig(num_frames=8, max_frames=8))
    frames = read_frames_at(path, seen.frame_indices)
    assert len(frames) == 8
    # Same source frames (the reader also resized them; compare the mean colour of each frame).
    for a, b in zip(frames, seen.frames):
        assert abs(float(a.mean()) - float(b.mean())) < 3.0


# --- the report ---------------------------------------------------------------------------------------------


def test_report_shows_curves_rollouts_checkpoints_recipe_and_environment(run_dir: Path, tmp_path: Path) -> None:
    paths = write_report(run_dir)
    assert paths.problems == []
    html = paths.html.read_text()
    responses, _, _ = _expected(run_dir)
    assert paths.rollouts == responses == STEPS * GROUPS * G
    data = _viewer_json(html)
    assert len(data["groups"]) == STEPS * GROUPS
    group = data["groups"][0]
    assert len(data["frames"][group["frames_key"]]) == len(group["frame_indices"]) == 8  # thumbnails embedded
    assert [r["correct"] for r in group["responses"]] == [True, False, True, False]
    assert group["responses"][0]["format_valid"] and not group["responses"][3]["format_valid"]
    assert abs(sum(r["advantage"] for r in group["responses"])) < 1e-3  # standardised within the group
    assert html.count('class="curve"') >= 5 and "data:image/png;base64," in html
    assert "step_00000002 (latest)" in html and "max_pixels: 12544" in html
    md = paths.markdown.read_text()
    assert "## Curves" in md and "## Rollouts" in md and "step_00000002 (latest)" in md
    for name in re.findall(r"\]\(report_files/([^)]+)\)", md):
        assert (paths.markdown.parent / "report_files" / name).is_file()
    assert "<b>red</b>" not in html  # model output is data for the script, never markup
    only = write_report(run_dir, tmp_path / "step2", steps=(2,))
    assert {g["step"] for g in _viewer_json(only.html.read_text())["groups"]} == {2} and only.rollouts == GROUPS * G


def test_report_command_says_what_is_missing_instead_of_crashing(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 4, "reward/tot')  # a write cut off by a kill
    lines = (run_dir / "rollouts.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    Path(first["video"]).unlink()  # a deleted video
    first["responses"][0]["reward"]["custom"] = float("nan")  # a custom reward that returned NaN
    (run_dir / "rollouts.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0  # the command, in this process (no second interpreter start)
    out = capsys.readouterr().out
    assert "not valid JSON (truncated write?)" in out and "line 4" in out
    assert f"cannot show frames of {first['video']}" in out
    html = (run_dir / "report" / "report.html").read_text()
    assert 'class="problem"' in html
    groups = _viewer_json(html)["groups"]
    assert groups[0]["frames_key"] is None and "unreadable or missing" in groups[0]["frames_problem"]
    assert groups[1]["frames_key"]  # the other videos still show
    assert groups[0]["responses"][0]["reward"]["custom"] is None  # shown as "-", not a script error

    (run_dir / "rollouts.jsonl").unlink()
    (run_dir / "environment.json").unlink()
    paths = write_report(run_dir)
    assert any("rollouts.jsonl is missing" in p for p in paths.problems)
    assert any("environment.json is missing" in p for p in paths.problems)
    assert paths.rollouts == 0 and paths.html.is_file()

    empty = run_dir.parent / "empty_run"
    empty.mkdir()
    paths = write_report(empty)
    assert any("metrics.jsonl is missing" in p for p in paths.problems)
    assert "No training steps logged" in paths.html.read_text()


# --- in a real browser --------------------------------------------------------------------------------------


def test_report_in_headless_chromium_shows_every_rollout_and_window(run_dir: Path, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("Chromium not installed: run tools/setup_browser.sh (make setup does)")
    paths = write_report(run_dir)
    page = load_page(paths.html)
    assert page.console == [], page.console  # no console output, no uncaught error
    assert not re.search(r"<html[^>]*data-js-errors=", page.dom)  # the page's own error counter
    responses, predicted, gold = _expected(run_dir)
    assert f'data-viewer-ready="{responses}"' in page.dom
    viewer = page.dom[page.dom.index('<div id="rollouts">'):]
    assert viewer.count('class="rollout"') == responses
    assert viewer.count('class="win pred"') == predicted > 0
    assert viewer.count('class="win gold"') == gold > 0
    assert viewer.count('class="seg-time"') == predicted  # every parsed window is highlighted in its trace
    assert f"showing {responses} of {responses} rollouts" in page.dom
    # The filters, set from the address as a person would share a view: wrong answers with a valid format.
    rows = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    wanted = sum(x["reward"]["accuracy"] < 1 and not parse_trace(x["text"]).violations
                 for r in rows for x in r["responses"])
    filtered = load_page(paths.html, query="outcome=wrong&format=valid")
    assert filtered.console == [] and 0 < wanted < responses
    assert f"showing {wanted} of {responses} rollouts" in filtered.dom
    assert len(re.findall(r'<article class="rollout"[^>]* hidden=""', filtered.dom)) == responses - wanted
    shot = screenshot(paths.html, tmp_path / "report.png", height=1600)
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 1600)
        assert len(set(img.convert("L").resize((64, 80)).getdata())) > 20  # a rendered page, not a blank one


def test_an_sft_directory_gets_its_loss_curves_and_no_rollout_complaint(tmp_path: Path) -> None:
    sft = tmp_path / "sft"
    (sft / "hf").mkdir(parents=True)
    (sft / "hf" / "config.json").write_text("{}")
    (sft / "environment.json").write_text("{}")
    (sft / "recipe.yaml").write_text("sft: {epochs: 2}\n")
    (sft / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "epoch": 0, "loss": 7.0 / s, "grad_norm": 1.0, "lr": 1e-3}) + "\n" for s in range(1, 6)))
    paths = write_report(sft)
    assert paths.problems == [] and paths.rollouts == 0
    html = paths.html.read_text()
    assert 'alt="SFT loss"' in html and "sft hf" not in html and ">hf<" in html
