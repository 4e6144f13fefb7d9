"""What ``learner.megatron.distributed_optimizer`` saves and costs: the Megatron learner (``MegatronWorker``, no
Ray) on ``--world`` gloo ranks at TP=1 (data-parallel replicas), per model size and dtype, with the plain optimizer
and with the distributed one, side by side in one run.

Per setting, per rank: the bytes it keeps for the optimizer (float32 masters that are not the model's own
parameters, AdamW's moments; read from the tensors themselves), and the median GRPO step time (``--steps`` after
one warm-up step) with the gradient norm of the last step (the two settings must agree). Ratios are what to read:
the machine is shared.

Run: ``PYTHONPATH=$PWD .venv/bin/python -m benchmarks.megatron_dist_optim`` (about two minutes at two ranks).
JSON: ``docs/megatron/dist_optim.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["learner.lr=1e-3", "learner.grad_clip=0.5", "learner.warmup_steps=0", "learner.reference=none",
             "learner.micro_batch_size=2", "learner.backend=megatron", "resources.cpus_per_node=64"]


def _rank(rank: int, port: int, world: int, models: dict[str, str], steps: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoProcessor

    from vt_ray.config.loader import load_config
    from vt_ray.config.roles import LearnerRoleConfig
    from vt_ray.learner.collate import collate
    from vt_ray.learner.megatron.backend import MegatronWorker
    from vt_ray.learner.megatron.parallel import destroy_model_parallel

    sys.path.insert(0, str(ROOT / "tests"))  # the tests' learner batches: video prompts with gold-trace responses
    from learner_examples import make_examples

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = []
    for size, model_dir in models.items():
        processor = AutoProcessor.from_pretrained(model_dir)
        batch = collate(processor, make_examples(processor, 2 * world, seed=1))
        batch.advantages = torch.linspace(-1, 1, 2 * world)
        shard = batch.split(world)[rank]
        for dtype in ("float32", "bfloat16"):
            for sliced in (False, True):
                cfg = load_config(None, [f"model.path={model_dir}", *OVERRIDES,
                                         f"resources.learner.num_workers={world}", f"learner.param_dtype={dtype}",
                                         f"learner.megatron.distributed_optimizer={sliced}"])
                worker = MegatronWorker(LearnerRoleConfig.of(cfg), rank, world)
                params = worker.setup(total_steps=steps + 1)
                shard.old_logprobs = worker.compute_logprobs(shard, 1, "policy")
                shard.ref_logprobs = shard.old_logprobs.clone()
                times, norm = [], 0.0
                for _ in range(steps + 1):
                    metrics = worker.train_step(shard, 1, "grpo")
                    times.append(metrics["step_time_s"])
                    norm = metrics["grad_norm"]
                if worker.dist_optim is not None:
                    kept = worker.dist_optim.local_bytes()
                else:
                    kept = {"masters": sum(m.numel() * 4 for _, m in worker.policy.masters.copies()),
                            "moments": sum(v.numel() * v.element_size() for s in worker.optimizer.state.values()
                                           for k, v in s.items() if k != "step")}
                rows.append({"size": size, "params": params, "dtype": dtype, "distributed_optimizer": sliced,
                             "rank": rank, **kept, "step_s": statistics.median(times[1:]), "grad_norm": norm})
                destroy_model_parallel()
    Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2, help="gloo ranks = data-parallel replicas (TP=1)")
    parser.add_argument("--sizes", default="tiny,small", help="vt_ray.models.tiny SIZES to build")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs/megatron/dist_optim.json"))
    args = parser.parse_args()

    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port
    from vt_ray.models.tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        models = {size: str(make_tiny_model(Path(tmp) / size, seed=0, size=size)) for size in args.sizes.split(",")}
        started = time.perf_counter()
        mp.start_processes(_rank, args=(free_port(), args.world, models, args.steps, tmp), nprocs=args.world,
                           start_method="spawn")
        rows = [row for r in range(args.world) for row in json.loads(Path(tmp, f"rank{r}.json").read_text())]
    print(f"{args.world} gloo ranks (DP={args.world}, TP=1), {time.perf_counter() - started:.0f} s")
    print(f"{'size':6} {'params':>10} {'dtype':9} {'dist':5} {'masters MB':>11} {'moments MB':>11} {'total MB':>9} "
          f"{'ratio':>6} {'step s':>7} {'grad norm':>10}")
    table = []
    for row in rows:
        if row["rank"] != 0:
            continue
        plain = next(r for r in rows if r["rank"] == 0 and r["size"] == row["size"] and r["dtype"] == row["dtype"]
                     and not r["distributed_optimizer"])
        total, base = row["masters"] + row["moments"], plain["masters"] + plain["moments"]
        row = {**row, "total": total, "ratio_to_plain": total / base,
               "step_ratio_to_plain": row["step_s"] / plain["step_s"]}
        table.append(row)
        print(f"{row['size']:6} {row['params']:>10,} {row['dtype']:9} {str(row['distributed_optimizer']):5} "
              f"{row['masters'] / 1e6:>11.2f} {row['moments'] / 1e6:>11.2f} {total / 1e6:>9.2f} "
              f"{row['ratio_to_plain']:>6.2f} {row['step_s']:>7.3f} {row['grad_norm']:>10.6f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"world": args.world, "steps": args.steps, "rank0": table,
                                          "all_ranks": rows}, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
