"""What context parallelism (``learner.megatron.context_parallel_size``) saves and costs per rank on this machine:
one forward and backward of a megatron-core ``GPTModel`` (Qwen2.5-VL's layer: RMSNorm, SwiGLU, GQA, multimodal
RoPE; float32, TP=1) on two gloo processes, at CP=1 (each process the whole sequence: two data-parallel replicas
of the same batch) and at CP=2 (each process its two chunks of the sequence, keys and values all-gathered in
attention), in one run.

Per layout and rank: the bytes the forward keeps for backward (autograd's pack hook, each storage once,
parameters left out), the median forward+backward time (the layouts' blocks alternated, CP=1, CP=2, CP=1, CP=2:
megatron's groups are rebuilt for each), and the largest difference of the CP=2 gradients summed over the two
ranks from CP=1's (float noise at most). Ratios are what to read: the machine is shared, and two processes on two
cores run CP=2's halves in parallel only when nothing else runs.

Run: ``PYTHONPATH=$PWD .venv/bin/python -m benchmarks.megatron_context`` (about a minute). JSON:
``docs/megatron/context.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.megatron_recompute import build, saved_mib, step

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def _step(lm: Any, ids: Any, positions: Any) -> float:
    """One forward and backward (the mean next-token NLL over the whole sequence, gathered over CP)."""
    from vt_ray.learner.megatron.cpu import sequence_parallel_on_cpu

    return step(lm, ids, positions, cpu_fix=sequence_parallel_on_cpu)


def _saved_mib(lm: Any, ids: Any, positions: Any) -> float:
    from vt_ray.learner.megatron.cpu import sequence_parallel_on_cpu

    return saved_mib(lm, ids, positions, sequence_parallel_on_cpu)


def _rank(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from vt_ray.learner.megatron.parallel import destroy_model_parallel, init_model_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    positions = torch.arange(args.seq).expand(3, args.batch, args.seq)
    rows: dict[int, dict[str, Any]] = {}
    times: dict[int, list[float]] = {1: [], 2: []}
    grads: dict[int, dict[str, Any]] = {}
    for block in range(2):
        for cp in (1, 2):
            init_model_parallel(context_parallel=cp)
            lm = build("none", args)
            if block == 0:
                rows[cp] = {"cp": cp, "saved_mib": _saved_mib(lm, ids, positions)}
                grads[cp] = {n: p.grad.clone() for n, p in lm.named_parameters()}
                if cp == 2:  # each rank's gradient is its own tokens': the sum is the whole sequence's
                    for grad in grads[cp].values():
                        dist.all_reduce(grad)
            times[cp] += [_step(lm, ids, positions) for _ in range(args.reps)]
            destroy_model_parallel()
    for cp, row in rows.items():
        row["step_s"] = statistics.median(times[cp])
    rows[2]["grad_max_abs_diff"] = max((grads[2][k] - g).abs().max().item() for k, g in grads[1].items())
    for row in rows.values():
        row.update(saved_vs_cp1=row["saved_mib"] / rows[1]["saved_mib"], time_vs_cp1=row["step_s"] / rows[1]["step_s"])
    gathered: list[Any] = [None] * WORLD
    dist.all_gather_object(gathered, list(rows.values()))
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=704)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/megatron/context.json")
    args = parser.parse_args(argv)

    import tempfile

    import torch
    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port

    with tempfile.TemporaryDirectory() as tmp:
        report = str(Path(tmp) / "rows.json")
        mp.spawn(_rank, args=(args, free_port(), report), nprocs=WORLD, join=True)
        ranks = json.loads(Path(report).read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "torch": torch.__version__, "ranks": ranks}, indent=1) + "\n")
    print(f"megatron-core GPTModel, {args.layers} layers, hidden {args.hidden}, seq {args.seq} x batch {args.batch}, "
          f"float32, TP=1, {WORLD} gloo processes on CPU")
    print("| rank | CP | saved for backward MiB | vs CP=1 | fwd+bwd s (median) | vs CP=1 | summed grads vs CP=1 |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for rank, rows in enumerate(ranks):
        for r in rows:
            diff = f"{r['grad_max_abs_diff']:.1e}" if "grad_max_abs_diff" in r else ""
            print(f"| {rank} | {r['cp']} | {r['saved_mib']:.1f} | {r['saved_vs_cp1']:.2f} | {r['step_s']:.2f} | "
                  f"{r['time_vs_cp1']:.2f} | {diff} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
