"""The streamed weight sync's wire (vt_ray.common.weight_stream) and an engine receiving it, without Ray.

Sender and receivers are threads of this process, each with its own gloo group member (the same objects the
learner rank 0 and the engine workers build): the plan's layout, bit-exact delivery, a corrupted bucket
refused by every receiver with the bucket and tensor named, and the drain that keeps a failed receiver from
leaving its peers blocked. The transformers engine then receives a stream from such a sender: every tensor
bit-equal, a bucket failing its checksum in the middle of the stream leaves it refusing to generate, at the
first bucket it leaves the engine untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from stream_helpers import mixed_tensors, plan_of, stream_to  # tests/ is on sys.path (rootdir conftest)
from vt_ray.common.weight_stream import (
    ALIGN,
    RING_BUFFERS,
    SEND_BUFFERS_AHEAD,
    BucketReceiver,
    BucketSender,
    BufferRing,
    HandedOut,
    StreamGroup,
    StreamPlan,
    StreamSession,
    WeightStreamError,
    bucket_tensor,
    plan_buckets,
    process_ring,
)
from vt_ray.learner.rendezvous import free_port


def _tensors() -> dict[str, torch.Tensor]:
    return mixed_tensors(12)


def _plan(tensors: dict[str, torch.Tensor], bucket_bytes: int = 4096) -> StreamPlan:
    return plan_of(tensors, bucket_bytes)


def test_plan_keeps_order_aligns_every_tensor_and_never_splits_one() -> None:
    tensors = _tensors()
    plan = _plan(tensors)
    slots = [t for b in plan.buckets for t in b.tensors]
    assert [t.name for t in slots] == list(tensors)
    assert all(t.offset % ALIGN == 0 for t in slots)
    assert all(t.nbytes == v.numel() * v.element_size() for t, v in zip(slots, tensors.values(), strict=True))
    big = next(b for b in plan.buckets if b.tensors[0].name == "big")
    assert len(big.tensors) == 1 and big.nbytes > 4096  # oversized: alone, whole
    assert all(b.nbytes <= 4096 for b in plan.buckets if b is not big)
    assert all(b.tensors[-1].offset + b.tensors[-1].nbytes <= b.nbytes for b in plan.buckets)
    assert StreamPlan.from_dict(plan.to_dict()) == plan
    assert plan.specs()["steps"] == ((7,), "int64")
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets([], 0)
    with pytest.raises(ValueError, match="'odd'.*complex64"):
        plan_buckets([("odd", (2,), "complex64")], 1024)


def _written_ahead(sender: BucketSender, plan: StreamPlan, index: int, tensors: dict[str, torch.Tensor]
                   ) -> list[torch.Tensor]:
    """What the shard gather does with a bucket that needs no cast: write each floating tensor straight into its
    place in the bucket's send buffer (asked for ahead) and hand over views of it; other tensors as they are."""
    buf = sender.buffer(index)
    out = []
    for slot in plan.buckets[index].tensors:
        tensor = tensors[slot.name]
        if tensor.is_floating_point():
            place = buf[slot.offset: slot.offset + slot.nbytes].view(tensor.dtype).view(tensor.shape)
            place.copy_(tensor)
            tensor = place
        out.append(tensor)
    return out


