"""By-hand four-rank runs of ``learner.megatron.distributed_optimizer`` (docs/megatron.md, "The distributed
optimizer"; the suite runs DP=2 in test_megatron_lm.py). Four gloo ranks spawned without Ray, the Megatron worker
on each, at a layout with two data-parallel replicas: the plain optimizer and the distributed one take the same
three steps (GRPO, GRPO, SFT; a 1000-element bucket, so the reduce-scatter and all-gather run in many buckets
with parameters cut across them), the distributed run saves a checkpoint after its first step, and a third
run at TP=1 x DP=4 (distributed optimizer) loads it and takes the last two steps again.

    PYTHONPATH=$PWD .venv/bin/python tests/integration/learner/manual_megatron_dist_optim.py tp2dp2 float32
    PYTHONPATH=$PWD .venv/bin/python tests/integration/learner/manual_megatron_dist_optim.py pp2dp2 bfloat16

``tp2dp2``: TP=2 with sequence parallelism x DP=2 (TP-partitioned and replicated parameters in the norm);
``pp2dp2``: PP=2 x DP=2 on a model with tied embeddings (the last stage's ``shared`` copy left out of the norm,
the two copies kept equal); ``tp2dp2_vision``: TP=2 x DP=2 with the Megatron vision tower (TP-split too; its
resume at TP=1 x DP=4 loads it with the Megatron tower too). Prints the figures; exits 1 when plain and
distributed differ by more than 1e-6.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

WORLD = 4
OVERRIDES = ["learner.lr=1e-3", "learner.grad_clip=0.5", "learner.warmup_steps=0", "learner.reference=none",
             "learner.micro_batch_size=2", "algorithm.entropy_coef=0.01", "learner.backend=megatron",
             f"resources.learner.num_workers={WORLD}", "resources.cpus_per_node=16"]
LAYOUTS = {"tp2dp2": ["learner.megatron.tensor_parallel_size=2", "learner.megatron.sequence_parallel=true"],
           "pp2dp2": ["learner.megatron.pipeline_parallel_size=2"],
           "tp2dp2_vision": ["learner.megatron.tensor_parallel_size=2", "learner.megatron.vision_impl=megatron"]}
DISTRIBUTED = "learner.megatron.distributed_optimizer=true"


def _worker(rank: int, model_dir: str, extra: list[str]) -> Any:
    from vt_ray.config.loader import load_config
    from vt_ray.config.roles import LearnerRoleConfig
    from vt_ray.learner.megatron.backend import MegatronWorker

    worker = MegatronWorker(LearnerRoleConfig.of(load_config(None, [f"model.path={model_dir}", *OVERRIDES, *extra])),
                            rank, WORLD)
    worker.setup(total_steps=4)
    if worker.dist_optim is not None:
        worker.dist_optim.bucket = 1000
    return worker


def _rank_main(rank: int, port: int, model_dir: str, out: str, layout: str, dtype: str) -> None:
    import torch.distributed as dist
    from transformers import AutoProcessor

    from learner_examples import make_examples
    from vt_ray.learner.collate import collate
    from vt_ray.learner.megatron.parallel import destroy_model_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    processor = AutoProcessor.from_pretrained(model_dir)
    batch = collate(processor, make_examples(processor, 8, seed=1))
    batch.advantages = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.5, -0.25, 1.0, -1.0])
    shard = batch.split(WORLD)[rank]
    assert shard is not None
    runs: dict[str, Any] = {}
    base = [f"learner.param_dtype={dtype}"]
    for name, extra in (("plain", LAYOUTS[layout]), ("distributed", [*LAYOUTS[layout], DISTRIBUTED]),
                        ("dp4_resumed", [DISTRIBUTED, *(e for e in LAYOUTS[layout] if "vision_impl" in e)])):
        worker = _worker(rank, model_dir, base + extra)
        if name == "dp4_resumed":
            assert worker.load_checkpoint(str(Path(out) / "ckpt")) == {"data_position": 1}
            steps = [worker.train_step(shard, 1, loss) for loss in ("grpo", "sft")]
        else:
            shard.old_logprobs = worker.compute_logprobs(shard, 1, "policy")
            shard.ref_logprobs = shard.old_logprobs.clone()
            steps = [worker.train_step(shard, 1, "grpo")]
            if name == "distributed":
                worker.save_checkpoint(str(Path(out) / "ckpt"), {"data_position": 1})
            steps += [worker.train_step(shard, 1, loss) for loss in ("grpo", "sft")]
        runs[name] = {"steps": steps, "export": worker.export_state_dict("float32"),
                      "bytes": worker.dist_optim.local_bytes() if worker.dist_optim is not None else None}
        destroy_model_parallel()
    torch.save(runs, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main() -> int:
    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port
    from vt_ray.models.tiny import make_tiny_model

    layout, dtype = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "float32"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: learner_examples for the spawned ranks
    out = Path(tempfile.mkdtemp(prefix="dist_optim_"))
    try:
        model_dir = make_tiny_model(out / "model", seed=1, tie_embeddings=layout == "pp2dp2")
        started = time.perf_counter()
        mp.start_processes(_rank_main, args=(free_port(), str(model_dir), str(out), layout, dtype), nprocs=WORLD,
                           start_method="spawn")
        runs = torch.load(out / "rank0.pt", weights_only=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    plain, sliced, resumed = runs["plain"], runs["distributed"], runs["dp4_resumed"]
    print(f"{layout} {dtype}: {time.perf_counter() - started:.0f} s")
    for i, (a, b) in enumerate(zip(plain["steps"], sliced["steps"])):
        print(f"  step {i}: loss {a['loss']:.9f} / {b['loss']:.9f}, "
              f"grad norm {a['grad_norm']:.9f} / {b['grad_norm']:.9f}")
    weights = _max_diff(plain["export"], sliced["export"])
    print(f"  weights after three steps, plain vs distributed: max |diff| {weights:.2e}")
    print("  resumed at TP=1 x DP=4:", [(f"{s['loss']:.9f}", f"{s['grad_norm']:.9f}") for s in resumed["steps"]],
          f"weights {_max_diff(resumed['export'], sliced['export']):.2e} from the distributed run's")
    print("  rank 0 bytes:", sliced["bytes"], "at DP=2;", resumed["bytes"], "at DP=4")
    same = weights <= 1e-6 and all(abs(a["grad_norm"] - b["grad_norm"]) <= 1e-6 * a["grad_norm"]
                                   for a, b in zip(plain["steps"], sliced["steps"]))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
