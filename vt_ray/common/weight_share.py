"""The colocated weight sync (``rollout.weight_sync: ipc``): each bucket reaches the engines that share the
sender's device (GPU) or node (CPU) as a **shared handle** instead of over a collective, the path verl and
OpenRLHF use for colocated layouts (an engine on its learner's GPU cannot join an NCCL group with it).

The plan, the buckets, their layout and checksum trailer are those of :mod:`vt_ray.common.weight_stream`; only
the delivery differs. The sender packs a bucket into one of two shared buffers, announces its index, and reuses
that buffer only after every receiver acknowledged the bucket that used it (double buffering). What travels
between the processes is small: the two buffers' handles, once per sync, through the session's TCP store (under
the session's unique key prefix), and per bucket an 8-byte announcement and an 8-byte ack over a gloo group of
the session (``StreamSession.backend == "ipc"``). A gloo control group rather than store keys because a peer
that dies closes its sockets: the others fail at once instead of polling a key until ``timeout_s``.

One transport, two buffer kinds chosen by the sender's device:

* GPU: a CUDA buffer shared by CUDA IPC (``torch.multiprocessing.reductions.reduce_tensor``: a picklable
  handle that the engine rebuilds into a tensor on the same memory, zero copy). The handle carries the GPU's
  UUID, so an engine that numbers the device differently (its own ``CUDA_VISIBLE_DEVICES``) finds it.
* CPU: a file in ``/dev/shm`` mapped by both sides with ``torch.from_file(..., shared=True)``. Not
  ``multiprocessing.shared_memory``: on Python 3.11 every process that attaches a segment registers it with its
  own resource tracker, which unlinks it (or warns of a "leak") when that process exits, so an engine would
  destroy the learner's segment. The file is reserved with ``posix_fallocate``, which fails with ENOSPC up
  front when ``/dev/shm`` is too small (Docker's default is 64 MB) instead of a SIGBUS mid-copy. No segment
  outlives its sync: its name is unlinked as soon as every receiver has mapped it (the first ack; the mapping
  stays valid), and in ``finish``/``abort`` whatever happens; a sender that was killed before that leaves files
  named after its pid, which the next sender on the node removes (:func:`sweep_stale_segments`).

Receivers hand out views of the shared buffer (``private=False``: the consumer must be done with a tensor when
it asks for the next one, as the transformers engine's ``copy_`` is) or of a private copy of each bucket taken
before the ack (``private=True``: vLLM's layerwise reload keeps a layer's tensors until the layer is complete,
possibly buckets later, so a view of a reused buffer would be overwritten under it). The checksum is verified
on the memory the consumer reads.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vt_ray.common.weight_stream import (
    SEND_BUFFERS,
    TRAILER,
    BucketReceiver,
    BucketSender,
    BufferRing,
    HandedOut,
    StreamGroup,
    StreamPlan,
    WeightStreamError,
    bucket_tensor,
    keep_bytes,
    pack_bucket,
    process_ring,
    verify_bucket,
)

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "vt_ray_wsync_"
"""Shared-memory segments are ``/dev/shm/vt_ray_wsync_<sender pid>_<tag>_<slot>``."""
HANDLES_KEY = "ipc/handles"
"""Store key (under the session's prefix) of the pickled list of the sender's two buffer handles."""


# ---- handles: what a receiver needs to map the sender's buffer --------------------------------------------------
@dataclass(frozen=True)
class ShmHandle:
    path: str
    nbytes: int

    def open(self) -> torch.Tensor:
        """Map the segment. Opened without O_CREAT first (``from_file`` alone would create an empty file where
        the sender already unlinked it: a leak, and zeros); mapped through that descriptor, so the sender
        unlinking it meanwhile cannot race."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < self.nbytes:
                raise WeightStreamError(f"shared segment {self.path} holds {size} bytes, {self.nbytes} expected")
            return torch.from_file(f"/proc/self/fd/{fd}", shared=True, size=self.nbytes, dtype=torch.uint8)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class CudaHandle:
    """``reduce_tensor``'s (rebuild function, arguments) and the GPU's UUID."""

    device_uuid: str
    rebuild: Callable[..., torch.Tensor]
    args: tuple[Any, ...]

    def open(self) -> torch.Tensor:
        args = list(self.args)
        args[6] = local_cuda_index(self.device_uuid)  # rebuild_cuda_tensor's storage_device
        return self.rebuild(*args)


def local_cuda_index(device_uuid: str) -> int:
    """This process's index of the GPU with ``device_uuid``; a clear error where it is not visible."""
    for index in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(index).uuid) == device_uuid:
            return index
    raise WeightStreamError(f"the sender's GPU {device_uuid} is not visible in this process "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): "
                            "rollout.weight_sync=ipc needs each engine on its learner's GPU")


