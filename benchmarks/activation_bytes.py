"""The bytes one learner micro-batch saves for backward, counted exactly, against the planner's activation term.

A learner rank's peak RSS mixes the activations with the allocator's caching and the process's own memory;
autograd's saved tensors are the activations themselves. This runs one forward of the policy as the learner
does (float32, ``logits_to_keep`` at the response, each distinct video encoded once, ``use_cache=False``) on
``b`` rows sharing one 224 x 224 synthetic video (a GRPO group), and counts every tensor storage saved for
backward once (parameters excluded), split into the vision tower's and the rest, plus the float32 log-softmax
of the response logits that the loss adds; and the process's peak RSS above its resting RSS through that forward
and through a backward after it (what a CPU process needs beyond the saved tensors: their gradients, the
parameters' gradients, the allocator). Next to it: :mod:`vt_ray.cluster.planner`'s activation term for the
same model, sequence length and micro batch (docs/scaling.md).

Run: ``PYTHONPATH=$PWD .venv/bin/python -m benchmarks.activation_bytes`` (after ``benchmarks.scaling`` built the
models; a minute or two). JSON: ``docs/scaling/activation_bytes.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _inputs(model_dir: Path, frames: int, rows: int, text_tokens: int, response: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    video = np.random.default_rng(0).integers(0, 255, (frames, 224, 224, 3), dtype=np.uint8)
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
    enc = processor(text=[text] * rows, videos=[video] * rows, return_tensors="pt", do_sample_frames=False,
                    video_metadata=[{"fps": 2.0, "total_num_frames": frames, "frames_indices": list(range(frames))}]
                    * rows)
    vocab = json.loads((model_dir / "config.json").read_text())["text_config"]["vocab_size"]
    # the question's text and the response: ordinary token ids (the planner sees only their count)
    tail = torch.randint(20, vocab - 1, (rows, text_tokens + response), generator=torch.Generator().manual_seed(0))
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        extra = tail if key == "input_ids" else (torch.ones_like(tail) if key == "attention_mask"
                                                 else torch.zeros_like(tail))
        if key in enc:
            enc[key] = torch.cat([enc[key], extra], dim=1)
    return dict(enc)


def saved_bytes(model_dir: Path, frames: int, rows: int, text_tokens: int, response: int) -> dict[str, Any]:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vt_ray.learner.vision_dedup import install_video_dedup

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).train()
    model.config.use_cache = False
    install_video_dedup(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inputs = _inputs(model_dir, frames, rows, text_tokens, response)
    where = ["text"]
    saved: dict[str, dict[int, int]] = {"text": {}, "vision": {}}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:
            saved[where[-1]][ptr] = max(saved[where[-1]].get(ptr, 0), storage.nbytes())
        return t

    visual = model.model.visual
    visual.register_forward_pre_hook(lambda *_: where.append("vision"))  # hooks returning None change nothing
    visual.register_forward_hook(lambda *_: where.pop() and None)
    from benchmarks.weight_sync import read_peak, reset_peak

    rest = reset_peak()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**inputs, use_cache=False, logits_to_keep=response + 1)
        logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # what the loss takes, as the learner does
    forward_peak = read_peak() - rest
    logp[..., 0].sum().backward()  # the process's peak through backward: saved tensors + their gradients + grads
    backward_peak = read_peak() - rest
    grads = sum(p.numel() * p.element_size() for p in model.parameters())
    seq = inputs["input_ids"].shape[1]
    vision_only = set(saved["vision"])
    text = sum(n for p, n in saved["text"].items() if p not in vision_only)
    return {"frames": frames, "rows": rows, "seq": seq, "patches": int(inputs["video_grid_thw"][0].prod()),
            "vision_saved_gib": sum(saved["vision"].values()) / 2**30, "text_saved_gib": text / 2**30,
            "logsoftmax_gib": logp.numel() * logp.element_size() / 2**30,
            "rss_forward_peak_gib": forward_peak / 2**30, "rss_backward_peak_gib": backward_peak / 2**30,
            "param_grads_gib": grads / 2**30}


def planned(model_dir: Path, frames: int, rows: int, seq: int, response: int) -> dict[str, float]:
    """The planner's activation term for the same shapes (its GPU layout, float32 compute), its vision part, and
    the vision formula it had before this comparison (16 h_v per block, one video per row)."""
    from vt_ray.cluster.model_shapes import resolve_shape
    from vt_ray.cluster.planner import plan_memory, videos_per_micro_batch, vision_activation_bytes
    from vt_ray.config.loader import load_config

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", [
        f"model.path={model_dir}", "resources.gpus_per_node=3", "resources.learner.gpus_per_worker=1",
        "resources.rollout.gpus_per_worker=1", f"data.max_prompt_tokens={seq - response}",
        f"rollout.max_tokens={response}", f"video.max_frames={frames}", "video.max_pixels=50176",
        f"rollout.n={rows}",
    ])
    total = next(t.gib for b in plan_memory(cfg, micro_batch=rows).budgets for t in b.terms
                 if t.name == "activations")
    shape, _ = resolve_shape(str(model_dir), "")
    vision = vision_activation_bytes(cfg, shape, rows, 4, False) / 2**30
    patches = frames // shape.temporal_patch * (50176 // shape.patch**2)
    before = 4 * 16 * shape.vision_depth * patches * rows * shape.vision_hidden / 2**30
    videos = videos_per_micro_batch(cfg, rows)  # the bound for groups of n = rows: 2 (a misaligned micro-batch)
    return {"plan_activations_gib": total, "plan_text_and_logits_gib": total - vision, "plan_vision_gib": vision,
            "plan_videos": videos, "plan_vision_per_video_gib": vision / videos,
            "plan_vision_before_gib": before, "plan_vision_before_per_video_gib": before / rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs/bench/scaling")
    parser.add_argument("--cases", nargs="+", default=["small:8", "small:16", "small:32", "tiny:8", "0p1b:8"],
                        help="size:frames")
    parser.add_argument("--rows", type=int, default=4, help="micro batch: rows sharing one video")
    parser.add_argument("--text-tokens", type=int, default=236)
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/scaling/activation_bytes.json")
    args = parser.parse_args(argv)
    rows = []
    if len(args.cases) > 1:  # one process per case: a process's peak RSS counts only its first case's memory
        import subprocess
        import sys
        import tempfile

        for case in args.cases:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "one.json"
                subprocess.run([sys.executable, "-m", "benchmarks.activation_bytes", "--cases", case, "--work",
                                str(args.work), "--rows", str(args.rows), "--text-tokens", str(args.text_tokens),
                                "--response", str(args.response), "--out", str(out)], check=True)
                rows += json.loads(out.read_text())["rows"]
    for case in args.cases if len(args.cases) == 1 else []:
        size, frames = case.split(":")
        model_dir = args.work / f"model_{size}"
        got = saved_bytes(model_dir, int(frames), args.rows, args.text_tokens, args.response)
        got.update(size=size, **planned(model_dir, int(frames), args.rows, got["seq"], args.response))
        got["measured_gib"] = got["vision_saved_gib"] + got["text_saved_gib"] + got["logsoftmax_gib"]
        rows.append(got)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in got.items()}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "rows": rows}, indent=1) + "\n")
    print("| model | frames | rows | seq | text + log-softmax saved GiB | planned GiB | vision saved GiB (1 video) | "
          "planned per video GiB | planned per video before GiB | all saved GiB | planned GiB | "
          "measured/planned | RSS peak forward GiB | RSS peak backward GiB |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['frames']} | {r['rows']} | {r['seq']} | "
              f"{r['text_saved_gib'] + r['logsoftmax_gib']:.3f} | {r['plan_text_and_logits_gib']:.3f} | "
              f"{r['vision_saved_gib']:.3f} | {r['plan_vision_per_video_gib']:.3f} | "
              f"{r['plan_vision_before_per_video_gib']:.3f} | "
              f"{r['measured_gib']:.3f} | {r['plan_activations_gib']:.3f} | "
              f"{r['measured_gib'] / r['plan_activations_gib']:.2f} | {r['rss_forward_peak_gib']:.3f} | "
              f"{r['rss_backward_peak_gib']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
