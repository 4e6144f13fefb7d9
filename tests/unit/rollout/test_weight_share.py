"""The colocated weight sync's transport (vt_ray.common.weight_share), CPU side, without Ray.

Shared-memory handles (pickled, mapped by another holder, the same bytes), the control order both sides keep
(announce, ack, and a buffer rewritten only after its previous bucket's ack) against a recording group, then
real sender and receiver threads over a gloo control group: bit-exact delivery with and without private copies,
a corrupted bucket refused naming bucket and tensor, and /dev/shm left as it was after success and failure.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from stream_helpers import mixed_tensors, plan_of  # tests/ is on sys.path (rootdir conftest)
from vt_ray.common.weight_share import (
    HANDLES_KEY,
    SHM_DIR,
    SHM_PREFIX,
    CudaHandle,
    SharedBucketReceiver,
    SharedBucketSender,
    ShmHandle,
    ShmSegments,
    load_handles,
    open_receiver,
    open_sender,
    sweep_stale_segments,
)
from vt_ray.common.weight_stream import TRAILER, StreamGroup, StreamPlan, StreamSession, WeightStreamError
from vt_ray.learner.rendezvous import free_port


def _segments() -> set[str]:
    return {p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}*")}


def _tensors() -> dict[str, torch.Tensor]:
    return mixed_tensors(10)


def _plan(tensors: dict[str, torch.Tensor], bucket_bytes: int = 4096) -> StreamPlan:
    return plan_of(tensors, bucket_bytes)


def test_a_shm_handle_pickles_and_maps_the_same_memory_and_names_are_unlinked_on_release() -> None:
    before = _segments()
    segments = ShmSegments(2, 4096)
    assert len(_segments() - before) == 2
    handle = load_handles(pickle.dumps(segments.handles))[1]
    other = handle.open()  # what an engine process does
    segments.buffers[1][:8] = torch.arange(8, dtype=torch.uint8)
    assert other[:8].tolist() == list(range(8))  # one memory, zero copy
    segments.release()
    assert _segments() == before  # the names are gone ...
    with pytest.raises(FileNotFoundError):
        handle.open()  # a late receiver fails; it never recreates the file (from_file would)
    other[8] = 7
    assert int(segments.buffers[1][8]) == 7  # ... and both mappings still work


def test_segments_of_a_dead_sender_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / f"{SHM_PREFIX}4194999_abcd_0"  # above Linux's largest pid: never alive
    live = tmp_path / f"{SHM_PREFIX}{__import__('os').getpid()}_abcd_0"
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    assert sweep_stale_segments(tmp_path) == [dead.name]
    assert not dead.exists() and live.exists()


# ---- the control order, against a group that records every call ------------------------------------------------
class _Work:
    def wait(self) -> None:
        pass


class _RecordingGroup:
    """Completes every operation at once and logs it; as a receiver's group it announces buckets in order."""

    backend = "ipc"

    def __init__(self, log: list[str], store: dict[str, bytes]) -> None:
        self.log, self.announced = log, 0
        self.store = type("Store", (), {"set": lambda _, k, v: store.__setitem__(k, v),
                                        "get": lambda _, k: store[k]})()

    def broadcast(self, tensor: torch.Tensor) -> _Work:
        if int(tensor[0]) < 0:  # a receiver's posted announcement: filled as the sender would
            tensor[0] = self.announced
            self.announced += 1
        self.log.append(f"announce {int(tensor[0])}")
        return _Work()

    def all_reduce_min(self, tensor: torch.Tensor) -> _Work:
        self.log.append("ack")
        return _Work()

    def close(self) -> None:
        pass


def _expected_order(n: int) -> list[str]:
    """announce 0, announce 1, ack, announce 2, ack, ..., announce n-1, ack, ack (the k-th ack is bucket k's)."""
    out = ["announce 0"] + (["announce 1"] if n > 1 else [])
    for i in range(2, n):
        out += ["ack", f"announce {i}"]
    return out + ["ack"] * min(n, 2)


def test_sender_and_receiver_keep_one_control_order_and_a_buffer_is_rewritten_only_after_its_ack() -> None:
    tensors = _tensors()
    plan = _plan(tensors)
    n = len(plan.buckets)
    assert n > 4
    store: dict[str, bytes] = {}
    sent: list[str] = []
    sender = SharedBucketSender(_RecordingGroup(sent, store), plan, "cpu")  # type: ignore[arg-type]

    def packed(index: int, buf: torch.Tensor) -> None:
        sent.append(f"packed {index}")

    for index, bucket in enumerate(plan.buckets):
        sender.send(index, [tensors[t.name] for t in bucket.tensors], packed)
    sender.finish()
    control = [e for e in sent if not e.startswith("packed")]
    assert control == _expected_order(n)
    for index in range(2, n):  # bucket i goes into bucket i-2's buffer: after i-2's ack, i.e. the (i-1)-th ack
        acks_before = sent[: sent.index(f"packed {index}")].count("ack")
        assert acks_before == index - 1, (index, sent)

    assert not _segments() & {Path(h.path).name for h in pickle.loads(store[HANDLES_KEY])}  # unlinked

    zeros = ShmSegments(2, plan.max_bucket_bytes + TRAILER)  # all-zero buckets: their checksums hold
    store[HANDLES_KEY] = pickle.dumps(zeros.handles)
    try:
        for private in (False, True):  # the receiver, in both modes, follows the same order
            got: list[str] = []
            receiver = SharedBucketReceiver(_RecordingGroup(got, store), plan, private)  # type: ignore[arg-type]
            assert [name for name, _ in receiver.tensors()] == list(tensors)
            assert got == _expected_order(n), private
    finally:
        zeros.release()