def device_key(device: Any) -> str:
    """What must match between a sender and its receivers: the GPU's UUID, or ``cpu`` (same node suffices)."""
    device = torch.device(device)
    if device.type == "cuda":
        return str(torch.cuda.get_device_properties(device).uuid)
    return "cpu"


# Every global a pickled list of handles names (CUDA: reduce_tensor's rebuild function and its argument types).
_HANDLE_GLOBALS = {
    ("vt_ray.common.weight_share", "ShmHandle"), ("vt_ray.common.weight_share", "CudaHandle"),
    ("torch.multiprocessing.reductions", "rebuild_cuda_tensor"), ("torch", "Tensor"), ("torch", "Size"),
    ("torch.storage", "TypedStorage"), ("torch.storage", "UntypedStorage"), ("torch", "UntypedStorage"),
}


class _HandleUnpickler(pickle.Unpickler):
    """Admits only the globals of a handle list (and torch dtypes): the store is a network port, and a plain
    ``pickle.loads`` of what it holds would run whatever code a writer put there."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _HANDLE_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                  torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"weight-sync handles may not name {module}.{name}")


def load_handles(data: bytes) -> list[Any]:
    """The sender's buffer handles from the session store (a restricted unpickler: see :class:`_HandleUnpickler`)."""
    import io

    return list(_HandleUnpickler(io.BytesIO(data)).load())


# ---- the two buffer kinds ------------------------------------------------------------------------------------
class ShmSegments:
    """``count`` buffers of ``nbytes`` in /dev/shm files, mapped shared."""

    def __init__(self, count: int, nbytes: int, root: Path = SHM_DIR) -> None:
        sweep_stale_segments(root)
        tag = f"{SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._paths: list[str] = []
        self.buffers: list[torch.Tensor] = []
        try:
            for slot in range(count):
                path = str(root / f"{tag}_{slot}")
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                self._paths.append(path)
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                except OSError as err:
                    raise OSError(err.errno, f"{root} has no room for {count} x {nbytes / 2**20:.0f} MiB weight "
                                  "buckets: lower rollout.weight_bucket_mb or enlarge it (docker --shm-size)"
                                  ) from err
                finally:
                    os.close(fd)
                self.buffers.append(torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8))
        except BaseException:
            self.release()
            raise
        self.handles: list[Any] = [ShmHandle(p, nbytes) for p in self._paths]

    def release(self) -> None:
        """Unlink the files: every process that mapped them keeps its mapping; the memory goes with the last."""
        for path in self._paths:
            with suppress(FileNotFoundError):
                os.unlink(path)
        self._paths = []


class CudaSegments:
    """``count`` CUDA buffers of ``nbytes`` and their IPC handles."""

    def __init__(self, count: int, nbytes: int, device: torch.device) -> None:
        from torch.multiprocessing.reductions import reduce_tensor

        self.buffers = [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(count)]
        key = device_key(device)
        self.handles: list[Any] = [CudaHandle(key, *reduce_tensor(b)) for b in self.buffers]  # type: ignore[no-untyped-call]

    def release(self) -> None:  # CUDA frees the memory once the sender and every receiver dropped it
        pass


def share_buffers(count: int, nbytes: int, device: Any) -> ShmSegments | CudaSegments:
    device = torch.device(device)
    return CudaSegments(count, nbytes, device) if device.type == "cuda" else ShmSegments(count, nbytes)


