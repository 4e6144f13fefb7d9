"""The Qwen2.5-VL vision tower in Megatron (``learner.megatron.vision_impl: megatron``) against the Hugging Face
tower (``hf``, what the Megatron learner runs otherwise, replicated on every TP rank), side by side in one run.

A random tower larger than the test model's (default: 4 blocks, hidden 256, 4 heads, SwiGLU width 512, the last
block full attention, 112-pixel windows) on one video of 2 x 32 x 32 patches (512 merged tokens, 16 windows a
frame). Two gloo processes: first TP=1 (each process runs both towers), then TP=2 (the Megatron tower split
over the two, the HF tower whole on each). Per layout and tower: the parameters each rank holds, the median
forward + backward time (the towers' steps interleaved), and the Megatron tower's largest feature and gradient
(in HF names) difference from the HF tower's. Ratios are what to read: the machine is shared.

Run: ``PYTHONPATH=$PWD .venv/bin/python -m benchmarks.megatron_vision`` (under a minute). JSON:
``docs/megatron/vision.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def hf_config(args: argparse.Namespace) -> Any:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": 151936,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}},
        vision_config={"depth": args.depth, "hidden_size": args.hidden, "intermediate_size": args.intermediate,
                       "num_heads": args.heads, "out_hidden_size": 128, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [args.depth - 1],
                       "hidden_act": "silu"})


def _step(tower: Any, pixels: Any, grid: Any) -> tuple[float, Any]:
    import torch

    tower.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = tower(pixels, grid_thw=grid)
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    (out.float() ** 2).mean().backward()
    return time.perf_counter() - start, out.detach().clone() if isinstance(out, torch.Tensor) else out


def _hf_named_grads(tower: Any, bridge: Any) -> dict[str, Any]:
    """The Megatron tower's gradients merged over TP and in HF names (the export code, each parameter's data
    swapped for its gradient)."""
    from vt_ray.learner.megatron import weights
    from vt_ray.learner.megatron.vision import PREFIX

    held = {p: p.data for p in tower.parameters()}
    try:
        for p in tower.parameters():
            p.data = p.grad
        return dict(weights.export_hf_weights(tower, bridge, PREFIX))
    finally:
        for p, data in held.items():
            p.data = data


def _rank(rank: int, port: int, args: argparse.Namespace, model_dir: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from vt_ray.learner.megatron import parallel, vision, weights

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    config = hf_config(args)
    config.vision_config._attn_implementation = "sdpa"
    hf = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)
    hf.load_state_dict({k.removeprefix("visual."): v for k, v in
                        torch.load(Path(model_dir) / "visual.pt", weights_only=True).items()})
    grid = torch.tensor([[2, args.grid, args.grid]])
    pixels = torch.randn(int(grid.prod()), 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    rows = []
    for tp in (1, 2):
        parallel.init_model_parallel(tensor_parallel=tp)
        bridge = weights.make_bridge(config)
        meg = vision.build_vision_model(config, tp)
        weights.load_hf_weights(meg, bridge, weights.HfCheckpoint(model_dir), vision.PREFIX)
        towers = {"hf": hf, "megatron": meg}
        times: dict[str, list[float]] = {name: [] for name in towers}
        outs = {}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, tower in towers.items():
                elapsed, outs[name] = _step(tower, pixels, grid)
                times[name].append(elapsed)
        grads = _hf_named_grads(meg, bridge)
        hf_grads = {f"visual.{n}": p.grad for n, p in hf.named_parameters()}
        grad_diff = max((grads[k] - hf_grads[k]).abs().max().item() for k in hf_grads)
        for name, tower in towers.items():
            rows.append({"tp": tp, "tower": name, "params_per_rank": sum(p.numel() for p in tower.parameters()),
                         "fwd_bwd_s": statistics.median(times[name][1:]),
                         "feature_diff": (outs[name] - outs["hf"]).abs().max().item(),
                         "feature_scale": outs["hf"].abs().max().item(),
                         "grad_diff": grad_diff if name == "megatron" else 0.0,
                         "grad_scale": max(g.abs().max().item() for g in hf_grads.values())})
        parallel.destroy_model_parallel()
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.multiprocessing as mp
    from safetensors.torch import save_file
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from vt_ray.learner.rendezvous import free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--grid", type=int, default=32, help="patches per frame side (2 frames)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/megatron/vision.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = hf_config(args)
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)
        with torch.no_grad():
            for p in tower.parameters():  # random weights of a trained tower's scale (the init leaves norms at 1)
                p.normal_(0, 0.05).add_(1.0 if p.dim() == 1 and p.numel() == args.hidden else 0.0)
        state = {f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}
        save_file(state, str(Path(tmp) / "model.safetensors"))
        torch.save(state, Path(tmp) / "visual.pt")
        result = Path(tmp) / "rows.json"
        mp.start_processes(_rank, args=(free_port(), args, tmp, str(result)), nprocs=2, start_method="spawn")
        rows = json.loads(result.read_text())
    base = {r["tp"]: r for r in rows if r["tower"] == "hf"}
    print(f"{'TP':>3} {'tower':>9} {'params/rank':>12} {'vs hf':>6} {'fwd+bwd s':>10} {'vs hf':>6} "
          f"{'features |diff| (of max)':>25} {'grads |diff| (of max)':>22}")
    for r in rows:
        b = base[r["tp"]]
        print(f"{r['tp']:>3} {r['tower']:>9} {r['params_per_rank']:>12,} "
              f"{r['params_per_rank'] / b['params_per_rank']:>6.2f} "
              f"{r['fwd_bwd_s']:>10.3f} {r['fwd_bwd_s'] / b['fwd_bwd_s']:>6.2f} "
              f"{r['feature_diff']:>15.1e} ({r['feature_scale']:.1e}) {r['grad_diff']:>12.1e} ({r['grad_scale']:.1e})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