def _stream(tensors: dict[str, torch.Tensor], plan: StreamPlan, receivers: int,
            consume: Callable[[BucketReceiver, int], Any], corrupt: Callable[[int, torch.Tensor], None] | None = None,
            ring: BufferRing | None = None, ahead: bool = False) -> tuple[dict[int, Any], dict[int, BaseException]]:
    """Rank 0 sends ``tensors`` to ``receivers`` threads (their buffers from ``ring``, the process's by default);
    ``consume(receiver, rank)`` is each one's result. ``ahead``: the sender's buffers are written as the shard
    gather writes them, the next bucket's before this one is sent (three send buffers)."""
    session = StreamSession("127.0.0.1", free_port(), "test", 1 + receivers, timeout_s=30)
    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}

    def receive(rank: int) -> None:
        receiver = BucketReceiver(StreamGroup(session, rank), plan, "cpu", ring)
        try:
            results[rank] = consume(receiver, rank)
        except Exception as err:
            errors[rank] = err
            receiver.drain()

    threads = [threading.Thread(target=receive, args=(r,)) for r in range(1, 1 + receivers)]
    for t in threads:
        t.start()
    sender = BucketSender(StreamGroup(session, 0), plan, "cpu", buffers=SEND_BUFFERS_AHEAD if ahead else 2)
    count = len(plan.buckets)
    written = {0: _written_ahead(sender, plan, 0, tensors)} if ahead and count else {}
    for index, bucket in enumerate(plan.buckets):
        if ahead and index + 1 < count:
            written[index + 1] = _written_ahead(sender, plan, index + 1, tensors)  # before this bucket leaves
        sender.send(index, written.pop(index) if ahead else [tensors[t.name] for t in bucket.tensors], corrupt)
    sender.finish()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a receiver is still blocked"
    return results, errors


def _copy_all(receiver: BucketReceiver, rank: int) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in receiver.tensors()}


@pytest.mark.parametrize("ahead", [False, True], ids=["packed", "written_into_send_buffers"])
def test_every_receiver_gets_every_tensor_bit_for_bit(ahead: bool) -> None:
    tensors = _tensors()
    results, errors = _stream(tensors, _plan(tensors), 2, _copy_all, ahead=ahead)
    # a float32 master sent under a bfloat16 plan is cast as it is packed (the learner feeding a bf16 engine)
    wide = {"w": torch.randn(40, 3, generator=torch.Generator().manual_seed(1))}
    cast, cast_errors = _stream(wide, plan_buckets([("w", (40, 3), "bfloat16")], 4096), 1, _copy_all)
    assert not cast_errors and cast[1]["w"].dtype == torch.bfloat16 and torch.equal(cast[1]["w"], wide["w"].bfloat16())
    assert not errors
    for rank in (1, 2):
        assert list(results[rank]) == list(tensors)
        for name, want in tensors.items():
            got = results[rank][name]
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got.view(-1).view(torch.uint8), want.view(-1).view(torch.uint8)), name


@pytest.mark.parametrize("ahead", [False, True], ids=["packed", "written_into_send_buffers"])
def test_a_corrupted_bucket_is_refused_by_every_receiver_naming_bucket_and_tensor(ahead: bool) -> None:
    tensors = _tensors()
    plan = _plan(tensors)
    bad = len(plan.buckets) // 2

    def flip(index: int, buf: torch.Tensor) -> None:
        if index == bad:
            buf[3] ^= 0x01  # one bit of one tensor, after the sender computed the checksum

    seen: dict[int, list[str]] = {1: [], 2: []}

    def consume(receiver: BucketReceiver, rank: int) -> None:
        for name, _ in receiver.tensors():
            seen[rank].append(name)

    results, errors = _stream(tensors, plan, 2, consume, corrupt=flip, ahead=ahead)
    first = plan.buckets[bad].tensors[0].name
    for rank in (1, 2):
        err = errors[rank]
        assert isinstance(err, WeightStreamError) and err.bucket == bad and err.tensor == first
        assert f"bucket {bad} of {len(plan.buckets)}" in str(err) and repr(first) in str(err)
        delivered = [t.name for b in plan.buckets[:bad] for t in b.tensors]
        assert seen[rank] == delivered  # nothing of the bad bucket or after it was handed over


def test_a_receiver_that_stops_early_drains_and_its_peer_still_gets_everything() -> None:
    tensors = _tensors()

    def consume(receiver: BucketReceiver, rank: int) -> Any:
        if rank == 1:
            for name, _ in receiver.tensors():
                if name == "layers.3.w":
                    raise RuntimeError("loader failed")
        return _copy_all(receiver, rank)

    results, errors = _stream(tensors, _plan(tensors), 2, consume)
    assert list(errors) == [1] and "loader failed" in str(errors[1])
    assert all(torch.equal(results[2][k], v) for k, v in tensors.items())


