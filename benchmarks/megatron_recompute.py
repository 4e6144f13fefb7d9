"""What megatron's activation recompute (``learner.activation_checkpointing`` with ``learner.backend: megatron``)
saves and costs on this machine: one forward and backward of a megatron-core ``GPTModel`` (Qwen2.5-VL's layer:
RMSNorm, SwiGLU, GQA, multimodal RoPE; float32, TP=1 in one gloo process) without recompute, with ``full``
(every layer, uniform, one layer per unit) and with ``selective`` (core attention), side by side in one run.

Per mode: the bytes the forward keeps for backward (autograd's pack hook, each storage once, parameters left
out: the activations themselves; a process's RSS would not show them, the allocator keeps what an earlier mode
freed), the median forward+backward time (the modes' steps interleaved), and the largest gradient difference
from the run without recompute (it must be float noise at most). Ratios against ``none`` are what to read: the
machine is shared.

Run: ``PYTHONPATH=$PWD .venv/bin/python -m benchmarks.megatron_recompute`` (about a minute). JSON:
``docs/megatron/recompute.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "full", "selective")


def _shape(args: argparse.Namespace) -> Any:
    from vt_ray.learner.megatron.model import TextShape

    head_dim = args.hidden // args.heads
    unit = head_dim // 16  # mrope sections (t, h, w) over head_dim / 2 rotary pairs, split 2:3:3 as Qwen2.5-VL
    return TextShape(vocab=args.vocab, hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                     heads=args.heads, kv_heads=args.kv_heads, head_dim=head_dim, rms_eps=1e-6, rope_theta=1e6,
                     mrope_section=(unit * 2, unit * 3, unit * 3), tie_embeddings=False,
                     max_positions=args.seq)


def build(mode: str, args: argparse.Namespace) -> Any:
    """The model with ``mode``'s recompute, the same weights in every mode (megatron's init is a no-op here:
    see vt_ray/learner/megatron/model.py)."""
    import torch

    from vt_ray.learner.megatron import model

    recompute = None if mode == "none" else model.Recompute(mode)
    lm = model.build_language_model(_shape(args), recompute=recompute).train()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0, 0.02)
    return lm


def step(lm: Any, ids: Any, positions: Any, pack: Any = None, cpu_fix: Any = None) -> float:
    """One forward and backward (gradients left in ``lm``); with ``pack``, autograd's saved tensors go through it.
    ``cpu_fix``: the context the pass runs in (default ``cpu.recompute_on_cpu``)."""
    import torch

    from vt_ray.learner.megatron import logprobs
    from vt_ray.learner.megatron.cpu import recompute_on_cpu

    lm.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with (cpu_fix or recompute_on_cpu)():
        if pack is None:
            loss = -logprobs.next_token_logprobs(lm, ids, positions).mean()
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = -logprobs.next_token_logprobs(lm, ids, positions).mean()
        loss.backward()
    return time.perf_counter() - started


def saved_mib(lm: Any, ids: Any, positions: Any, cpu_fix: Any = None) -> float:
    """MiB the forward keeps for backward: each storage once, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in lm.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    step(lm, ids, positions, pack, cpu_fix)
    return sum(saved.values()) / 2**20


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every mode's saved bytes and gradients, then ``reps`` timed steps per mode, interleaved (a noisy
    machine slows all modes alike)."""
    import torch

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    positions = torch.arange(args.seq).expand(3, args.batch, args.seq)
    models = {mode: build(mode, args) for mode in MODES}
    rows = {mode: {"mode": mode, "saved_mib": saved_mib(lm, ids, positions)} for mode, lm in models.items()}
    grads = {mode: {n: p.grad.clone() for n, p in lm.named_parameters()} for mode, lm in models.items()}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.reps):
        for mode, lm in models.items():
            times[mode].append(step(lm, ids, positions))
    base = rows["none"]
    for mode, row in rows.items():
        row["step_s"] = statistics.median(times[mode])
        row["grad_max_abs_diff"] = max((grads[mode][k] - g).abs().max().item() for k, g in grads["none"].items())
    for row in rows.values():
        row.update(saved_vs_none=row["saved_mib"] / base["saved_mib"], time_vs_none=row["step_s"] / base["step_s"])
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=704)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/megatron/recompute.json")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    from vt_ray.learner.megatron.parallel import destroy_model_parallel, init_model_parallel
    from vt_ray.learner.rendezvous import free_port

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    init_model_parallel()
    try:
        rows = measure(args)
    finally:
        destroy_model_parallel()
        dist.destroy_process_group()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(f"megatron-core GPTModel, {args.layers} layers, hidden {args.hidden}, seq {args.seq} x batch {args.batch}, "
          "float32, TP=1, CPU")
    print("| recompute | saved for backward MiB | vs none | fwd+bwd s (median) | vs none | grad max diff |\n"
          "|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['saved_mib']:.1f} | {r['saved_vs_none']:.2f} | {r['step_s']:.2f} | "
              f"{r['time_vs_none']:.2f} | {r['grad_max_abs_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
