"""By hand, CPU only: ``learner.megatron.optimizer_impl: megatron`` (megatron-core's DDP + DistributedOptimizer,
vt_ray/learner/megatron/megatron_optim.py) run over gloo with CUDA **faked**, against ``optimizer_impl: vt_ray``.
NOT a GPU run: a check of our plumbing and semantics (the DP sum, lr schedule, weight decay, clipping, export,
checkpoint save and resume) on megatron's own code. docs/megatron.md has the figures.

    PYTHONPATH=$PWD .venv/bin/python tests/integration/learner/manual_megatron_optim_fake_cuda.py float32
    PYTHONPATH=$PWD .venv/bin/python tests/integration/learner/manual_megatron_optim_fake_cuda.py bfloat16
    WORLD=4 PYTHONPATH=$PWD .venv/bin/python tests/integration/learner/manual_megatron_optim_fake_cuda.py float32 \\
        learner.megatron.tensor_parallel_size=2 learner.megatron.sequence_parallel=true

The fakes (each only around the megatron run): a ``TorchFunctionMode`` that turns ``device='cuda'`` into the
CPU, ``Tensor.type()`` answering ``torch.cuda.*`` names (megatron's parameter-type checks),
``torch.cuda.current_device`` / ``synchronize`` / ``Tensor.cuda`` as no-ops, ``require_cuda`` off. Without TE or
apex megatron steps torch's AdamW, whose resume megatron-core 0.16.1 mishandles (``MegatronOptimizer.
_refuse_torch_adam_resume`` refuses it): here the load is patched as TE's path would behave (the missing
``step`` skipped in the state copy, one ``step`` tensor per parameter), so the resume can be checked.

``OVERLAP=1``: megatron's runs with ``learner.megatron.overlap_grad_reduce`` (its bucket collectives started
from the backward hooks, asynchronously; the CUDA stream faked too).

Ranks: ``WORLD`` (default 2) gloo ranks (``TIED=1``: a model with tied embeddings); the layout's overrides as
arguments (the rest is data parallel). Three steps per run (GRPO, GRPO, SFT; lr warmup over 2 steps, clipping at
0.5) with the vt_ray optimizer, with megatron's (a checkpoint after the first step), and megatron's again
resumed from that checkpoint for the last two steps; then ``optimizer_impl: vt_ray`` must refuse that checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

WORLD = int(os.environ.get("WORLD", "2"))
TIED = os.environ.get("TIED") == "1"  # a model with tied embeddings (the last pipeline stage's copy)
OVERLAP = os.environ.get("OVERLAP") == "1"  # megatron's run with learner.megatron.overlap_grad_reduce


class _Stream:
    """A CUDA stream that is not one (``OVERLAP``: megatron's DDP runs its bucket collectives on its own stream)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass


class CpuForCuda(TorchFunctionMode):
    """``device='cuda'`` (or a device index) in any torch call means the CPU."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        device = kwargs.get("device")
        if device is not None and (str(device).startswith("cuda") or isinstance(device, int)):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


_REAL_TYPE = torch.Tensor.type


def _cuda_type(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    out = _REAL_TYPE(self, *args, **kwargs)
    if not args and not kwargs and isinstance(out, str) and ".cuda." not in out:
        return out.replace("torch.", "torch.cuda.", 1)
    return out


@contextlib.contextmanager
def fake_cuda() -> Iterator[None]:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    from vt_ray.learner.megatron import megatron_optim

    real_set = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self: Any, model_param: Any, tensors: dict[str, torch.Tensor]) -> None:
        group, order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group]["params"][order]]
        step = state.pop("step", None)  # not in the checkpoint's tensors (torch's Adam only)
        real_set(self, model_param, tensors)
        if step is not None:
            state["step"] = step.clone()  # megatron gives every parameter the same tensor

    def fill_adam_state(self: Any) -> None:  # a fresh torch Adam's state_dict() asserts one "step"
        for wrapper in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            inner = wrapper.optimizer
            for group in inner.param_groups:
                for param in group["params"]:
                    if not inner.state[param]:
                        inner.state[param] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(param),
                                              "exp_avg_sq": torch.zeros_like(param)}

    with contextlib.ExitStack() as stack:
        for patch in (mock.patch.object(megatron_optim, "require_cuda", lambda *a: None),
                      mock.patch.object(DistributedOptimizer, "_set_main_param_and_optimizer_states", set_states),
                      mock.patch.object(megatron_optim.MegatronOptimizer, "_refuse_torch_adam_resume",
                                        fill_adam_state),
                      mock.patch.object(torch.Tensor, "type", _cuda_type),
                      mock.patch.object(torch.cuda, "current_device", lambda: torch.device("cpu")),
                      mock.patch.object(torch.cuda, "synchronize", lambda *a: None),
                      mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self),
                      mock.patch.object(torch.cuda, "Stream", _Stream),
                      mock.patch.object(torch.cuda, "stream", lambda stream: contextlib.nullcontext()),
                      mock.patch.object(torch.cuda, "default_stream", lambda *a: _Stream()),
                      mock.patch.object(torch.cuda, "current_stream", lambda *a: _Stream())):
            stack.enter_context(patch)
        stack.enter_context(CpuForCuda())
        yield


def _rank_main(rank: int, port: int, model_dir: str, out: str, dtype: str, layout: list[str]) -> None:
    from transformers import AutoProcessor

    from learner_examples import make_examples
    from vt_ray.config.loader import load_config
    from vt_ray.config.roles import LearnerRoleConfig
    from vt_ray.learner.collate import collate
    from vt_ray.learner.megatron.backend import MegatronWorker
    from vt_ray.learner.megatron.parallel import destroy_model_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    processor = AutoProcessor.from_pretrained(model_dir)
    batch = collate(processor, make_examples(processor, 8, seed=1))
    batch.advantages = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.5, -0.25, 1.0, -1.0])
    shard = batch.split(WORLD)[rank]
    assert shard is not None
    overrides = [f"model.path={model_dir}", "learner.backend=megatron", f"learner.param_dtype={dtype}",
                 "learner.megatron.vision_impl=megatron", "learner.megatron.distributed_optimizer=true",
                 "learner.lr=1e-3", "learner.grad_clip=0.5", "learner.warmup_steps=2", "learner.reference=none",
                 "learner.micro_batch_size=2", "algorithm.entropy_coef=0.01",
                 f"resources.learner.num_workers={WORLD}", "resources.cpus_per_node=16", *layout]
    runs: dict[str, Any] = {}
    for name in ("vt_ray", "megatron", "megatron_resumed"):
        role = LearnerRoleConfig.of(load_config(None, overrides))
        if name != "vt_ray":  # the config refuses it without GPU workers: set after the load
            object.__setattr__(role.learner.megatron, "optimizer_impl", "megatron")
            object.__setattr__(role.learner.megatron, "overlap_grad_reduce", OVERLAP)
        worker = MegatronWorker(role, rank, WORLD)
        with fake_cuda() if name != "vt_ray" else contextlib.nullcontext():
            worker.setup(total_steps=4)
            if name == "megatron_resumed":
                worker.load_checkpoint(str(Path(out) / "ckpt"))
                steps = [worker.train_step(shard, 1, loss) for loss in ("grpo", "sft")]
            else:
                shard.old_logprobs = worker.compute_logprobs(shard, 1, "policy")
                shard.ref_logprobs = shard.old_logprobs.clone()
                steps = [worker.train_step(shard, 1, "grpo")]
                if name == "megatron":
                    worker.save_checkpoint(str(Path(out) / "ckpt"), {"data_position": 1})
                steps += [worker.train_step(shard, 1, loss) for loss in ("grpo", "sft")]
            runs[name] = {"steps": steps, "export": worker.export_state_dict("float32")}
        destroy_model_parallel()
    refused = MegatronWorker(LearnerRoleConfig.of(load_config(None, overrides)), rank, WORLD)  # optimizer_impl vt_ray
    refused.setup(total_steps=4)
    try:
        refused.load_checkpoint(str(Path(out) / "ckpt"))
        runs["refused"] = ""
    except ValueError as err:  # megatron's checkpoint is another format
        runs["refused"] = str(err)
    destroy_model_parallel()
    if rank == 0:
        torch.save(runs, Path(out) / "runs.pt")
    dist.barrier()
    dist.destroy_process_group()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main() -> int:
    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port
    from vt_ray.models.tiny import make_tiny_model

    dtype, layout = (sys.argv[1] if len(sys.argv) > 1 else "float32"), sys.argv[2:]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: learner_examples for the spawned ranks
    with tempfile.TemporaryDirectory(prefix="megatron_optim_") as out:
        model_dir = make_tiny_model(Path(out) / "model", seed=1, tie_embeddings=TIED)
        mp.start_processes(_rank_main, args=(free_port(), str(model_dir), out, dtype, layout), nprocs=WORLD,
                           start_method="spawn")
        runs = torch.load(Path(out) / "runs.pt", weights_only=True)
    ours, theirs, resumed = runs["vt_ray"], runs["megatron"], runs["megatron_resumed"]
    flags = (" tied" if TIED else "") + (" overlap" if OVERLAP else "")
    print(f"{WORLD} ranks {dtype} {' '.join(layout)}{flags}: vt_ray / megatron")
    for i, (a, b) in enumerate(zip(ours["steps"], theirs["steps"])):
        print(f"  step {i}: loss {a['loss']:.9f} / {b['loss']:.9f}, grad norm {a['grad_norm']:.9f} / "
              f"{b['grad_norm']:.9f}, lr {a['lr']:.1e} / {b['lr']:.1e}")
    print("  megatron resumed after step 0:",
          [(f"{s['loss']:.9f}", f"{s['grad_norm']:.9f}") for s in resumed["steps"]])
    apart = _max_diff(ours["export"], theirs["export"])
    print(f"  exported weights after three steps, vt_ray vs megatron: max |diff| {apart:.2e}")
    print(f"  megatron vs megatron resumed: max |diff| {_max_diff(theirs['export'], resumed['export']):.2e}")
    print(f"  its checkpoint loaded with optimizer_impl vt_ray: {runs['refused'] or 'NOT refused'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
