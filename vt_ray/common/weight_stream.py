"""The wire protocol of the streamed weight sync: learner rank 0 broadcasts the policy to every rollout engine
worker in fixed-size buckets over a process group of its own, so no weight passes through the driver.

Both sides agree on a :class:`StreamPlan` before a byte moves: per bucket, each tensor's name, dtype, shape and
byte offset (64-byte aligned, so a receiver views a dtype straight out of the uint8 buffer). The driver carries
only this plan and a :class:`StreamSession` (where to meet); engines check the plan against their model before
the stream starts (the "nothing written before the names, shapes and dtypes are checked" guarantee of the old
blob path). Each bucket ends with an 8-byte trailer, the wrapping int64 sum of its payload: a receiver that
finds a different sum refuses the bucket (and every later one) and reports the bucket's first tensor.

The group is one ``torch.distributed`` process group built directly (a ``TCPStore`` hosted by the sender, a
``PrefixStore`` per session, ``ProcessGroupGloo`` on CPU and ``ProcessGroupNCCL`` on GPU: one code path). It
never touches the default process group, which the learner's FSDP group and vLLM's own worker group already
own in those processes (notes/weight-streaming-cpu.md, pitfall 1). A fresh session per sync keeps failures
local: a peer that died or a stream cut short cannot poison the next sync, and a restarted engine simply joins
the next one. Building it costs a few milliseconds on CPU (measured in ``benchmarks/weight_sync.py``).
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

ALIGN = 64
"""Byte alignment of every tensor in a bucket (any dtype can be viewed from the uint8 buffer at this offset)."""
TRAILER = 8
"""Bytes after each bucket's payload: the wrapping int64 sum of the payload."""


class WeightStreamError(RuntimeError):
    """A bucket that did not arrive intact (``bucket`` index, ``tensor`` its first tensor's name)."""

    def __init__(self, message: str, bucket: int | None = None, tensor: str | None = None) -> None:
        super().__init__(message)
        self.message, self.bucket, self.tensor = message, bucket, tensor

    def __reduce__(self) -> Any:
        return (type(self), (self.message, self.bucket, self.tensor))


@dataclass(frozen=True)
class TensorSlot:
    name: str
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "bfloat16"
    shape: tuple[int, ...]
    offset: int  # byte offset in the bucket's payload
    nbytes: int


@dataclass(frozen=True)
class Bucket:
    nbytes: int  # payload bytes (a multiple of ALIGN); the buffer on the wire is nbytes + TRAILER
    tensors: tuple[TensorSlot, ...]


@dataclass(frozen=True)
class StreamPlan:
    """The order and layout of every tensor on the wire. Plain data: it travels through Ray and vLLM's
    ``collective_rpc`` as :meth:`to_dict`."""

    buckets: tuple[Bucket, ...]
    bucket_bytes: int = 0  # the payload limit it was planned with (0: unknown); larger buckets hold one tensor

    @property
    def total_bytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    @property
    def max_bucket_bytes(self) -> int:
        return max((b.nbytes for b in self.buckets), default=0)

    def specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype name): what the engines check against their model before the stream."""
        return {t.name: (t.shape, t.dtype) for b in self.buckets for t in b.tensors}

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": [{"nbytes": b.nbytes, "tensors": [[t.name, t.dtype, list(t.shape), t.offset, t.nbytes]
                                                              for t in b.tensors]} for b in self.buckets],
                "bucket_bytes": self.bucket_bytes}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> StreamPlan:
        return StreamPlan(tuple(
            Bucket(int(b["nbytes"]), tuple(TensorSlot(str(n), str(d), tuple(int(x) for x in s), int(o), int(k))
                                           for n, d, s, o, k in b["tensors"]))
            for b in data["buckets"]), int(data.get("bucket_bytes", 0)))


_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_buckets(specs: Iterable[tuple[str, Sequence[int], str]], bucket_bytes: int) -> StreamPlan:
    """Pack tensors (name, shape, dtype name), in order, into buckets of at most ``bucket_bytes`` payload; a
    tensor larger than that gets a bucket of its own (never split: receivers view whole tensors)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[Bucket] = []
    slots: list[TensorSlot] = []
    used = 0
    for name, shape, dtype in specs:
        if dtype not in _ITEMSIZE:
            raise ValueError(f"tensor {name!r}: dtype {dtype!r} cannot be streamed")
        count = 1
        for d in shape:
            count *= int(d)
        nbytes = count * _ITEMSIZE[dtype]
        if slots and used + _aligned(nbytes) > bucket_bytes:
            buckets.append(Bucket(used, tuple(slots)))
            slots, used = [], 0
        slots.append(TensorSlot(name, dtype, tuple(int(d) for d in shape), used, nbytes))
        used += _aligned(nbytes)
    if slots:
        buckets.append(Bucket(used, tuple(slots)))
    return StreamPlan(tuple(buckets), bucket_bytes)