def sweep_stale_segments(root: Path = SHM_DIR) -> list[str]:
    """Unlink segments whose sender process no longer exists (it was killed mid-sync); returns their names."""
    removed = []
    for path in root.glob(f"{SHM_PREFIX}*"):
        pid = path.name.removeprefix(SHM_PREFIX).split("_", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _synchronize(buf: torch.Tensor) -> None:
    if buf.is_cuda:  # GPU copies are asynchronous: finish them before the peer reads or rewrites the buffer
        torch.cuda.current_stream(buf.device).synchronize()


# ---- sender and receiver -------------------------------------------------------------------------------------
class SharedBucketSender:
    """Rank 0's side (``BucketSender``'s interface): pack into one of two shared buffers, announce the bucket,
    reuse a buffer after every receiver acknowledged its previous bucket.

    Control order, the same on every member of the group: announce 0, announce 1, ack 0, announce 2, ack 1, ...,
    announce n-1, ack n-2, ack n-1 (a receiver posts the next announcement before it acknowledges a bucket)."""

    def __init__(self, group: StreamGroup, plan: StreamPlan, device: Any) -> None:
        self.group, self.plan = group, plan
        self._segments = share_buffers(2, plan.max_bucket_bytes + TRAILER, device)
        self._unacked: deque[int] = deque()  # announced buckets, oldest first
        self._announced: list[Any] = []
        try:
            group.store.set(HANDLES_KEY, pickle.dumps(self._segments.handles))
        except BaseException:
            self._segments.release()
            raise

    def send(self, index: int, tensors: Iterable[Any],
             corrupt: Callable[[int, Any], None] | None = None) -> None:
        """As :meth:`BucketSender.send`; returns once the bucket is announced (the receivers read it while
        the next one is packed)."""
        bucket = self.plan.buckets[index]
        self._settle(index - 2)  # this buffer's previous bucket has been read by every receiver
        buf = self._segments.buffers[index % 2][: bucket.nbytes + TRAILER]
        pack_bucket(buf, bucket, index, tensors)
        if corrupt is not None:  # tests: a fault after the checksum, as a bad copy would be
            corrupt(index, buf)
        _synchronize(buf)
        note = torch.tensor([index], dtype=torch.int64)
        self._announced = [note, self.group.broadcast(note)]  # the tensor lives until the send completes
        self._unacked.append(index)

    def _settle(self, upto: int) -> None:
        """Wait for the acks of every announced bucket up to ``upto``, oldest first."""
        while self._unacked and self._unacked[0] <= upto:
            index = self._unacked.popleft()
            self.group.all_reduce_min(torch.ones(1, dtype=torch.int64)).wait()
            if index == 0:  # every receiver has mapped both buffers (before consuming bucket 0): drop the names
                self._segments.release()

    def finish(self) -> None:
        try:
            self._settle(len(self.plan.buckets))
        finally:
            self._segments.release()

    def abort(self) -> None:
        """After a failure: unlink the segments and leave the group (receivers still waiting fail now)."""
        import gc

        self._segments.release()
        self._announced = []
        self.group.close()
        gc.collect()  # the process group's destructor is what closes the sockets


class SharedBucketReceiver:
    """An engine worker's side (``BucketReceiver``'s interface): the plan's tensors, in order, as views of the
    sender's shared buffer (``private=False``: valid until the next tensor is asked for) or of a private copy of
    each bucket (``private=True``: valid as long as the consumer keeps them; the copies come from ``ring``,
    :func:`~vt_ray.common.weight_stream.process_ring` unless given)."""

    def __init__(self, group: StreamGroup, plan: StreamPlan, private: bool, ring: BufferRing | None = None) -> None:
        self.group, self.plan, self.private = group, plan, private
        self.ring = ring if ring is not None else process_ring()
        self._keep_bytes = keep_bytes(plan)
        self.received = 0  # buckets announced and taken
        self.delivered = 0  # tensors handed to the consumer
        self.current: str | None = None  # the last tensor handed over
        self.handed = HandedOut()  # private copies the consumer may still hold (the ring moves them when short)
        self._notes: deque[tuple[torch.Tensor, Any]] = deque()  # posted announcements not yet taken
        self._posted = 0
        self._acks: list[tuple[torch.Tensor, Any]] = []
        self._buffers: list[torch.Tensor] | None = None

    def _post(self) -> None:
        note = torch.full((1,), -1, dtype=torch.int64)
        self._notes.append((note, self.group.broadcast(note)))
        self._posted += 1

    def _take(self, index: int) -> None:
        """Wait for bucket ``index``'s announcement, and post the next one's (before this bucket's ack)."""
        if self._posted == index:
            self._post()
        note, work = self._notes.popleft()
        work.wait()
        if int(note[0]) != index:
            raise WeightStreamError(f"the sender announced bucket {int(note[0])} where bucket {index} was due",
                                    index)
        self.received = index + 1
        if self._posted == index + 1 and index + 1 < len(self.plan.buckets):
            self._post()

    def _ack(self) -> None:
        """Acknowledge the oldest taken bucket: the sender may rewrite its buffer."""
        if self._buffers is not None:
            _synchronize(self._buffers[0])
        ones = torch.ones(1, dtype=torch.int64)
        self._acks.append((ones, self.group.all_reduce_min(ones)))

    def _shared(self, index: int) -> torch.Tensor:
        if self._buffers is None:
            handles = load_handles(self.group.store.get(HANDLES_KEY))
            self._buffers = [h.open() for h in handles]
        return self._buffers[index % 2][: self.plan.buckets[index].nbytes + TRAILER]

    def tensors(self) -> Iterator[tuple[str, Any]]:
        buckets = self.plan.buckets
        for index, bucket in enumerate(buckets):
            self._take(index)
            buf = self._shared(index)
            if self.private:
                buf = self.ring.acquire(buf.numel(), self._keep_bytes, buf.device, self.handed).copy_(buf)
                self._ack()  # copied out: the sender may reuse the buffer while this bucket is loaded
            verify_bucket(buf, bucket, index, len(buckets))
            self.handed.start_bucket(buf)
            for spec in bucket.tensors:
                self.current = spec.name
                self.delivered += 1
                yield spec.name, self.handed.add(bucket_tensor(buf, spec))
            if not self.private:
                self._ack()  # the consumer asked for more: it is done with this bucket's views
        self._close()

    def _close(self) -> None:
        for _, work in self._acks:
            work.wait()
        self._acks = []
        self._buffers = None  # unmap (the consumer holds no view of a shared buffer past its bucket)

    def drain(self) -> None:
        """After a failure on this side: acknowledge what was taken, then take and acknowledge every bucket
        left, so the sender and the other receivers are not left blocked."""
        while len(self._acks) < self.received:
            self._ack()
        while self.received < len(self.plan.buckets):
            self._take(self.received)
            self._ack()
        self._close()

    def abandon(self) -> None:
        """:meth:`drain`, unless the peers are gone too (nothing left to unblock)."""
        try:
            self.drain()
        except Exception:  # a closed connection or a timeout: the sender has already left
            self._buffers = None


# ---- the choice where senders and receivers are built ---------------------------------------------------------
def open_sender(group: StreamGroup, plan: StreamPlan, device: Any,
                buffers: int = SEND_BUFFERS) -> BucketSender | SharedBucketSender:
    """The session's sender: shared buffers for an ``ipc`` session (two, written by packing only: its ack order
    leaves no room to hand one out ahead), the collective's broadcast from ``buffers`` buffers otherwise."""
    if group.backend == "ipc":
        return SharedBucketSender(group, plan, device)
    return BucketSender(group, plan, device, buffers=buffers)


def open_receiver(group: StreamGroup, plan: StreamPlan, private: bool = True
                  ) -> BucketReceiver | SharedBucketReceiver:
    """The session's receiver. ``private=False``: the consumer copies each tensor before it asks for the next,
    so an ``ipc`` receiver may hand out views of the shared buffer itself."""
    if group.backend == "ipc":
        return SharedBucketReceiver(group, plan, private)
    return BucketReceiver(group, plan, group.device)