def test_the_buffer_ring_never_hands_out_a_buffer_something_still_views() -> None:
    ring = BufferRing(capacity=2)
    first = ring.acquire(100, 128, "cpu")
    kept = first[64:96].view(torch.float32).view(2, 4)  # a view of another dtype and shape, as a loader keeps one
    del first
    second = ring.acquire(100, 128, "cpu")
    assert second.data_ptr() != kept.data_ptr() - 64  # the first buffer is still viewed: not handed out
    del second
    again = ring.acquire(120, 128, "cpu")  # the second is free again (nothing views it)
    assert ring.fresh == 2 and ring.reused == 1 and again.numel() == 120
    del again, kept
    assert {ring.acquire(128, 128, "cpu").data_ptr() for _ in range(3)} <= {b.data_ptr() for b, _ in ring._kept}
    assert ring.fresh == 2  # both buffers came back once no view of them was left
    big = ring.acquire(1000, 128, "cpu")  # larger than a kept buffer (an oversized tensor): its own, never kept
    assert big.numel() == 1000 and all(b.numel() == 128 for b, _ in ring._kept)
    held = [ring.acquire(64, 128, "cpu") for _ in range(3)]  # more at once than it keeps: fresh ones, all distinct
    assert len({b.data_ptr() for b in held}) == 3 and len(ring._kept) == 2
    never = BufferRing(0)  # the earlier receiver: a fresh buffer every time
    assert [never.acquire(8, 8, "cpu").numel() for _ in range(2)] == [8, 8] and never.fresh == 2 and not never._kept


def test_the_ring_moves_what_a_consumer_holds_of_old_buckets_before_it_makes_a_fresh_buffer() -> None:
    ring, handed = BufferRing(capacity=2), HandedOut()
    plan = plan_buckets([("a", (4, 4), "float32"), ("b", (2,), "int64"), ("c", (4, 4), "float32")], 128)
    values = {"a": torch.randn(4, 4), "b": torch.tensor([3, -7]), "c": torch.randn(4, 4)}
    held = []
    for bucket in plan.buckets:  # fill both kept buffers; the consumer keeps a tensor of each
        buf = ring.acquire(bucket.nbytes, 128, "cpu", handed)
        handed.start_bucket(buf)
        for spec in bucket.tensors:
            tensor = handed.add(bucket_tensor(buf, spec))
            tensor.copy_(values[spec.name])
            held.append((spec.name, tensor))
        del buf
    assert len(plan.buckets) == 2 and ring.fresh == 2
    before = [t.data_ptr() for _, t in held]
    again = ring.acquire(128, 128, "cpu", handed)  # both buffers held: the oldest bucket's tensors are moved
    assert ring.fresh == 2 and ring.reused == 1 and ring.relocated_bytes == 64 + 16
    assert [n for (n, t), address in zip(held, before, strict=True) if t.data_ptr() != address] == ["a", "b"]
    again.fill_(255)  # the reused buffer is overwritten: the moved tensors keep their values, dtypes and shapes
    assert all(torch.equal(t, values[n]) and t.dtype == values[n].dtype for n, t in held)
    derived = held[-1][1][1:]  # a view the consumer made of a tensor: it cannot be moved, so its buffer is not reused
    del again
    first = ring.acquire(128, 128, "cpu", handed)  # the first buffer, free again
    third = ring.acquire(128, 128, "cpu", handed)  # "c" moved, but the derived view still pins its buffer
    assert ring.fresh == 3 and torch.equal(derived, values["c"][1:]) and third.data_ptr() != derived.data_ptr()
    assert held[-1][1].data_ptr() != before[-1] and first.numel() == 128
    never = BufferRing(capacity=1, relocate=False)  # relocation off: a fresh buffer, nothing moved
    kept = bucket_tensor(never.acquire(64, 64, "cpu"), plan.buckets[0].tensors[0])
    handed = HandedOut()
    never.acquire(64, 64, "cpu", handed)
    assert never.fresh == 2 and never.relocated_bytes == 0 and kept.numel() == 16