# ---- real threads over a gloo control group --------------------------------------------------------------------
def _sync(tensors: dict[str, torch.Tensor], plan: StreamPlan, receivers: list[bool],
          consume: Callable[[Any, int], Any], corrupt: Callable[[int, torch.Tensor], None] | None = None,
          ) -> tuple[dict[int, Any], dict[int, BaseException]]:
    """Rank 0 sends ``tensors`` to one receiver thread per entry of ``receivers`` (its ``private`` flag)."""
    session = StreamSession("127.0.0.1", free_port(), "ipc-test", 1 + len(receivers), timeout_s=30, backend="ipc")
    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}

    def receive(rank: int) -> None:
        receiver = open_receiver(StreamGroup(session, rank), plan, private=receivers[rank - 1])
        try:
            results[rank] = consume(receiver, rank)
        except Exception as err:
            errors[rank] = err
            receiver.drain()

    threads = [threading.Thread(target=receive, args=(r,)) for r in range(1, 1 + len(receivers))]
    for t in threads:
        t.start()
    sender = open_sender(StreamGroup(session, 0), plan, "cpu")
    assert isinstance(sender, SharedBucketSender)
    for index, bucket in enumerate(plan.buckets):
        sender.send(index, [tensors[t.name] for t in bucket.tensors], corrupt)
    sender.finish()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a receiver is still blocked"
    return results, errors


def test_every_receiver_gets_every_tensor_bit_for_bit_and_shm_is_left_clean() -> None:
    before = _segments()
    tensors = _tensors()

    def copy_all(receiver: Any, rank: int) -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in receiver.tensors()}

    results, errors = _sync(tensors, _plan(tensors), [False, True], copy_all)
    assert not errors
    for rank in (1, 2):
        assert list(results[rank]) == list(tensors)
        for name, want in tensors.items():
            got = results[rank][name]
            assert got.dtype == want.dtype and torch.equal(got.view(-1).view(torch.uint8),
                                                           want.view(-1).view(torch.uint8)), name
    assert _segments() == before


def test_a_corrupted_bucket_is_refused_naming_bucket_and_tensor_and_shm_is_left_clean() -> None:
    before = _segments()
    tensors = _tensors()
    plan = _plan(tensors)
    bad = len(plan.buckets) // 2

    def flip(index: int, buf: torch.Tensor) -> None:
        if index == bad:
            buf[3] ^= 0x01

    seen: dict[int, list[str]] = {1: [], 2: []}

    def consume(receiver: Any, rank: int) -> None:
        for name, _ in receiver.tensors():
            seen[rank].append(name)

    _, errors = _sync(tensors, plan, [False, True], consume, corrupt=flip)
    first = plan.buckets[bad].tensors[0].name
    for rank in (1, 2):
        err = errors[rank]
        assert isinstance(err, WeightStreamError) and err.bucket == bad and err.tensor == first
        assert f"bucket {bad} of {len(plan.buckets)}" in str(err) and repr(first) in str(err)
        assert seen[rank] == [t.name for b in plan.buckets[:bad] for t in b.tensors]
    assert _segments() == before


def test_a_sender_failing_mid_sync_unlinks_its_segments_and_releases_the_receiver() -> None:
    before = _segments()
    tensors = _tensors()
    plan = _plan(tensors)

    def boom(index: int, buf: torch.Tensor) -> None:
        if index == 2:
            raise RuntimeError("gather failed")

    session = StreamSession("127.0.0.1", free_port(), "ipc-abort", 2, timeout_s=30, backend="ipc")
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            for _ in open_receiver(StreamGroup(session, 1), plan).tensors():
                pass
        except Exception as err:
            errors.append(err)

    thread = threading.Thread(target=receive)
    thread.start()
    sender = open_sender(StreamGroup(session, 0), plan, "cpu")
    with pytest.raises(RuntimeError, match="gather failed"):
        for index, bucket in enumerate(plan.buckets):
            sender.send(index, [tensors[t.name] for t in bucket.tensors], boom)
    sender.abort()
    thread.join(timeout=60)
    assert not thread.is_alive() and errors  # failed on the closed connection, not after timeout_s
    assert _segments() == before


def test_handles_load_through_an_allow_list_and_anything_else_is_refused() -> None:
    """The store the handles travel through is a network port: loading must not run a writer's code. A CUDA
    handle's globals (reduce_tensor's rebuild function and its argument types) are admitted, built here on CPU."""
    import os

    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    t = torch.empty(8, dtype=torch.uint8)
    args = (type(t), t.size(), t.stride(), 0, type(t._typed_storage()), t.dtype, 0, b"h" * 64, 8, 0, False, b"r",
            0, b"e", True)
    handles = [CudaHandle("GPU-0", rebuild_cuda_tensor, args), ShmHandle("/dev/shm/x", 8)]
    assert load_handles(pickle.dumps(handles)) == handles

    class Exploit:
        def __reduce__(self) -> Any:
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        load_handles(pickle.dumps([Exploit()]))
