"""Rollout throughput on the same tiny model and inputs: the vLLM engine, the transformers engine generating all
prompts of a call in one batch (``rollout.hf_batch_size: 0``, the default) and one prompt per ``generate`` call
(``hf_batch_size: 1``, the backend's behaviour before batching).

Prints generated tokens/s per backend (warm: one untimed warm-up call each; the median of ``--reps`` timed
calls, the backends taking turns) and the ratios, and writes them to ``--out`` (JSON). Every response is forced
to exactly ``--tokens`` tokens (``min_tokens = max_tokens``, ``ignore_eos``, no stop strings), so every backend
generates the same count. On a loaded machine ``OMP_NUM_THREADS=1`` steadies the transformers figures.
Run: ``.venv/bin/python -m benchmarks.rollout_throughput [--prompts 8 --n 8 --tokens 128 --frames 16]
[--backends vllm hf hf_per_prompt]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("vllm", "hf", "hf_per_prompt")


def _requests(n_prompts: int, frames: int, size: int, processor: Any) -> list[Any]:
    from vt_ray.config.schema import PromptConfig
    from vt_ray.data.schema import VideoSample
    from vt_ray.prompts.chat import prompt_text
    from vt_ray.rollout.types import GenerationRequest

    rng = np.random.default_rng(0)
    out = []
    for i in range(n_prompts):
        sample = VideoSample(uid=f"b{i}", video="", question="Which colour appeared first?" + " Think." * (i % 3),
                             answer="A", options=["red", "green", "blue", "pink"])
        video = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
        meta = {"total_num_frames": frames, "fps": 2.0, "duration": frames / 2.0, "video_backend": "pyav",
                "frames_indices": list(range(frames)), "do_sample_frames": False}
        out.append(GenerationRequest(sample.uid, prompt_text(processor, sample, PromptConfig()), video, meta))
    return out


def _time(engines: dict[str, Any], requests: list[Any], sampling: Any, reps: int) -> dict[str, dict[str, Any]]:
    """Round-robin over the backends, so a change in the machine's load hits them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    tokens: dict[str, int] = {}
    for engine in engines.values():
        engine.generate(requests[:1], sampling)  # warm-up
    for _ in range(reps):
        for name, engine in engines.items():
            start = time.perf_counter()
            results = engine.generate(requests, sampling)
            seconds[name].append(time.perf_counter() - start)
            tokens[name] = sum(len(c.token_ids) for r in results for c in r.completions)
    figures = {}
    for name in engines:
        median = statistics.median(seconds[name])
        figures[name] = {"tokens": tokens[name], "seconds": seconds[name], "median_s": median,
                         "tok_per_s": tokens[name] / median}
    return figures


def _engine(name: str, model: Any, rollout: Any) -> Any:
    import dataclasses

    if name == "vllm":
        from vt_ray.rollout.vllm_engine import VllmEngine

        return VllmEngine(model, rollout)
    from vt_ray.rollout.hf_engine import HfEngine

    return HfEngine(model, dataclasses.replace(rollout, backend="hf", hf_batch_size=1 if name == "hf_per_prompt"
                                               else 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model-size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--out", default="outputs/bench/rollout_throughput.json")
    args = parser.parse_args()

    from transformers import AutoProcessor

    from vt_ray.config.schema import ModelConfig, RolloutConfig
    from vt_ray.models.tiny import make_tiny_model
    from vt_ray.rollout.types import SamplingSettings

    model_dir = make_tiny_model(Path(tempfile.mkdtemp()) / "model", size=args.model_size)
    processor = AutoProcessor.from_pretrained(model_dir)
    requests = _requests(args.prompts, args.frames, args.size, processor)
    model = ModelConfig(path=str(model_dir))
    rollout = RolloutConfig(max_model_len=4096, max_tokens=args.tokens, max_num_seqs=256)
    sampling = SamplingSettings(n=args.n, temperature=1.0, max_tokens=args.tokens, stop=[], seed=0,
                                min_tokens=args.tokens, ignore_eos=True)

    engines = {name: _engine(name, model, rollout) for name in args.backends}  # tiny: all fit at once
    figures = _time(engines, requests, sampling, args.reps)

    print(f"tiny Qwen2.5-VL ({args.model_size}), {args.prompts} prompts x n={args.n} x {args.tokens} tokens, "
          f"{args.frames} frames of {args.size}px, median of {args.reps}")
    for name, f in figures.items():
        print(f"  {name:13s} {f['tokens']:6d} tokens in {f['median_s']:6.2f} s = {f['tok_per_s']:8.0f} tok/s")
    ratios = {f"{a}/{b}": figures[a]["tok_per_s"] / figures[b]["tok_per_s"]
              for a, b in (("vllm", "hf"), ("hf", "hf_per_prompt"), ("vllm", "hf_per_prompt"))
              if a in figures and b in figures}
    for key, value in ratios.items():
        print(f"  generated tok/s ratio {key}: {value:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "figures": figures, "ratios": ratios}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
