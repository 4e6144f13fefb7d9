"""Gather one weight-stream bucket's FSDP2 shards onto learner rank 0, the next bucket's while this one is sent.

``DTensor.full_tensor()`` per tensor is one blocking all-gather per tensor: hundreds of collectives per sync,
each sending every shard to every rank although only rank 0 sends the bucket on. Here, per bucket, every other
rank posts one point-to-point send per local ``Shard(0)`` piece (no copy), and rank 0 posts the matching
receives straight into the piece's place in a buffer laid out tensor after tensor (each tensor's
``torch.chunk`` pieces in rank order, so the full tensor is a view) and copies its own pieces in. Everything is
posted at once, and the next bucket's transfer before this bucket is handed to the sender, so it overlaps rank
0's packing and broadcast. Only rank 0 receives.

Which buffer: when the bucket goes on the wire in the dtype its tensors have (float32 learners feeding float32
engines), rank 0 lays the pieces out exactly as the plan lays the bucket out (:func:`slot_span`) and receives
them into the sender's own buffer for that bucket (``into``, :meth:`BucketSender.buffer`): the bucket is sent
from where the pieces landed, with no second copy. Otherwise (a cast on the way, or a sender that cannot hand
its buffer out ahead: ``ipc``) into one of two staging buffers of its own, tensor after tensor, from which the
sender casts and packs; with a single rank there is nothing to receive, and its own full tensors go to the
sender as they are. The buffers are reused bucket after bucket: a fresh large buffer costs its page faults on
every bucket. On this machine gloo's gather and all-gather ran at
0.2-0.5 GB/s on bucket-sized messages, its point-to-point messages at 1-2 GB/s (``benchmarks/weight_sync.py``
measures the sender against the per-tensor one).

The layout (:func:`stage_layout`, :class:`ShardSpan`, :func:`place_piece`) works on plain tensors;
:class:`ShardGatherer` adds the FSDP2 state dict and the process group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

from vt_ray.common.weight_stream import ALIGN, Bucket, StreamPlan, TensorSlot, process_ring


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class ShardSpan:
    """Where one tensor sits in rank 0's staging buffer, and where each rank's ``Shard(0)`` piece of it goes."""

    offset: int  # byte offset of the full tensor in the staging buffer (ALIGN-aligned)
    rows: int  # dim 0 of the full tensor
    row_bytes: int  # bytes of one row (the source dtype)
    chunk_rows: int  # rows per rank as ``torch.chunk`` splits them: ceil(rows / world)

    def rank_rows(self, rank: int) -> int:
        """Rows rank ``rank`` holds: ``chunk_rows``, fewer on the last holder, none past the end."""
        return max(0, min(self.chunk_rows, self.rows - rank * self.chunk_rows))

    def piece(self, staging: torch.Tensor, rank: int) -> torch.Tensor:
        """Where rank ``rank``'s rows go in ``staging`` (uint8): right after the rows of the ranks before it."""
        start = self.offset + rank * self.chunk_rows * self.row_bytes
        return staging[start: start + self.rank_rows(rank) * self.row_bytes]

    def full(self, staging: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
        """The whole tensor, once every rank's piece has arrived: a view of ``staging``."""
        return staging[self.offset: self.offset + self.rows * self.row_bytes].view(dtype).view(tuple(shape))


def stage_layout(shapes: Sequence[tuple[Sequence[int], int]], world: int) -> tuple[list[ShardSpan], int]:
    """Spans of tensors (full shape, item size in bytes; at least one dimension) sharded ``Shard(0)`` over
    ``world`` ranks, one after another in a staging buffer, and that buffer's size."""
    spans, used = [], 0
    for shape, itemsize in shapes:
        if not shape:
            raise ValueError("a 0-dim tensor cannot be sharded on dim 0")
        row_bytes = itemsize
        for d in shape[1:]:
            row_bytes *= int(d)
        rows = int(shape[0])
        spans.append(ShardSpan(used, rows, row_bytes, -(-rows // world)))
        used += _aligned(rows * row_bytes)
    return spans, used


def slot_span(slot: TensorSlot, world: int) -> ShardSpan:
    """Where tensor ``slot`` (at least one dimension) and each rank's ``Shard(0)`` piece of it sit in the bucket's
    send buffer, as the plan lays it out: a gather that places its pieces by these spans leaves the bucket packed."""
    if not slot.shape:
        raise ValueError(f"{slot.name}: a 0-dim tensor cannot be sharded on dim 0")
    rows = slot.shape[0]
    row_bytes = getattr(torch, slot.dtype).itemsize
    for d in slot.shape[1:]:
        row_bytes *= d
    return ShardSpan(slot.offset, rows, row_bytes, -(-rows // world))


def place_piece(staging: torch.Tensor, span: ShardSpan, rank: int, local: torch.Tensor) -> None:
    """Copy rank ``rank``'s local shard of one tensor into its place in ``staging``."""
    want = span.rank_rows(rank)
    if local.dim() == 0 or local.shape[0] != want:
        raise ValueError(f"rank {rank} holds {list(local.shape)}, Shard(0) of {span.rows} rows gives it {want}")
    if want:
        span.piece(staging, rank).copy_(local.contiguous().view(-1).view(torch.uint8))


def _flat_shardable(tensor: Any, mesh: Any) -> bool:
    """A DTensor split on dim 0 over exactly the learner mesh (FSDP2's parameters)."""
    return (isinstance(tensor, DTensor) and tensor.dim() > 0 and tuple(tensor.placements) == (Shard(0),)
            and tensor.device_mesh == mesh)


class _Posted:
    """One bucket's transfer in flight: rank 0's buffer (``None`` elsewhere, or with nothing to receive), where
    each tensor sits in it, and the pending messages."""

    def __init__(self, staging: torch.Tensor | None, spans: dict[str, ShardSpan], works: list[Any]) -> None:
        self.staging, self.spans, self.works = staging, spans, works

    def wait(self) -> torch.Tensor | None:
        for work in self.works:
            work.wait()
        self.works = []
        return self.staging


class ShardGatherer:
    """Every learner rank: ``gatherer(names)`` yields a bucket's full tensors on rank 0 (on other ranks their
    local pieces: only rank 0 sends), the next bucket's transfer posted before this one is handed over.
    Tensors that are not ``Shard(0)`` DTensors over the 1-D ``mesh`` come as they are (plain tensors) or
    through their own ``full_tensor()``, in plan order on every rank. Collective over the mesh's group; buckets
    must be asked for in plan order, each iterator consumed before the next is asked for (``send_buckets`` does
    both).

    On rank 0, ``into`` (set by the sender's caller: ``BucketSender.buffer``) gives bucket ``i``'s send buffer;
    with ``direct``, a bucket whose sharded tensors already have the plan's dtype is received straight into it
    at the plan's offsets (the tensors yielded are views of the send buffer, which the sender then does not copy),
    and a single rank yields its own tensors for the others (nothing to receive). Every other bucket goes through
    one of rank 0's two staging buffers, reused bucket after bucket (without ``direct``: every bucket, as the
    sender before did)."""

    def __init__(self, state: dict[str, Any], plan: StreamPlan, mesh: Any, device: torch.device,
                 direct: bool = True) -> None:
        self.state, self.plan, self.mesh, self.device = state, plan, mesh, device
        self.group = mesh.get_group()
        self.rank, self.world = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.into: Callable[[int], torch.Tensor] | None = None
        self._names = [[slot.name for slot in bucket.tensors] for bucket in plan.buckets]
        self._flat = {n for names in self._names for n in names if _flat_shardable(state[n], mesh)}
        self._layouts = [self._layout(names) for names in self._names]
        self.direct = direct
        self._direct = [direct and self._same_dtype(bucket) for bucket in plan.buckets]
        self._next = 0  # the bucket the next call must ask for
        self._posted: dict[int, _Posted] = {}
        self._ring = process_ring("staging")  # two staging buffers, reused bucket after bucket and sync after sync
        # every staging buffer this size at least, so that it is reusable: the largest of the buckets within the
        # planned bucket size (a tensor of exactly that size alone in its bucket included); an oversized
        # tensor's bucket gets a buffer of its own
        within = [size for (_, size), bucket in zip(self._layouts, plan.buckets, strict=True)
                  if (bucket.nbytes <= plan.bucket_bytes if plan.bucket_bytes else len(bucket.tensors) > 1)]
        self._size = max(within, default=0)

    @property
    def writes_into_sender(self) -> bool:
        """Whether some bucket would be received straight into its send buffer, given ``into``."""
        return any(self._direct)

    def _same_dtype(self, bucket: Bucket) -> bool:
        """Every sharded tensor of ``bucket`` goes on the wire in its own dtype: its pieces can land in place."""
        return all(str(self.state[slot.name].dtype).removeprefix("torch.") == slot.dtype
                   for slot in bucket.tensors if slot.name in self._flat)

    def _layout(self, names: list[str]) -> tuple[dict[str, ShardSpan], int]:
        flat = [n for n in names if n in self._flat]
        spans, size = stage_layout([(tuple(self.state[n].shape), self.state[n].dtype.itemsize) for n in flat],
                                   self.world)
        return dict(zip(flat, spans, strict=True)), size

    def _staging(self, size: int) -> torch.Tensor:
        """A fresh large buffer costs its page faults again: take one no view of which is left (the ring checks)."""
        return self._ring.acquire(size, max(self._size, 1), self.device)

    def _post(self, index: int) -> None:
        """Rank 0 posts a receive per piece straight into its place and copies its own; the others send."""
        spans, size = self._layouts[index]
        staging: torch.Tensor | None = None
        if self.rank == 0 and self.into is not None and self._direct[index]:
            staging = self.into(index)  # the send buffer itself, laid out as the plan says
            spans = {slot.name: slot_span(slot, self.world) for slot in self.plan.buckets[index].tensors
                     if slot.name in spans}
        elif self.rank == 0 and (self.world > 1 or not self.direct):
            staging = self._staging(size)
        elif self.rank == 0:  # a single rank: its shards are the full tensors, handed to the sender as they are
            self._posted[index] = _Posted(None, {}, [])
            return
        works = []
        for name, span in spans.items():
            local = self.state[name].to_local().to(self.device)  # a no-op unless the shards are offloaded to CPU
            if staging is not None:
                place_piece(staging, span, 0, local)
                works += [dist.irecv(span.piece(staging, r), group=self.group, group_src=r)
                          for r in range(1, self.world) if span.rank_rows(r)]
            elif span.rank_rows(self.rank):
                if local.shape[0] != span.rank_rows(self.rank):
                    raise ValueError(f"{name}: rank {self.rank} holds {list(local.shape)}, Shard(0) of "
                                     f"{span.rows} rows gives it {span.rank_rows(self.rank)}")
                works.append(dist.isend(local.contiguous().view(-1).view(torch.uint8), group=self.group,
                                        group_dst=0))
        self._posted[index] = _Posted(staging, spans, works)

    def __call__(self, names: list[str]) -> Iterator[torch.Tensor]:
        index = self._next
        if names != self._names[index]:
            raise ValueError(f"bucket {index} asked for out of plan order")
        self._next += 1
        if index not in self._posted:
            self._post(index)
        if index + 1 < len(self._names):
            self._post(index + 1)  # on the wire while this bucket is handed over and sent on
        return self._bucket(index)

    def _bucket(self, index: int) -> Iterator[torch.Tensor]:
        posted = self._posted.pop(index)
        staging = posted.wait()
        for name in self._names[index]:
            tensor = self.state[name]
            if name not in self._flat:
                yield tensor.full_tensor() if isinstance(tensor, DTensor) else tensor  # its own collective
            elif staging is None:  # another rank's own piece (it only sends), or a single rank's full tensor
                yield tensor.to_local()
            else:
                yield posted.spans[name].full(staging, tensor.dtype, tensor.shape)
