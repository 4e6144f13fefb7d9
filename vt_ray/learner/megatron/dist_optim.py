"""``learner.megatron.distributed_optimizer``: the float32 masters and AdamW moments sharded over the
data-parallel (DP) replicas, megatron's distributed-optimizer algorithm (ZeRO-1) on any device.

Why our own: megatron-core 0.16.1's ``DistributedOptimizer`` needs megatron's ``DistributedDataParallel``, whose
gradient buffers use CUDA streams, and it refuses parameters whose ``type()`` is not ``torch.cuda.*Tensor``
(docs/megatron.md, notes/megatron-cpu.md): it cannot run on the CPU build. The algorithm is the same:

* the optimizer parameters of this rank (its TP/PP shards) laid out one after the other in one flat float32
  space (:class:`FlatLayout`), padded to a multiple of DP; DP rank r owns the contiguous slice
  ``[r S, (r + 1) S)`` and keeps only that slice of the float32 masters and of AdamW's moments (one torch AdamW
  over the slice as a single parameter: AdamW is elementwise and the learner's optimizer has one param group,
  one lr and one weight decay, so it is the same update as over the separate tensors);
* the step: each gradient (float32, or the bf16 one upcast) reduce-scattered over DP, bucket by bucket, into
  this rank's slice (the DP sum); the global gradient norm from the slices' squares summed over DP, then over
  TP and PP with ``optim.grad_norm``'s rules (a TP-partitioned parameter's squares summed over TP, a
  replicated one counted once, a tied embedding's ``shared`` copy not at all: each slice segment is classified by
  its parameter, :func:`norm_class`); the clipping; AdamW on the slice; the stepped slices all-gathered, bucket
  by bucket, into the model's parameters (rounded to their dtype).

A parameter without a gradient steps with a zero one (as the plain path does with DP > 1: its DP sum fills one
in). ``torch.distributed.reduce_scatter_single`` / ``all_gather_single`` run on gloo too (torch 2.13, checked).

Checkpoints keep the plain optimizer's format (vt_ray/learner/megatron/checkpoint.py): each parameter's moments
(and float32 master) are put together from the DP slices one parameter at a time (:meth:`full_state`) and
written by one DP rank (the owner of its first element), so a run resumes with the distributed optimizer on or
off and at another DP size.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.distributed as dist

from vt_ray.learner.megatron.collectives import all_gather_into, reduce_scatter_into
from vt_ray.learner.megatron.optim import TP_ATTRIBUTES, clip_coefficient, total_norm

# Elements per rank per bucket of the reduce-scatter and all-gather (a DP x BUCKET float32 transient).
BUCKET = 1 << 22
NORM_CLASSES = ("tensor_parallel", "replicated", "shared")


def norm_class(tensor_model_parallel: bool, shared: bool) -> str:
    """How a parameter's gradient squares enter the global norm (``optim.grad_norm``'s rules): a tied
    embedding's ``shared`` copy is skipped, a TP-partitioned one is summed over the TP group, the rest (replicated
    over TP) counts once."""
    if shared:
        return "shared"
    return "tensor_parallel" if tensor_model_parallel else "replicated"


@dataclass(frozen=True)
class Piece:
    """Where a parameter meets a DP rank's slice: ``[start, stop)`` of the parameter's flattened elements, at
    ``slice_start`` of that rank's slice."""

    index: int
    rank: int
    start: int
    stop: int
    slice_start: int


