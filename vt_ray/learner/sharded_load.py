"""How a learner rank gets its model: joining the process group, then loading a Hugging Face checkpoint and
sharding it with FSDP2 over the mesh (optionally without any rank but 0 ever holding the full model).

Apart from the worker because start-up is its own concern with its own memory rules (meta-device build, rank-0
read and broadcast, buffers, tied weights); the worker only says what to load and how to prepare it.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy

from vt_ray.learner.fsdp import shard_model, tied_parameter_groups
from vt_ray.learner.rendezvous import free_port


def group_backend(backend: str, device: torch.device) -> str:
    """The learners' default-group backend: ``auto`` is NCCL on CUDA, else gloo. Whenever NCCL is chosen, CPU
    tensors get gloo in the same group (``cpu:gloo,cuda:nccl``): the ranks all-reduce small CPU tensors (token
    counts, metric sums) on the default group, which NCCL alone rejects."""
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    return "cpu:gloo,cuda:nccl" if backend == "nccl" else backend


def init_process_group(backend: str, device: torch.device, rank: int, world_size: int, master_addr: str,
                       master_port: int | None, timeout_s: float) -> None:
    """Join (or check) the learners' process group (backend: :func:`group_backend`)."""
    backend = group_backend(backend, device)
    if dist.is_initialized():
        if dist.get_world_size() != world_size:
            raise RuntimeError(f"a process group of {dist.get_world_size()} ranks already exists")
        return
    os.environ["MASTER_ADDR"] = master_addr
    os.environ["MASTER_PORT"] = str(master_port or free_port())
    dist.init_process_group(
        backend,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def load_sharded(
    path: str,
    dtype: torch.dtype,
    prepare: Callable[[torch.nn.Module], torch.nn.Module],
    mp: MixedPrecisionPolicy | None,
    offload: bool,
    *,
    mesh: Any,
    device: torch.device,
    rank: int,
    world_size: int,
    load_on_rank0: bool,
    reshard_after_forward: bool = True,
) -> torch.nn.Module:
    """The model at ``path`` in ``dtype``, ``prepare``d (train/eval mode, flags), sharded over the mesh.

    With learner.load_on_rank0 and more than one rank, no rank but 0 ever holds the full model: all ranks
    build it on the meta device and shard it, allocate their shard only (``to_empty``), then rank 0 reads
    the checkpoint and broadcasts it tensor by tensor into the shards (the torchtitan/torchtune recipe).
    Otherwise every rank loads the full model, then shards it. Collective.
    """
    from vt_ray.models.hf_load import build_vl_model_on_meta, load_vl_model, stored_dtype

    if not (load_on_rank0 and world_size > 1):
        return shard_model(prepare(load_vl_model(path, dtype)), mesh, mp, offload, reshard_after_forward)

    model = prepare(build_vl_model_on_meta(path, dtype))
    tied = tied_parameter_groups(model)
    model = shard_model(model, mesh, mp, offload, reshard_after_forward)
    # With CPUOffloadPolicy (pin_memory), FSDP2 moves each shard to pinned host memory right after it is
    # allocated here, so the GPU holds one module's shard at most for a moment.
    model.to_empty(device=device)
    # Rank 0 reads the weights in the narrower of their stored dtype and the target: the copy into each shard
    # widens them exactly (bf16 -> fp32), so the released bf16 checkpoint never exists as a full fp32 copy.
    stored = stored_dtype(path)
    narrow = stored if stored is not None and stored.itemsize < dtype.itemsize else dtype
    source = load_vl_model(path, narrow) if rank == 0 else None
    with torch.no_grad():
        full = source.state_dict() if source is not None else {}
        set_model_state_dict(
            model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
        )
        del full
        # FSDP2 does not shard buffers (each rank holds them whole), and the non-persistent ones (Qwen2.5-VL's
        # text and vision rotary ``inv_freq`` / ``original_inv_freq``) are not in the state dict: after
        # ``to_empty`` they hold uninitialised memory. Rank 0's plain-loaded model has the values
        # ``from_pretrained`` gives them, so every rank takes all buffers from it (a few KB) rather than
        # recomputing them with model-specific init code that could drift from transformers'.
        for name, buf in model.named_buffers():
            if source is not None:
                buf.copy_(source.get_buffer(name))
            dist.broadcast(buf, src=0)
    # The full model must go now, not at the next cyclic GC: use_released_rope_index binds a method to the
    # model (a reference cycle), so dropping the name alone would keep rank 0 holding the whole policy
    # while it reads the reference.
    del source
    gc.collect()
    if tied_parameter_groups(model) != tied:  # tie_word_embeddings: lm_head must still be the embedding
        raise RuntimeError(f"tied parameters {tied} were untied by meta-device loading")
    return model
