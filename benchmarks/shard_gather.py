"""How to gather a weight-stream bucket's FSDP2 shards onto learner rank 0 over gloo: the primitives compared.

    .venv/bin/python -m benchmarks.shard_gather [--layers 14] [--bucket-mb 64] [--reps 2]

Two processes (a gloo group of two, as the two CPU learner ranks) hold ``--layers`` text layers of the 0p3b
benchmark model's shapes (``benchmarks/weight_sync.py``), float32, ``Shard(0)`` DTensors as FSDP2 shards them,
planned into ``--bucket-mb`` buckets. Timed on rank 0, per repetition, in turn:

* ``per_tensor``: one ``DTensor.full_tensor()`` all-gather per tensor (the earlier sender);
* ``flat_all_gather`` / ``flat_gather``: each bucket's local shards packed into one flat buffer per rank, then one
  ``all_gather_into_tensor`` / one ``gather`` to rank 0 (the obvious "one collective per bucket");
* ``shard_gatherer``: :class:`vt_ray.learner.shard_gather.ShardGatherer`, what the sender uses (point-to-point
  messages to rank 0 into a reused staging buffer, the next bucket's posted first).

Prints a table and writes ``OUT/shard_gather.json``; the result is checked bit for bit against the full tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODES = ("per_tensor", "flat_all_gather", "flat_gather", "shard_gatherer")


def _layer_shapes(layers: int) -> list[tuple[int, ...]]:
    """0p3b's text layer: hidden 1024, intermediate 4096, 8 KV heads of 128 (weights and biases)."""
    one = [(1024, 1024), (1024,), (256, 1024), (256,), (256, 1024), (256,), (1024, 1024), (4096, 1024),
           (4096, 1024), (1024, 4096), (1024,), (1024,)]
    return [shape for _ in range(layers) for shape in one]


def _flat(buckets: list[list[Any]], mode: str, rank: int, group: Any) -> None:
    for bucket in buckets:
        chunks = [-(-t.shape[0] // 2) * (t.numel() // t.shape[0]) * 4 for t in bucket]
        flat = torch.zeros(sum(chunks), dtype=torch.uint8)
        offset = 0
        for tensor, size in zip(bucket, chunks, strict=True):
            local = tensor.to_local().reshape(-1).view(torch.uint8)
            flat[offset: offset + local.numel()].copy_(local)
            offset += size
        if mode == "flat_all_gather":
            dist.all_gather_into_tensor(torch.empty(2 * flat.numel(), dtype=torch.uint8), flat, group=group)
        else:
            out = [torch.empty_like(flat) for _ in range(2)] if rank == 0 else None
            dist.gather(flat, out, group_dst=0, group=group)


def _run(rank: int, args: argparse.Namespace, port: int, out: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from vt_ray.common.weight_stream import plan_buckets
    from vt_ray.learner.shard_gather import ShardGatherer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    gen = torch.Generator().manual_seed(0)
    full = {f"t{i}": torch.randn(shape, generator=gen) for i, shape in enumerate(_layer_shapes(args.layers))}
    state = {name: distribute_tensor(t, mesh, [Shard(0)]) for name, t in full.items()}
    plan = plan_buckets([(n, tuple(t.shape), "float32") for n, t in full.items()], int(args.bucket_mb * 2**20))
    buckets = [[state[s.name] for s in b.tensors] for b in plan.buckets]
    nbytes = sum(t.numel() * 4 for t in full.values())
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.reps):
        for mode in MODES:
            dist.barrier()
            start = time.perf_counter()
            if mode == "per_tensor":
                for bucket in buckets:
                    for sharded in bucket:
                        sharded.full_tensor()
            elif mode.startswith("flat"):
                _flat(buckets, mode, rank, mesh.get_group())
            else:
                gatherer = ShardGatherer(state, plan, mesh, torch.device("cpu"))
                for b in plan.buckets:
                    names = [s.name for s in b.tensors]
                    for name, gathered in zip(names, gatherer(names), strict=True):
                        if rank == 0 and not torch.equal(gathered, full[name]):
                            raise AssertionError(f"{name} differs after the gather")
            times[mode].append(time.perf_counter() - start)
    if rank == 0:
        result = {"layers": args.layers, "bytes": nbytes, "buckets": len(plan.buckets), "bucket_mb": args.bucket_mb,
                  "load_average": os.getloadavg(), "seconds": times,
                  "gb_per_s": {m: nbytes / statistics.median(t) / 1e9 for m, t in times.items()}}
        out.mkdir(parents=True, exist_ok=True)
        (out / "shard_gather.json").write_text(json.dumps(result, indent=1))
        print(f"{nbytes / 1e9:.2f} GB in {len(plan.buckets)} buckets, load average {os.getloadavg()[0]:.1f}")
        print(f"{'mode':>16} {'median s':>9} {'GB/s':>6}  all s")
        for mode, t in times.items():
            print(f"{mode:>16} {statistics.median(t):9.3f} {result['gb_per_s'][mode]:6.2f}  "
                  f"{' '.join(f'{x:.2f}' for x in t)}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--bucket-mb", type=float, default=64.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench/shard_gather")
    args = parser.parse_args()
    from vt_ray.learner.rendezvous import free_port

    mp.spawn(_run, args=(args, free_port(), Path(args.out)), nprocs=2)


if __name__ == "__main__":
    main()
