"""Rollout worker on the production path: synthetic mp4 -> decoded frames -> Qwen2.5-VL prompt -> vLLM-CPU.
Bad videos are skipped and counted; over-long prompts are downsampled or dropped before vLLM sees them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vt_ray.config.loader import load_config
from vt_ray.config.roles import RolloutRoleConfig
from vt_ray.data.schema import read_samples, resolve_video_paths
from vt_ray.rollout.types import SamplingSettings
from vt_ray.video.budget import PromptBudget
from vt_ray.video.sampling import video_token_count

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
SAMPLING = SamplingSettings(n=2, temperature=1.0, max_tokens=24)


@pytest.fixture(scope="module")
def cfg(tiny_model_dir: Path):
    return load_config(
        ROOT / "recipes/tiny_cpu.yaml", [f"model.path={tiny_model_dir}", "rollout.max_num_seqs=16"]
    )


@pytest.fixture(scope="module")
def worker(cfg):
    from vt_ray.rollout.worker import RolloutWorker

    return RolloutWorker(RolloutRoleConfig.of(cfg))


@pytest.fixture()
def samples(synthetic_dir: Path):
    return resolve_video_paths(read_samples(synthetic_dir / "val.jsonl"), synthetic_dir)


def test_generates_g_responses_per_synthetic_video(worker, samples) -> None:
    batch = worker.generate(samples, SAMPLING)
    assert [r.uid for r in batch.results] == [s.uid for s in samples]  # input order
    assert batch.skipped == [] and batch.downsampled == 0
    video_pad = worker.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    for result in batch.results:
        assert result.prompt_token_ids.count(video_pad) == video_token_count(8, 112, 112)  # grid [4, 8, 8]
        assert len(result.completions) == 2
        for c in result.completions:
            assert 1 <= len(c.token_ids) <= 24 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")


def _zero_frame_avi(path: Path) -> Path:
    """A well-formed AVI with a video stream and no frames (what an interrupted recorder can leave)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def test_bad_videos_are_skipped_and_counted_and_the_rest_generated(worker, samples, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    bad = [
        dataclasses.replace(samples[0], uid="corrupt", video=str(corrupt)),
        dataclasses.replace(samples[0], uid="missing", video=str(tmp_path / "gone.mp4")),
        dataclasses.replace(samples[0], uid="no-frames", video=str(_zero_frame_avi(tmp_path / "empty.avi"))),
        dataclasses.replace(samples[0], uid="not-a-video", video=str(text)),
    ]
    batch = worker.generate([bad[0], samples[1], bad[1], bad[2], bad[3]], SAMPLING)
    assert [r.uid for r in batch.results] == [samples[1].uid]
    assert batch.skipped_counts() == {"corrupt": 2, "missing": 1, "empty": 1}
    assert {s.uid: s.reason for s in batch.skipped} == {"corrupt": "corrupt", "missing": "missing",
                                                         "no-frames": "empty", "not-a-video": "corrupt"}
    assert all(s.detail for s in batch.skipped)  # names the file and the decoder's complaint


def test_overlong_prompt_is_downsampled_or_dropped_before_generation(worker, samples) -> None:
    full = worker.prepare(samples[:1])[0][0]
    text_tokens = len(worker.processor.tokenizer(full.prompt)["input_ids"]) - 1
    budget_for_4_frames = text_tokens + video_token_count(4, 112, 112)
    saved = worker.budget
    try:
        worker.budget = PromptBudget(budget_for_4_frames, "downsample", min_frames=2)
        batch = worker.generate(samples[:1], SAMPLING)
        assert batch.downsampled == 1 and len(batch.results) == 1
        assert len(batch.results[0].prompt_token_ids) <= budget_for_4_frames
        worker.budget = PromptBudget(budget_for_4_frames, "drop", min_frames=2)
        batch = worker.generate(samples[:1], SAMPLING)
        assert batch.results == [] and batch.skipped_counts() == {"overlong": 1}
    finally:
        worker.budget = saved


def test_tgrpo_shuffled_responses_come_from_the_same_decoded_frames(worker, samples, monkeypatch) -> None:
    """T-GRPO: the shuffled group is sampled from the frames decoded for the ordered group (one decode per video),
    permuted, and attached to the ordered result; the ordered responses are unchanged in number."""
    import numpy as np

    from vt_ray.rollout import worker as worker_mod

    decodes, seen = [], []
    real_fit, real_generate = worker_mod.fit_to_budget, worker.engine.generate
    monkeypatch.setattr(worker_mod, "fit_to_budget", lambda *a, **k: decodes.append(a[0]) or real_fit(*a, **k))
    monkeypatch.setattr(worker.engine, "generate", lambda reqs, s: seen.append((reqs, s)) or real_generate(reqs, s))
    batch = worker.generate(samples[:2], dataclasses.replace(SAMPLING, shuffled_n=3, shuffle_seed=5))
    assert len(decodes) == 2  # one decode per video, shared by both groups
    (ordered, s1), (shuffled, s2) = seen
    assert (s1.n, s1.shuffled_n, s2.n, s2.shuffled_n) == (2, 0, 3, 0)
    for result, req, sreq in zip(batch.results, ordered, shuffled, strict=True):
        assert len(result.completions) == 2 and len(result.shuffled_completions) == 3
        order = result.shuffle_order
        assert sorted(order) == list(range(len(req.frames))) and order != list(range(len(req.frames)))
        assert np.array_equal(sreq.frames, req.frames[order]) and sreq.prompt == req.prompt
        assert np.array_equal(result.frames, req.frames)  # the learner trains on the ordered frames
