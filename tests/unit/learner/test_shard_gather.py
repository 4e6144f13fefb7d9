"""The staging layout of the streamed sync's shard gather (vt_ray.learner.shard_gather), on plain tensors:
every rank's ``Shard(0)`` piece (``torch.chunk``, as FSDP2 splits parameters) placed where the layout says
rebuilds each full tensor bit for bit, with uneven and empty pieces, mixed dtypes and a tensor larger than a
bucket; pieces placed by the plan's own layout (``slot_span``) leave the bucket exactly as the sender packs it
(the gather then writes straight into the send buffer); the transfer itself runs in the integration tests (two
FSDP2 ranks)."""

from __future__ import annotations

import pytest
import torch

from vt_ray.common.weight_stream import ALIGN, TRAILER, pack_bucket, plan_buckets
from vt_ray.learner.shard_gather import ShardSpan, place_piece, slot_span, stage_layout


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "uneven": torch.randn(7, 3, generator=gen),  # 3 ranks: 3 + 3 + 1 rows
        "one_row": torch.randn(1, 5, generator=gen).bfloat16(),  # ranks 1 and 2 hold nothing
        "vector": torch.randn(10, generator=gen).half(),
        "ids": torch.arange(11, dtype=torch.int64),
        "big": torch.randn(300, 100, generator=gen),  # 120 kB: larger than the 4 kB buckets of the wire tests
        "cube": torch.randn(5, 2, 3, generator=gen, dtype=torch.float64),
    }


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_ranks_chunk_placed_rebuilds_each_tensor_bit_for_bit(world: int) -> None:
    tensors = _tensors()
    spans, size = stage_layout([(tuple(t.shape), t.dtype.itemsize) for t in tensors.values()], world)
    staging = torch.full((size,), 0xAB, dtype=torch.uint8)  # garbage where nothing is placed
    for (name, tensor), span in zip(tensors.items(), spans, strict=True):
        pieces = list(torch.chunk(tensor, world, dim=0))  # FSDP2's Shard(0) split: may give fewer than world
        pieces += [tensor[:0]] * (world - len(pieces))  # the ranks past the end hold an empty shard
        assert [span.rank_rows(r) for r in range(world)] == [p.shape[0] for p in pieces], name
        for rank, piece in enumerate(pieces):
            place_piece(staging, span, rank, piece)
    for (name, tensor), span in zip(tensors.items(), spans, strict=True):
        full = span.full(staging, tensor.dtype, tensor.shape)
        assert full.dtype == tensor.dtype and torch.equal(full, tensor), name
    assert all(s.offset % ALIGN == 0 for s in spans)
    ends = [s.offset + s.rows * s.row_bytes for s in spans]
    assert all(end <= nxt.offset for end, nxt in zip(ends, spans[1:], strict=False))  # no overlap
    assert ends[-1] <= size < ends[-1] + ALIGN


def test_a_piece_of_the_wrong_size_and_a_0_dim_tensor_are_refused() -> None:
    span = ShardSpan(offset=0, rows=7, row_bytes=12, chunk_rows=4)  # 7 rows over 2 ranks: 4 + 3
    staging = torch.zeros(7 * 12, dtype=torch.uint8)
    with pytest.raises(ValueError, match="rank 1 holds \\[4, 3\\].*gives it 3"):
        place_piece(staging, span, 1, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="0-dim"):
        stage_layout([((), 4)], 2)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_pieces_placed_by_the_plans_layout_leave_the_bucket_packed_bit_for_bit(world: int) -> None:
    tensors = _tensors()
    plan = plan_buckets([(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in tensors.items()],
                        1 << 20)  # one bucket: every tensor at its plan offset
    bucket = plan.buckets[0]
    want = torch.zeros(bucket.nbytes + TRAILER, dtype=torch.uint8)
    pack_bucket(want, bucket, 0, tensors.values())  # the sender's own copy of every tensor
    buf = torch.full_like(want, 0xAB)  # garbage where nothing is placed (alignment padding)
    views = []
    for slot, tensor in zip(bucket.tensors, tensors.values(), strict=True):
        span = slot_span(slot, world)
        pieces = list(torch.chunk(tensor, world, dim=0))
        pieces += [tensor[:0]] * (world - len(pieces))
        for rank, piece in enumerate(pieces):
            place_piece(buf, span, rank, piece)
        views.append(span.full(buf, tensor.dtype, tensor.shape))
    for slot in bucket.tensors:  # the padding is the only difference left
        want[slot.offset + slot.nbytes: slot.offset + -(-slot.nbytes // ALIGN) * ALIGN] = 0xAB
    pack_bucket(want, bucket, 0, tensors.values())  # checksum over the same padding
    pack_bucket(buf, bucket, 0, views)  # in place: nothing to copy, the checksum appended
    assert torch.equal(buf, want)
    with pytest.raises(ValueError, match="0-dim"):
        slot_span(plan_buckets([("scalar", (), "float32")], 64).buckets[0].tensors[0], world)
