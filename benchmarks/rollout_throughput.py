"""Rollout throughput: the vLLM engine against transformers ``generate`` on the same tiny model and inputs.

Prints generated tokens/s for each backend (warm: one untimed warm-up call each) and their ratio.
Run: ``.venv/bin/python -m benchmarks.rollout_throughput [--prompts 8 --n 8 --tokens 128 --frames 16]``.
Responses are forced to full length (no stop strings, EOS ignored by vLLM; HF min_new_tokens) so both produce
the same token count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _requests(n_prompts: int, frames: int, size: int, processor):  # noqa: ANN001, ANN202
    from vt_ray.config.schema import PromptConfig
    from vt_ray.data.schema import VideoSample
    from vt_ray.prompts.chat import prompt_text
    from vt_ray.rollout.types import GenerationRequest

    rng = np.random.default_rng(0)
    out = []
    for i in range(n_prompts):
        sample = VideoSample(uid=f"b{i}", video="", question="Which colour appeared first?", answer="A",
                             options=["red", "green", "blue", "pink"])
        video = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
        meta = {"total_num_frames": frames, "fps": 2.0, "duration": frames / 2.0, "video_backend": "pyav",
                "frames_indices": list(range(frames)), "do_sample_frames": False}
        out.append(GenerationRequest(sample.uid, prompt_text(processor, sample, PromptConfig()), video, meta))
    return out


def _time(engine, requests, sampling) -> tuple[int, float]:  # noqa: ANN001
    engine.generate(requests[:1], sampling)  # warm-up
    start = time.perf_counter()
    results = engine.generate(requests, sampling)
    elapsed = time.perf_counter() - start
    return sum(len(c.token_ids) for r in results for c in r.completions), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--model-size", default="tiny", choices=("tiny", "small"))
    args = parser.parse_args()

    from transformers import AutoProcessor

    from vt_ray.config.schema import ModelConfig, RolloutConfig
    from vt_ray.models.tiny import make_tiny_model
    from vt_ray.rollout.hf_engine import HfEngine
    from vt_ray.rollout.types import SamplingSettings
    from vt_ray.rollout.vllm_engine import VllmEngine

    model_dir = make_tiny_model(Path(tempfile.mkdtemp()) / "model", size=args.model_size)
    processor = AutoProcessor.from_pretrained(model_dir)
    requests = _requests(args.prompts, args.frames, args.size, processor)
    model = ModelConfig(path=str(model_dir))
    rollout = RolloutConfig(max_model_len=4096, max_tokens=args.tokens, max_num_seqs=256)
    sampling = SamplingSettings(n=args.n, temperature=1.0, max_tokens=args.tokens, stop=[], seed=0)

    figures = {}
    vllm_engine = VllmEngine(model, rollout)
    from vllm import SamplingParams  # force full-length responses for a like-for-like count

    base = vllm_engine._sampling_params
    vllm_engine._sampling_params = lambda s: SamplingParams(**{**_params_dict(base(s)), "ignore_eos": True})
    figures["vllm"] = _time(vllm_engine, requests, sampling)
    del vllm_engine

    hf = HfEngine(model, rollout)
    original = hf.model.generate
    hf.model.generate = lambda **kw: original(**kw, min_new_tokens=args.tokens)  # same length as vLLM
    figures["hf"] = _time(hf, requests, sampling)

    print(f"tiny Qwen2.5-VL ({args.model_size}), {args.prompts} prompts x n={args.n} x {args.tokens} tokens, "
          f"{args.frames} frames of {args.size}px")
    for name, (tokens, seconds) in figures.items():
        print(f"  {name:5s} {tokens:6d} tokens in {seconds:6.2f} s = {tokens / seconds:8.0f} tok/s")
    ratio = (figures["vllm"][0] / figures["vllm"][1]) / (figures["hf"][0] / figures["hf"][1])
    print(f"  vLLM / HF generate throughput ratio: {ratio:.2f}x")


def _params_dict(params) -> dict:  # noqa: ANN001
    keys = ("n", "temperature", "top_p", "max_tokens", "stop", "include_stop_str_in_output", "logprobs", "seed")
    return {k: getattr(params, k) for k in keys}


if __name__ == "__main__":
    main()
