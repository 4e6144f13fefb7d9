"""Gradient norm and clipping over tensor-parallel shards, for a plain torch optimizer on the local shards, and
float32 master weights for a bf16 model (:class:`Float32Masters`).

Why not megatron's: on 0.16.1 ``get_megatron_optimizer`` needs megatron's DDP, whose gradient buffers use CUDA
streams, and ``clip_grad_norm_fp32`` asserts ``torch.cuda.FloatTensor`` (measured, notes/megatron-cpu.md). With
tensor parallelism only, ``torch.optim.AdamW`` over each rank's shards is the same update as over the full
weights (AdamW is elementwise); the global gradient norm is the one thing that must be assembled across ranks:
a partitioned parameter contributes its local squares (summed over the TP group), a replicated one (the norms)
counts once, not once per rank.

:func:`finalize_grads` is the part of megatron's ``finalize_model_grads`` that is not the data-parallel reduction
(that one needs megatron's DDP wrapper): the sequence-parallel norms' gradients summed over the TP group, the
tied embedding's two copies' gradients summed over the first and last pipeline stages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

Params = torch.nn.Module | Iterable[torch.Tensor]
# What megatron marks on a tensor-parallel parameter (and the split, merge, norm and checkpoint read back).
TP_ATTRIBUTES = ("tensor_model_parallel", "partition_dim", "partition_stride", "shared")


def _params(params: Params) -> list[torch.Tensor]:
    return list(params.parameters() if isinstance(params, torch.nn.Module) else params)


class Float32Masters:
    """Float32 master copies of a bf16 model's parameters: the optimizer's parameters (mixed precision).

    The model computes in its parameters' dtype; after the backward each gradient is copied into its master's
    ``grad`` in float32 (and the bf16 one freed), the norm, clipping and AdamW run on the masters, and the
    stepped masters are copied back (rounded to the model's dtype). An update smaller than bf16's resolution
    still accumulates in the master. A float32 parameter is its own master (megatron's local RMSNorm keeps its
    weight float32 under ``params_dtype=bfloat16``; an all-float32 model has no copies at all).

    Why our own: megatron-core 0.16.1's ``Float16OptimizerWithFloat16Params`` cannot be built on a CPU build
    (its constructor puts the unit loss scale on ``device='cuda'``: "Torch not compiled with CUDA enabled",
    measured with a bf16 CPU parameter and ``OptimizerConfig(bf16=True)``), its parameter check accepts only
    ``torch.cuda.*Tensor`` types, and its ``clip_grad_norm_fp32`` asserts CUDA tensors. Same algorithm (its
    ``_copy_model_grads_to_main_grads`` / ``_copy_main_params_to_model_params``), on any device.
    """

    def __init__(self, params: Params, initial: dict[int, torch.Tensor] | None = None) -> None:
        """``initial``: float32 values by ``id(param)`` (the checkpoint's, before their rounding to bf16);
        a parameter without one starts from its own value."""
        self.params = _params(params)
        self.masters: list[torch.Tensor] = []
        initial = initial or {}
        for param in self.params:
            if param.dtype == torch.float32:
                self.masters.append(param)
                continue
            value = initial.get(id(param), param.detach().float())
            master = torch.nn.Parameter(value, requires_grad=param.requires_grad)
            for attr in TP_ATTRIBUTES:
                if hasattr(param, attr):
                    setattr(master, attr, getattr(param, attr))
            self.masters.append(master)
        self._master_of = {id(p): m for p, m in zip(self.params, self.masters)}

    def master_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The master of a model parameter (the tensor itself when it has none: a buffer, a float32 one)."""
        return self._master_of.get(id(tensor), tensor)

    def copies(self) -> list[tuple[int, torch.Tensor]]:
        """(index, master) of every master that is a separate float32 copy (what a checkpoint must add)."""
        return [(i, m) for i, (p, m) in enumerate(zip(self.params, self.masters)) if m is not p]

    @torch.no_grad()
    def grads_to_masters(self) -> None:
        """Each model gradient into its master's ``grad`` (float32); the model's gradient is freed."""
        for param, master in zip(self.params, self.masters):
            if master is param:
                continue
            master.grad = None if param.grad is None else param.grad.float()
            param.grad = None

    @torch.no_grad()
    def masters_to_params(self) -> None:
        """The masters into the model's parameters, in the model's dtype."""
        for param, master in zip(self.params, self.masters):
            if master is not param:
                param.copy_(master)


def grad_norm(params: Params, tp_group: Any = None, pp_group: Any = None) -> torch.Tensor:
    """The L2 norm of the full model's gradient, the same on every TP rank (a float32 scalar). ``params``: the
    model or the tensors holding its gradients (its float32 masters). With pipeline stages (``pp_group``), each
    stage holds other parameters: their squares are summed over the stages."""
    if tp_group is None:
        from megatron.core import parallel_state

        tp_group = parallel_state.get_tensor_model_parallel_group()
    params = _params(params)
    device = params[0].device  # NCCL reduces CUDA tensors only
    sharded = torch.zeros((), dtype=torch.float32, device=device)
    replicated = torch.zeros((), dtype=torch.float32, device=device)
    for param in params:
        if param.grad is None or getattr(param, "shared", False):  # a tied embedding's last-stage copy: once
            continue
        squares = param.grad.detach().float().pow(2).sum()
        if getattr(param, "tensor_model_parallel", False):
            sharded += squares
        else:
            replicated += squares
    return total_norm(sharded, replicated, tp_group, pp_group)


def total_norm(sharded: torch.Tensor, replicated: torch.Tensor, tp_group: Any, pp_group: Any) -> torch.Tensor:
    """The global norm from this rank's gradient squares: of TP-partitioned parameters (``sharded``: summed over
    the TP group, reduced in place) and of replicated ones (counted once), summed over the pipeline stages."""
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        dist.all_reduce(sharded, group=tp_group)
    total = sharded + replicated
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(total, group=pp_group)
    return total.sqrt()


def clip_coefficient(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """What the gradients are multiplied by to bring their global ``norm`` to at most ``max_norm`` (> 0):
    ``torch.nn.utils.clip_grad_norm_``'s rule."""
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def clip_grad_norm(params: Params, max_norm: float, tp_group: Any = None, pp_group: Any = None) -> float:
    """Scale gradients so their global norm is at most ``max_norm`` (<= 0: only measure); returns the norm
    before clipping. Same rule as ``torch.nn.utils.clip_grad_norm_``."""
    params = _params(params)
    norm = grad_norm(params, tp_group, pp_group)
    if max_norm > 0:
        scale = clip_coefficient(norm, max_norm)
        for param in params:
            if param.grad is not None:
                param.grad.mul_(scale)
    return float(norm)


def finalize_grads(lm: Any) -> None:
    """After the backward, before the norm and the step (megatron's ``_allreduce_non_tensor_model_parallel_grads``
    and ``_allreduce_word_embedding_grads``, for a ``GPTModel`` not wrapped in megatron's DDP):

    * sequence parallelism: each TP rank's replicated norm weights (marked ``sequence_parallel``) got the gradient
      of its own slice of the sequence; their sum over the TP group is the full gradient (one flattened
      all-reduce);
    * tied embeddings across pipeline stages: the first stage's embedding and the last stage's copy of it (its
      output layer) each got a part of the tied weight's gradient; both get the sum (an all-reduce over megatron's
      embedding group), so both copies take the same step and stay equal."""
    from megatron.core import parallel_state
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    tp_group = parallel_state.get_tensor_model_parallel_group()
    if lm.config.sequence_parallel and dist.get_world_size(tp_group) > 1:
        grads = [p.grad for p in lm.parameters() if getattr(p, "sequence_parallel", False) and p.grad is not None]
        if grads:
            flat = _flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=tp_group)
            for grad, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
                grad.copy_(summed)
    embedding_group = parallel_state.get_embedding_group(check_initialized=False)
    if (lm.share_embeddings_and_output_weights and embedding_group is not None
            and dist.get_world_size(embedding_group) > 1
            and dist.get_rank() in dist.get_process_group_ranks(embedding_group)):
        weight = lm.shared_embedding_or_output_weight()
        if weight.grad is None:  # every member must join the all-reduce
            weight.grad = torch.zeros_like(weight)
        dist.all_reduce(weight.grad, group=embedding_group)