@dataclass(frozen=True)
class StreamSession:
    """Where one sync meets: the sender's store (``addr``:``port``), a key ``prefix`` unique to this sync,
    ``world_size`` (1 sender + every receiving engine worker), the ``timeout_s`` of every collective, and the
    ``backend`` ("gloo" on CPU, "nccl" on GPU; "ipc": buckets in shared buffers, a gloo group for the control
    messages, :mod:`vt_ray.common.weight_share`)."""

    addr: str
    port: int
    prefix: str
    world_size: int
    timeout_s: float
    backend: str = "gloo"


def host_store(port: int, timeout_s: float = 300.0) -> Any:
    """A store server on ``port`` for every stream session of this sender (sessions differ by key prefix)."""
    return dist.TCPStore("0.0.0.0", port, None, is_master=True, timeout=timedelta(seconds=timeout_s),
                         wait_for_workers=False)


class StreamGroup:
    """This process's member of one session's process group (rank 0, the sender, hosts the store). The store
    is held here because it must outlive the group: the sender's store serves every peer's keys."""

    def __init__(self, session: StreamSession, rank: int, store: Any = None) -> None:
        """Blocks until every member has joined, or ``timeout_s``. ``store``: the sender's own long-lived store
        server (:func:`host_store`), already listening when the receivers dial it; without one, rank 0 starts a
        server for this session (a receiver dialling first then waits out the client's retry back-off)."""
        timeout = timedelta(seconds=session.timeout_s)
        self.rank, self.backend = rank, session.backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if session.backend == "nccl" else "cpu"
        self._store: Any = store if store is not None else dist.TCPStore(
            session.addr, session.port, None, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        prefixed = dist.PrefixStore(session.prefix, self._store)
        self.store: Any = prefixed  # this session's keys (the ipc transport's buffer handles)
        if session.backend == "nccl":
            self._group: Any = dist.ProcessGroupNCCL(prefixed, rank, session.world_size,
                                                     dist.ProcessGroupNCCL.Options())
        elif session.backend in ("gloo", "ipc"):
            self._group = dist.ProcessGroupGloo(prefixed, rank, session.world_size, timeout)
        else:
            raise ValueError(f"unknown stream backend {session.backend!r} (gloo, nccl or ipc)")
        self.broadcast(torch.zeros(1, device=self.device)).wait()  # all in: no bucket races a late joiner

    def close(self) -> None:
        """Leave the group now: its sockets close, so peers blocked on this member fail at once instead of
        waiting out ``timeout_s`` (the sender does this when a receiver died mid-stream)."""
        self._group = None
        self._store = None
        self.store = None

    def broadcast(self, tensor: torch.Tensor) -> Any:
        """Async broadcast from rank 0 on this group itself (``dist.broadcast(group=...)`` maps global ranks,
        and these processes' default groups are other groups); returns the ``Work``."""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self._group.broadcast([tensor], opts)

    def all_reduce_min(self, tensor: torch.Tensor) -> Any:
        """Async in-place minimum over the group (the ipc transport's acks); returns the ``Work``."""
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MIN  # type: ignore[assignment]  # the stubs name the enum type only
        return self._group.allreduce([tensor], opts)


def _checksum(payload: Any) -> Any:
    """Wrapping int64 sum of a payload whose length is a multiple of 8: ~30 GB/s on one CPU core, and
    integer addition is order-free, so every reduction order gives the same value."""
    return payload.view(torch.int64).sum()


def _in_place(tensor: Any, slot: Any) -> bool:
    """``tensor`` already is ``slot`` (same memory, dtype, shape and strides): a gatherer wrote it there."""
    return bool(tensor.data_ptr() == slot.data_ptr() and tensor.dtype == slot.dtype
                and tensor.device == slot.device and tensor.stride() == slot.stride())


def pack_bucket(buf: Any, bucket: Bucket, index: int, tensors: Iterable[Any]) -> None:
    """Copy bucket ``index``'s ``tensors`` (the plan's order and shapes, any device and float width: each is cast
    into the plan's dtype) into ``buf`` and append the checksum; a tensor is released once copied, and one that
    already sits in its place in ``buf`` (the shard gather received it there) is not copied. A tensor the plan
    does not describe fails naming bucket and tensor."""
    for spec, tensor in zip(bucket.tensors, tensors, strict=True):
        target = getattr(torch, spec.dtype)
        if tuple(tensor.shape) != spec.shape or tensor.is_floating_point() != target.is_floating_point:
            raise WeightStreamError(f"tensor {spec.name!r} is {tensor.dtype} {list(tensor.shape)}, the plan "
                                    f"says {spec.dtype} {list(spec.shape)}", index, spec.name)
        slot = buf[spec.offset: spec.offset + spec.nbytes].view(target).view(spec.shape)
        if not _in_place(tensor, slot):
            slot.copy_(tensor)
        del tensor
    buf[bucket.nbytes:].view(torch.int64)[0] = _checksum(buf[: bucket.nbytes])


def verify_bucket(buf: Any, bucket: Bucket, index: int, count: int) -> None:
    """Refuse bucket ``index`` of ``count`` unless its checksum trailer matches its bytes (naming the bucket and
    its first tensor): the receivers' check, on the memory the consumer reads."""
    if not bool(_checksum(buf[: bucket.nbytes]) == buf[bucket.nbytes:].view(torch.int64)[0]):
        first = bucket.tensors[0].name
        raise WeightStreamError(f"bucket {index} of {count} (first tensor {first!r}) failed its checksum: the "
                                "stream is refused from there on", index, first)


SEND_BUFFERS = 2
"""Send buffers a sender packs into in turn: one being packed while the other is on the wire."""
SEND_BUFFERS_AHEAD = 3
"""Send buffers when a gatherer writes the next bucket straight into its send buffer (:meth:`BucketSender.buffer`)
while this one is packed: that one, this one, and the one before still on the wire."""


class BucketSender:
    """Rank 0's side: pack tensors into one of ``buffers`` reused buffers while the others are on the wire. The
    buffers come from ``ring`` (the process's ``send`` ring unless given), so the next sync finds them faulted
    in; a bucket larger than they are (one oversized tensor) gets a buffer of its own. A gatherer may ask for a
    bucket's buffer ahead (:meth:`buffer`) and write tensors straight into their places: those are not copied
    again."""

    def __init__(self, group: StreamGroup, plan: StreamPlan, device: Any, ring: BufferRing | None = None,
                 buffers: int = SEND_BUFFERS) -> None:
        self.group, self.plan, self.device = group, plan, device
        ring = ring if ring is not None else process_ring("send")
        self._keep = keep_bytes(plan)
        self._buffers = [ring.acquire(self._keep, self._keep, device) for _ in range(buffers)]
        self._work: list[Any] = [None] * buffers
        self._ready: dict[int, torch.Tensor] = {}  # buffers handed out by buffer(), their bucket not yet sent
        self._failed: Exception | None = None  # a send that failed (a receiver gone): raised by the next send

    def buffer(self, index: int) -> torch.Tensor:
        """The buffer (payload and trailer, uint8) bucket ``index`` will be sent from, free to be written: its
        previous bucket has left. The same one until :meth:`send` sends it. Never raises for the wire: a gatherer
        asks for it ahead, from code that must go on gathering with its peers; the failure of that previous send
        is raised by the next :meth:`send` (the sync is lost anyway, so what is written then does not matter)."""
        if index not in self._ready:
            slot = index % len(self._buffers)
            if self._work[slot] is not None:
                try:
                    self._work[slot].wait()  # that buffer's previous bucket has left
                except Exception as err:
                    self._failed = self._failed or err
                self._work[slot] = None
            need = self.plan.buckets[index].nbytes + TRAILER
            self._ready[index] = (self._buffers[slot][:need] if need <= self._keep
                                  else torch.empty(need, dtype=torch.uint8, device=self.device))
        return self._ready[index]

    def send(self, index: int, tensors: Iterable[Any],
             corrupt: Callable[[int, Any], None] | None = None) -> None:
        """Send bucket ``index`` holding ``tensors`` (in the plan's order and shapes, any device and float
        width: each is cast into the plan's dtype as it is copied into the buffer, unless it already is its
        place there). ``tensors`` may be a generator: each tensor is released once copied, so the sender holds
        its buffers and one tensor."""
        bucket = self.plan.buckets[index]
        buf = self.buffer(index)
        del self._ready[index]
        if self._failed is not None:
            raise self._failed
        pack_bucket(buf, bucket, index, tensors)
        if corrupt is not None:  # tests: a fault after the checksum, as a bad wire or a bad copy would be
            corrupt(index, buf)
        self._work[index % len(self._buffers)] = self.group.broadcast(buf)

    def finish(self) -> None:
        if self._failed is not None:
            raise self._failed
        for work in self._work:
            if work is not None:
                work.wait()

    def abort(self) -> None:
        """After a failure: drop the pending sends and leave the group, so every receiver still waiting for a
        bucket fails now ("connection closed") rather than after the session's timeout."""
        import gc

        self._work = [None] * len(self._buffers)
        self._ready = {}
        self.group.close()
        gc.collect()  # the process group's destructor is what closes the sockets


RING_BUFFERS = 3
"""Receive buffers an engine process keeps: the bucket in flight, the one being loaded, and the one before it,
which a loader may still view (a layer split across two buckets, or the loop variable holding the last tensor)."""


def _storage_users(tensor: torch.Tensor) -> int:
    """How many tensors (and storage objects) share ``tensor``'s memory, views of any shape or dtype included."""
    return int(torch._C._storage_Use_Count(tensor.untyped_storage()._cdata))


def bucket_tensor(buf: torch.Tensor, spec: TensorSlot) -> torch.Tensor:
    """Tensor ``spec`` of a received bucket ``buf``, on ``buf``'s memory (zero copy). Built on the storage rather
    than as an autograd view of ``buf``: a view keeps a reference to its base's memory for as long as it lives,
    even after :class:`HandedOut` moved it onto memory of its own."""
    dtype = getattr(torch, spec.dtype)
    start = buf.storage_offset() * buf.element_size() + spec.offset  # bytes; 64-byte aligned, so a whole element
    strides: list[int] = []
    step = 1
    for size in reversed(spec.shape):  # contiguous
        strides.insert(0, step)
        step *= size
    return torch.empty(0, dtype=dtype, device=buf.device).set_(buf.untyped_storage(), start // dtype.itemsize,
                                                               spec.shape, strides)


class HandedOut:
    """The tensors a receiver handed to its consumer, bucket by bucket (weak references: nothing is kept alive).

    A consumer may keep tensors past their bucket: vLLM's layerwise reload holds a layer's tensors until the
    whole layer has arrived (a layer split across two buckets), and its loader's nested iterators hold the last
    tensor of a finished module for a while. Each such tensor keeps its whole bucket buffer out of the ring.
    :meth:`release_oldest`, called by :meth:`BufferRing.acquire` before it would allocate, moves the tensors still
    alive of the oldest bucket onto memory of their own (``set_`` onto a copy: the consumer's tensor objects keep
    their values, shapes and dtypes), so their buffer can be reused: a copy of those few tensors instead of a
    fresh bucket-sized buffer."""

    def __init__(self) -> None:
        self._buckets: deque[tuple[int, list[weakref.ref[torch.Tensor]]]] = deque()  # (buffer address, tensors)

    def start_bucket(self, buf: torch.Tensor) -> None:
        """The tensors added next are views of ``buf``'s memory."""
        self._buckets.append((buf.untyped_storage().data_ptr(), []))

    def add(self, tensor: torch.Tensor) -> torch.Tensor:
        """Record ``tensor`` (of the bucket last started) as handed over; returns it."""
        self._buckets[-1][1].append(weakref.ref(tensor))
        return tensor

    def release_oldest(self, buffers: set[int]) -> int | None:
        """Move the still-alive tensors of the oldest recorded bucket held in one of ``buffers`` (addresses) off
        it, and forget that bucket and older ones (a bucket in another buffer, one not kept, is never copied:
        that would free nothing); returns the bytes copied, or None when no such bucket is left."""
        while self._buckets:
            address, refs = self._buckets.popleft()
            if address not in buffers:
                continue
            moved = 0
            with torch.no_grad():
                for ref in refs:
                    tensor = ref()
                    if tensor is not None:
                        copy = tensor.clone()
                        tensor.set_(copy.untyped_storage(), copy.storage_offset(), copy.shape, copy.stride())
                        moved += copy.numel() * copy.element_size()
            return moved
        return None


class BufferRing:
    """Bucket buffers reused across buckets and syncs: a fresh 64 MB buffer costs its page faults (the kernel
    zeroes every page on first touch) on every bucket, about as long as the bucket takes on the wire.

    A buffer is handed out again only when nothing but the ring refers to its memory, checked on the storage's
    use count: a tensor that a loader keeps (vLLM's layerwise reload holds a layer's tensors until the layer is
    complete) keeps its buffer out of use, whatever the loader does with it. If every kept buffer is still in
    use, the receiver's :class:`HandedOut` (``handed``) first moves the tensors its consumer still holds of the
    oldest buckets onto memory of their own (``relocate``, the default); only if that frees no buffer is a fresh
    one made (and the least recently used one let go, to be freed with its last view).
    Buckets larger than ``keep_bytes`` (a tensor bigger than a bucket) get a buffer of their own, never kept.
    Thread-safe: the receivers of one process may share it."""

    def __init__(self, capacity: int = RING_BUFFERS, relocate: bool = True) -> None:
        self.capacity, self.relocate = capacity, relocate
        self._kept: list[tuple[torch.Tensor, int]] = []  # (buffer, its use count when only the ring holds it)
        self._lock = threading.Lock()
        self.reused = 0  # buffers handed out again
        self.fresh = 0  # buffers allocated
        self.relocated_bytes = 0  # bytes of held tensors moved off a kept buffer so that it could be reused

    def _free(self, nbytes: int, device: Any) -> torch.Tensor | None:
        for i, (buf, alone) in enumerate(self._kept):
            if buf.device == torch.device(device) and buf.numel() >= nbytes and _storage_users(buf) == alone:
                self._kept.append(self._kept.pop(i))  # most recently used last
                self.reused += 1
                return buf[:nbytes]
        return None

    def acquire(self, nbytes: int, keep_bytes: int, device: Any, handed: HandedOut | None = None) -> torch.Tensor:
        """A uint8 buffer of ``nbytes`` (a view of a kept one when one is free and large enough); kept buffers
        are allocated ``keep_bytes`` long, so that each fits every bucket of the plan but the oversized ones.
        ``handed``: what the caller's consumer may still hold, released oldest bucket first before a fresh
        buffer is made."""
        with self._lock:
            found = self._free(nbytes, device)
            if nbytes <= keep_bytes and self.relocate and handed is not None:
                kept = {buf.untyped_storage().data_ptr() for buf, _ in self._kept}
                while found is None and len(self._kept) >= self.capacity:
                    moved = handed.release_oldest(kept)
                    if moved is None:
                        break
                    self.relocated_bytes += moved
                    found = self._free(nbytes, device)
            if found is not None:
                return found
            self.fresh += 1
            if nbytes > keep_bytes or self.capacity == 0:
                return torch.empty(nbytes, dtype=torch.uint8, device=device)
            buf = torch.empty(keep_bytes, dtype=torch.uint8, device=device)
            if len(self._kept) >= self.capacity:
                self._kept.pop(0)
            self._kept.append((buf, _storage_users(buf)))
            return buf[:nbytes]

    def clear(self) -> None:
        """Let every kept buffer go (freed once its last view is)."""
        with self._lock:
            self._kept = []


_PROCESS_RINGS = {"receive": BufferRing(), "send": BufferRing(SEND_BUFFERS_AHEAD), "staging": BufferRing(2)}


def keep_bytes(plan: StreamPlan) -> int:
    """The size of a kept bucket buffer for ``plan``: its largest bucket within the planned bucket size, trailer
    included (a bucket holding one tensor larger than that gets a buffer of its own, not kept)."""
    fits = [b.nbytes for b in plan.buckets if not plan.bucket_bytes or b.nbytes <= plan.bucket_bytes]
    return max(fits, default=plan.max_bucket_bytes) + TRAILER


def process_ring(role: str = "receive") -> BufferRing:
    """This process's bucket buffers for ``role``, kept between syncs: ``receive`` (an engine worker's, three),
    ``send`` (a sender's two, three when the shard gather writes into them) and ``staging`` (learner rank 0's
    two shard-gather buffers, used when the gather cannot write into the send buffers). What they hold between
    syncs is what a fresh allocation would fault in again at the next one."""
    return _PROCESS_RINGS[role]


class BucketReceiver:
    """An engine worker's side: the plan's tensors, in order, as views into the received buckets.

    One bucket is always in flight ahead of the one being consumed (receive-prefetch). Buffers come from
    ``ring`` (:func:`process_ring` unless given; ``BufferRing(0)``: a fresh buffer per bucket, the earlier
    receiver), which hands a buffer out again only once no view of it is left: a loader may keep views of a
    layer that straddles two buckets until the rest of it arrives (vLLM's layerwise reload does); when no kept
    buffer is free, the tensors the consumer still holds of the oldest buckets are moved off theirs first
    (:class:`HandedOut`). After a
    failure (a checksum, or the consumer stopping early), :meth:`drain` (or :meth:`abandon`) receives the
    buckets left so the sender and the other receivers are not left blocked.
    """

    def __init__(self, group: StreamGroup, plan: StreamPlan, device: Any,
                 ring: BufferRing | None = None) -> None:
        self.group, self.plan, self.device = group, plan, device
        self.ring = ring if ring is not None else process_ring()
        self._keep_bytes = keep_bytes(plan)
        self.received = 0  # buckets taken off the wire
        self.delivered = 0  # tensors handed to the consumer
        self.current: str | None = None  # the last tensor handed over
        self.handed = HandedOut()  # what the consumer may still hold, moved off a buffer the ring needs back
        self._inflight: tuple[Any, Any] | None = None

    def _post(self, index: int) -> None:
        nbytes = self.plan.buckets[index].nbytes + TRAILER
        buf = self.ring.acquire(nbytes, self._keep_bytes, self.device, self.handed)
        self._inflight = (buf, self.group.broadcast(buf))

    def _take(self, index: int) -> Any:
        assert self._inflight is not None
        buf, work = self._inflight
        self._inflight = None
        work.wait()
        self.received = index + 1
        return buf

    def tensors(self) -> Iterator[tuple[str, Any]]:
        buckets = self.plan.buckets
        if not buckets:
            return
        self._post(0)
        for index, bucket in enumerate(buckets):
            buf = self._take(index)
            if index + 1 < len(buckets):
                self._post(index + 1)
            verify_bucket(buf, bucket, index, len(buckets))
            self.handed.start_bucket(buf)
            for spec in bucket.tensors:
                self.current = spec.name
                self.delivered += 1
                yield spec.name, self.handed.add(bucket_tensor(buf, spec))

    def abandon(self) -> None:
        """After a failure on this side: :meth:`drain`, unless the peers are gone too (nothing left to unblock)."""
        try:
            self.drain()
        except Exception:  # a closed connection or a timeout: the sender has already left
            pass

    def drain(self) -> None:
        """Receive and drop every bucket not yet taken off the wire (after a failure on this side)."""
        total = len(self.plan.buckets)
        if self._inflight is not None:
            self._take(self.received)
        while self.received < total:
            self._post(self.received)
            self._take(self.received)