def test_reused_buffers_deliver_two_consecutive_syncs_bit_for_bit_even_to_a_loader_that_keeps_every_view() -> None:
    first = _tensors()
    second = {k: v + 1 if v.is_floating_point() else v * 2 for k, v in first.items()}
    plan = _plan(first)

    def keep_views(receiver: BucketReceiver, rank: int) -> dict[str, torch.Tensor]:
        return dict(receiver.tensors())  # like vLLM's reload holding a layer's views: nothing may be overwritten

    oversized = sum(len(b.tensors) == 1 and b.nbytes > 4096 for b in plan.buckets)
    assert oversized == 1 and len(plan.buckets) - oversized > RING_BUFFERS
    for relocate in (True, False):  # tensors a loader keeps moved off their buffer, or fresh buffers instead
        ring = BufferRing(relocate=relocate)
        fresh, moved, sent_fresh = [], [], []
        sending = process_ring("send")  # the sender's two buffers, the process's own
        for tensors, consume in ((first, _copy_all), (second, keep_views), (first, _copy_all), (second, _copy_all)):
            before, moved_before, sent_before = ring.fresh, ring.relocated_bytes, sending.fresh
            results, errors = _stream(tensors, plan, 1, consume, ring=ring)
            sent_fresh.append(sending.fresh - sent_before)
            assert not errors
            assert all(torch.equal(results[1][k].view(-1).view(torch.uint8), v.view(-1).view(torch.uint8))
                       for k, v in tensors.items())
            del results  # the loader lets its views go
            fresh.append(ring.fresh - before)
            moved.append(ring.relocated_bytes - moved_before)
        # The first sync fills the ring. For the loader that keeps every tensor, the receiver moves the tensors
        # of the oldest buckets onto memory of their own (their bytes, not a bucket-sized buffer each) and reuses
        # their buffers: only the oversized bucket is fresh. Without that, it needs a fresh buffer per bucket past
        # the ring's (none overwritten under a view either way: checked above). After it, every bucket but the
        # oversized one reuses a buffer, but for an instant after a sync a group's worker thread may still hold
        # its last buckets (the ring then makes a fresh one, as it must): at most two per sync.
        # The same straggler can make the ring move a bucket's tensors in another sync instead (seen under load:
        # 1,440 bytes in the first, 1,720 in the third), so the syncs with a copying loader may move at most two
        # buckets' worth.
        assert fresh[0] >= ring.capacity + oversized
        if relocate:
            held = sum(b.nbytes for b in plan.buckets if b.nbytes <= 4096)  # the oversized tensor is never moved
            straggler = 2 * max(b.nbytes for b in plan.buckets if b.nbytes <= 4096)
            assert fresh[1] == oversized and 0 < moved[1] < held
            assert max(moved[0], moved[2], moved[3]) <= straggler
        else:
            assert fresh[1] >= len(plan.buckets) - ring.capacity and moved == [0, 0, 0, 0]
        assert sum(fresh[2:]) <= 2 * (oversized + 2)
        assert sum(sent_fresh[1:]) <= 3  # the sender mostly finds its two buffers again (without the ring: 6)


def test_stream_names_send_a_tied_tensor_once_under_the_embedding_name() -> None:
    from vt_ray.learner.weight_stream import plan_policy, stream_names

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = torch.nn.Linear(4, 10, bias=False)
            self.embed_tokens = torch.nn.Embedding(10, 4)
            self.lm_head.weight = self.embed_tokens.weight
            self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))

    model = Tied()
    assert sorted(stream_names(model)) == ["embed_tokens.weight", "steps"]
    specs = plan_policy(model, torch.bfloat16, 1024).specs()
    assert specs == {"embed_tokens.weight": ((10, 4), "bfloat16"), "steps": ((3,), "int64")}  # ints keep dtype