@dataclass(frozen=True)
class FlatLayout:
    """The parameters' flattened sizes one after the other, padded to a multiple of ``dp``, cut into ``dp``
    equal contiguous slices (rank r owns ``[r S, (r + 1) S)``)."""

    sizes: tuple[int, ...]
    dp: int

    @cached_property
    def offsets(self) -> list[int]:
        out, at = [], 0
        for size in self.sizes:
            out.append(at)
            at += size
        return out

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def slice_size(self) -> int:
        return -(-self.total // self.dp)  # ceil: the padded total / dp

    @property
    def padded(self) -> int:
        return self.slice_size * self.dp

    def pieces_in(self, rank: int, start: int = 0, stop: int | None = None) -> list[Piece]:
        """The parameter pieces in ``[start, stop)`` of ``rank``'s slice (slice coordinates), in order."""
        size = self.slice_size
        stop = size if stop is None else stop
        lo, hi = rank * size + start, rank * size + stop
        offsets = self.offsets
        out = []
        for index in range(max(0, bisect.bisect_right(offsets, lo) - 1), len(self.sizes)):
            begin, end = offsets[index], offsets[index] + self.sizes[index]
            if begin >= hi:
                break
            a, b = max(begin, lo), min(end, hi)
            if a < b:
                out.append(Piece(index, rank, a - begin, b - begin, a - rank * size))
        return out

    def pieces_of(self, index: int) -> list[Piece]:
        """The pieces of parameter ``index`` on the ranks whose slices it crosses, in order."""
        begin = self.offsets[index]
        end = begin + self.sizes[index]
        size = self.slice_size
        out = []
        for rank in range(begin // size, -(-end // size) if end else 0):
            a, b = max(begin, rank * size), min(end, (rank + 1) * size)
            if a < b:
                out.append(Piece(index, rank, a - begin, b - begin, a - rank * size))
        return out

    def writer(self, index: int) -> int:
        """The DP rank that writes parameter ``index``'s optimizer state to a checkpoint: the owner of its first
        element (an empty parameter: the rank its offset falls in)."""
        return min(self.offsets[index] // self.slice_size, self.dp - 1) if self.slice_size else 0

    def touches(self, index: int, rank: int) -> bool:
        return any(p.rank == rank for p in self.pieces_of(index))


class DistributedOptimizer:
    """This rank's slice of the float32 masters (``slice``, the parameter the torch AdamW steps) and the
    collectives around the step. ``params``: the model's parameters in the optimizer's order; ``masters``: their
    float32 values (the bf16 ones' masters, or the float32 parameters themselves): only this rank's slice is
    kept."""

    def __init__(self, params: list[torch.Tensor], masters: list[torch.Tensor], dp_group: Any,
                 tp_group: Any = None, pp_group: Any = None, bucket: int = BUCKET) -> None:
        self.params = params
        self.dp_group, self.tp_group, self.pp_group, self.bucket = dp_group, tp_group, pp_group, bucket
        self.dp = dist.get_world_size(dp_group)
        self.dp_rank = dist.get_rank(dp_group)
        self.dp_ranks = dist.get_process_group_ranks(dp_group)
        self.layout = FlatLayout(tuple(p.numel() for p in params), self.dp)
        self._index = {id(p): i for i, p in enumerate(params)}
        self.mine = self.layout.pieces_in(self.dp_rank)
        self.classes = [norm_class(bool(getattr(p, "tensor_model_parallel", False)), bool(getattr(p, "shared", False)))
                        for p in params]
        device = params[0].device if params else torch.device("cpu")
        self.slice = torch.nn.Parameter(torch.zeros(self.layout.slice_size, dtype=torch.float32, device=device))
        with torch.no_grad():
            for piece in self.mine:
                self._view(piece).copy_(masters[piece.index].detach().reshape(-1)[piece.start:piece.stop])
        self.adamw: torch.optim.Optimizer | None = None

    def bind(self, adamw: torch.optim.Optimizer) -> None:
        """The torch optimizer that steps :attr:`slice` (built by ``RankCommon._build_optimizer``: the lr schedule
        wraps it)."""
        self.adamw = adamw

    def _view(self, piece: Piece, tensor: torch.Tensor | None = None) -> torch.Tensor:
        tensor = self.slice.data if tensor is None else tensor
        return tensor[piece.slice_start: piece.slice_start + piece.stop - piece.start]

    def _buckets(self) -> Iterator[tuple[int, int]]:
        size = self.layout.slice_size
        for start in range(0, size, self.bucket):
            yield start, min(size, start + self.bucket)

    # ---- the step ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reduce_gradients(self) -> None:
        """The model's gradients summed over DP into ``slice.grad`` (float32), bucket by bucket (a DP x bucket
        transient); the model's gradients are freed. A missing gradient counts as zeros."""
        grad = torch.zeros_like(self.slice.data)
        for start, stop in self._buckets():
            send = torch.zeros(self.dp, stop - start, dtype=torch.float32, device=grad.device)
            for rank in range(self.dp):
                for piece in self.layout.pieces_in(rank, start, stop):
                    source = self.params[piece.index].grad
                    if source is not None:
                        at = piece.slice_start - start
                        send[rank, at: at + piece.stop - piece.start] = source.reshape(-1)[piece.start:piece.stop]
            if self.dp == 1:
                grad[start:stop] = send[0]
            else:
                reduce_scatter_into(grad[start:stop], send.reshape(-1), self.dp_group)
        for param in self.params:
            param.grad = None
        self.slice.grad = grad

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """The global gradient norm from the slices (float32 scalar, the same on every rank)."""
        squares = torch.zeros(2, dtype=torch.float32, device=self.slice.device)  # tensor-parallel, replicated
        assert self.slice.grad is not None, "reduce_gradients() first"
        for piece in self.mine:
            kind = self.classes[piece.index]
            if kind != "shared":
                squares[0 if kind == "tensor_parallel" else 1] += self._view(piece, self.slice.grad).pow(2).sum()
        if self.dp > 1:
            dist.all_reduce(squares, group=self.dp_group)
        return total_norm(squares[0].clone(), squares[1], self.tp_group, self.pp_group)

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """``optim.clip_grad_norm`` on the slice: the norm before clipping; ``max_norm`` <= 0 only measures."""
        norm = self.grad_norm()
        if max_norm > 0:
            assert self.slice.grad is not None
            self.slice.grad.mul_(clip_coefficient(norm, max_norm))
        return float(norm)

    @torch.no_grad()
    def slices_to_params(self) -> None:
        """Every rank's stepped slice into the model's parameters (all-gathered bucket by bucket in float32,
        rounded to each parameter's dtype)."""
        for start, stop in self._buckets():
            received = torch.empty(self.dp, stop - start, dtype=torch.float32, device=self.slice.device)
            if self.dp == 1:
                received[0] = self.slice.data[start:stop]
            else:
                all_gather_into(received.reshape(-1), self.slice.data[start:stop].contiguous(), self.dp_group)
            for rank in range(self.dp):
                for piece in self.layout.pieces_in(rank, start, stop):
                    at = piece.slice_start - start
                    flat = self.params[piece.index].data.view(-1)
                    flat[piece.start:piece.stop] = received[rank, at: at + piece.stop - piece.start]

    # ---- whole parameters (export, checkpoints) ---------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        assert self.adamw is not None, "bind() the torch optimizer first"
        state = self.adamw.state[self.slice]
        if not state:  # before the first step: AdamW's initial state, as the plain path's checkpoint template
            state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(self.slice.data),
                         exp_avg_sq=torch.zeros_like(self.slice.data))
        return state

    @property
    def step_count(self) -> float:
        return float(self._state()["step"])

    @torch.no_grad()
    def _assemble(self, index: int, source: torch.Tensor) -> torch.Tensor:
        """Parameter ``index``'s full float32 value of ``source`` (a slice-shaped tensor) on every DP rank: one
        broadcast from each rank holding a piece. Collective over DP."""
        param = self.params[index]
        full = torch.empty(param.numel(), dtype=torch.float32, device=source.device)
        for piece in self.layout.pieces_of(index):
            part = full[piece.start:piece.stop]
            if piece.rank == self.dp_rank:
                part.copy_(self._view(piece, source))
            if self.dp > 1:
                dist.broadcast(part, src=self.dp_ranks[piece.rank], group=self.dp_group)
        return full.view(param.shape)

    def master_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The float32 master of a model parameter, whole (collective over DP for a bf16 parameter; a float32
        parameter is its master: the all-gather after each step wrote it)."""
        index = self._index.get(id(tensor))
        if index is None or tensor.dtype == torch.float32:
            return tensor
        full = self._assemble(index, self.slice.data)
        for attr in TP_ATTRIBUTES:  # the TP gather reads how the parameter is split
            if hasattr(tensor, attr):
                setattr(full, attr, getattr(tensor, attr))
        return full

    def full_state(self, index: int) -> dict[str, torch.Tensor]:
        """Parameter ``index``'s AdamW moments, and its float32 master when the parameter is not float32 itself,
        whole, on every DP rank (what a plain AdamW and ``Float32Masters`` hold for it). Collective over DP."""
        state = self._state()
        out = {key: self._assemble(index, state[key]) for key in ("exp_avg", "exp_avg_sq")}
        if self.params[index].dtype != torch.float32:
            out["master"] = self._assemble(index, self.slice.data)
        return out

    @torch.no_grad()
    def load_full(self, index: int, values: dict[str, torch.Tensor]) -> None:
        """This rank's pieces of parameter ``index`` from its whole ``values`` (any of ``exp_avg``,
        ``exp_avg_sq``, ``master``)."""
        state = self._state()
        targets = {"exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"], "master": self.slice.data}
        for piece in self.mine:
            if piece.index == index:
                for key, tensor in values.items():
                    self._view(piece, targets[key]).copy_(tensor.reshape(-1)[piece.start:piece.stop])

    @torch.no_grad()
    def masters_from_params(self) -> None:
        """The slice from the model's parameters (after a checkpoint loaded them; a bf16 one's loaded master
        replaces its rounding next, :meth:`load_full`)."""
        for piece in self.mine:
            self._view(piece).copy_(self.params[piece.index].detach().reshape(-1)[piece.start:piece.stop])

    def set_step(self, step: float) -> None:
        self._state()["step"] = torch.tensor(float(step))

    def local_bytes(self) -> dict[str, int]:
        """Bytes this rank keeps for the optimizer: the float32 master slice and AdamW's moments."""
        state = self._state()
        return {"masters": self.slice.numel() * 4,
                "moments": sum(state[k].numel() * state[k].element_size() for k in ("exp_avg", "exp_avg_sq"))}


__all__ = ["BUCKET", "DistributedOptimizer", "FlatLayout", "Piece", "norm_class"]