# ---- the transformers engine receiving a stream ----------------------------------------------------------------
def test_hf_engine_takes_a_stream_bit_for_bit_and_refuses_to_serve_after_a_bad_one(tiny_model_dir: Path) -> None:
    from vt_ray.config.schema import ModelConfig, RolloutConfig
    from vt_ray.rollout.hf_engine import HfEngine
    from vt_ray.rollout.weight_sync import UNKNOWN_VERSION, WeightSyncError

    engine = HfEngine(ModelConfig(path=str(tiny_model_dir)), RolloutConfig(backend="hf"))
    gen = torch.Generator().manual_seed(3)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone())
             for k, v in engine.model.state_dict().items()}
    for group in engine.manifest.tied:  # a tied tensor is sent once, under the embedding's name (the learner's)
        for name in group:
            if name.startswith("lm_head"):
                state.pop(name)
    bucket = 256 * 1024
    assert len(plan_of(state, bucket).buckets) > 4

    assert stream_to(engine, state, 1, bucket) is None
    assert engine.weight_version == 1
    live = engine.model.state_dict()
    assert all(torch.equal(live[k], v) for k, v in state.items())

    before = {k: v.clone() for k, v in live.items()}
    plan = plan_of(state, bucket)

    def at(bucket_index: int) -> Callable[[int, torch.Tensor], None]:
        def flip(index: int, buf: torch.Tensor) -> None:
            if index == bucket_index:
                buf[0] ^= 0xFF
        return flip

    err = stream_to(engine, {k: v + 1 for k, v in state.items()}, 2, bucket, at(0))
    assert isinstance(err, WeightSyncError) and not err.applied and err.tensor == plan.buckets[0].tensors[0].name
    assert engine.weight_version == 1  # refused at the first bucket: untouched, still serving
    assert all(torch.equal(engine.model.state_dict()[k], v) for k, v in before.items())

    err = stream_to(engine, {**state, "model.extra.weight": torch.zeros(3)}, 2, bucket)
    assert isinstance(err, WeightSyncError) and not err.applied and err.tensor == "model.extra.weight"
    assert engine.weight_version == 1  # refused the plan, yet joined and drained: the sender was not blocked

    middle = len(plan.buckets) // 2
    err = stream_to(engine, {k: v + 1 for k, v in state.items()}, 3, bucket, at(middle))
    assert isinstance(err, WeightSyncError) and err.applied and err.tensor == plan.buckets[middle].tensors[0].name
    assert engine.weight_version == UNKNOWN_VERSION
    with pytest.raises(WeightSyncError, match="unknown state"):
        engine.generate([], None)  # type: ignore[arg-type]

    assert stream_to(engine, state, 4, bucket) is None  # a complete stream puts it back in service
    assert engine.weight_version == 4
    assert all(torch.equal(engine.model.state_dict()[k], v) for k, v in state.items())

    # The same through shared buffers (rollout.weight_sync=ipc; views of the sender's buffer, copied as they come)
    from vt_ray.common.weight_share import SHM_DIR, SHM_PREFIX

    segments = set(SHM_DIR.glob(f"{SHM_PREFIX}*"))
    other = {k: v * 2 for k, v in state.items()}
    assert stream_to(engine, other, 5, bucket, backend="ipc") is None
    assert engine.weight_version == 5 and all(torch.equal(engine.model.state_dict()[k], v) for k, v in other.items())
    err = stream_to(engine, state, 6, bucket, at(0), backend="ipc")
    assert isinstance(err, WeightSyncError) and not err.applied and err.tensor == plan.buckets[0].tensors[0].name
    assert engine.weight_version == 5 and all(torch.equal(engine.model.state_dict()[k], v) for k, v in other.items())
    err = stream_to(engine, state, 7, bucket, at(middle), backend="ipc")
    assert isinstance(err, WeightSyncError) and err.applied and err.tensor == plan.buckets[middle].tensors[0].name
    assert "checksum" in str(err) and engine.weight_version == UNKNOWN_VERSION
    assert stream_to(engine, state, 8, bucket, backend="ipc") is None
    assert engine.weight_version == 8 and all(torch.equal(engine.model.state_dict()[k], v) for k, v in state.items())
    assert set(SHM_DIR.glob(f"{SHM_PREFIX}*")) == segments  # every segment unlinked, after success and failure
