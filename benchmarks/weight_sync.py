"""Weight sync, the old path against the new one, on the same Ray roles in one run (issue 17, item 4).

* ``blob`` (old, ``rollout.weight_sync: blob``): learner rank 0 gathers the whole policy, returns it to the driver
  as one safetensors ``bytes``, the rollout group ``ray.put``s it and every engine loads it.
* ``stream`` (new, the default): learner rank 0 broadcasts checksummed buckets to the engines over a gloo group
  of its own while every learner rank gathers one bucket at a time; the driver carries only the plan.
* ``transfer``: the same stream with the engine dropping each bucket on arrival (no vLLM load), which splits the
  stream's time into transfer (gather, pack, wire) and the engine's load.
* ``ipc`` (``rollout.weight_sync: ipc``): the same buckets handed to the engine as shared buffers by the learner
  rank on its node (CPU: /dev/shm) or GPU (CUDA IPC); only handles and acks travel. ``ipc_transfer``: the same
  with the engine only acknowledging each bucket (no copy out, no load).

Roles: ``--learners`` FSDP2 learner ranks and one vLLM-CPU engine, float32. Per model size and repetition,
both paths run alternately (old and new side by side, so machine noise hits both), each after resetting every
process's peak RSS (``/proc/self/clear_refs``). Printed and written to JSON: sync seconds and GB/s; the stream's
split into joining the group, gathering + packing on the sender, and the wait for the wire and the engine's
load to finish; the driver's, learner rank 0's and the engine's peak RSS above their resting RSS; the object
store's peak; and, as the physical limit, a plain gloo broadcast of the same bytes between the same two actors.

Run: ``.venv/bin/python -m benchmarks.weight_sync`` (defaults: sizes tiny, 0p3b and 0p5b, the last on the stream
alone since the blob path does not fit there; 3 repetitions, 64 MB buckets; about 10 minutes on 2 cores).
``--sizes tiny --reps 2`` is a quick check. On a GPU node ``--gpu --sizes /path/to/Qwen2.5-VL-7B-Instruct``
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


def _transfer_only(learner: Any, engine: Any, plan: dict[str, Any], backend: str) -> dict[str, float]:
    """One stream to the engine's vLLM worker in drain-only mode: gathering, packing and the wire (or, ``ipc``,
    the shared buffers and acks), no load. The engine is rollout rank 0, which rank 0's buffers reach."""
    import dataclasses
    import uuid

    from vt_ray.common.weight_stream import StreamSession

    addr, port = learner.stream_address()
    session = StreamSession(addr, port, f"transfer/{uuid.uuid4().hex[:8]}", 2, 600.0, backend)
    sending = learner.start_stream(plan, {0: session} if backend == "ipc" else session)
    fields = dataclasses.asdict(session)
    received = engine.__ray_call__.remote(
        lambda w: w.engine.llm.collective_rpc("receive_weight_stream", args=(fields, 1, plan, 0, True)))
    timings = learner.finish_stream(sending)
    __import__("ray").get(received)
    return timings


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
    try:
        params = learner.setup(total_steps=1)
        rollout.wait_ready()
        plan = learner.weight_plan(dtype, args.bucket_mb)
        rollout.attach_weight_source(learner, plan, "ipc" if args.colocate else collective)
        rollout.check_weight_plan()
        nbytes = StreamPlan.from_dict(plan).total_bytes
        engine, sender = rollout.actors[0], learner.actors[0]
        procs = {"learner0": sender, "engine": engine}
        runs: list[dict[str, Any]] = []
        # CPU: everything shares the node, so both streams run; GPU: NCCL on separate GPUs, or CUDA IPC colocated
        streams = (("ipc", "ipc_transfer") if args.colocate else ("stream", "transfer") if args.gpu
                   else ("stream", "transfer", "ipc", "ipc_transfer"))
        modes = streams if size in args.stream_only else ("blob", *streams)
        if "blob" in modes:
            rollout.update_weights(learner.export_safetensors(dtype), 1)  # warm-ups, untimed: first-call costs
        version = 1
        for backend in dict.fromkeys("ipc" if m.startswith("ipc") else collective for m in streams):
            rollout.attach_weight_source(learner, plan, backend)
            version += 1
            rollout.stream_weights(version)
        for rep in range(args.reps):
            for mode in modes:
                version += 1
                backend = "ipc" if mode.startswith("ipc") else collective
                if mode != "blob":  # which stream the group runs (outside the timing: two small Ray calls)
                    rollout.attach_weight_source(learner, plan, backend)
                rest = {name: ray.get(a.__ray_call__.remote(reset_peak)) for name, a in procs.items()}
                rest["driver"] = reset_peak()
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
                    elif mode in ("stream", "ipc"):
                        row.update(rollout.stream_weights(version))
                    else:  # the stream without vLLM's load: the engine receives every bucket and drops it
                        row.update(_transfer_only(learner, engine, plan, backend))
                        version -= 1
                    row["sync_s"] = time.perf_counter() - start
                peaks = {name: ray.get(a.__ray_call__.remote(read_peak)) for name, a in procs.items()}
                peaks["driver"] = read_peak()
                row.update({f"{name}_peak_gib": (peaks[name] - rest[name]) / 2**30 for name in peaks})
                row.update(object_store_peak_mib=plasma.peak_mib,
                           object_store_added_mib=plasma.peak_mib - plasma.start_mib,
                           gb_per_s=nbytes / row["sync_s"] / 1e9)
                if not mode.endswith("transfer") and set(rollout.weight_versions()) != {version}:
                    raise RuntimeError(f"{mode}: the engine does not serve version {version}")
                runs.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        # the same weights by both paths: the engine's probe log-probs must be identical, and match the learner's
        by_blob = None
        if "blob" in modes:
            rollout.update_weights(learner.export_safetensors(dtype), version + 1)
            by_blob = rollout.probe_logprobs(PROBE_TEXT)
        by_path = {}
        for offset, backend in enumerate(dict.fromkeys("ipc" if m.startswith("ipc") else collective
                                                       for m in streams)):
            rollout.attach_weight_source(learner, plan, backend)
            rollout.stream_weights(version + 2 + offset)
            by_path[backend] = rollout.probe_logprobs(PROBE_TEXT)
        by_stream = next(iter(by_path.values()))
        reference = learner.probe_logprobs(PROBE_TEXT)
        raw: list[float] = []
        raw_ipc: list[float] = []
        bucket = int(args.bucket_mb * 2**20)
        for rep in range(args.reps):  # the two transports' physical limits, alternately, between the same actors
            for backend, times, measure in ((collective, raw, _raw_broadcast), ("ipc", raw_ipc, _raw_ipc)):
                if backend == "nccl" and args.colocate:  # no NCCL between two processes of one GPU
                    continue
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
            "stream_equals_blob_probe": None if by_blob is None else by_stream == by_blob,
            "ipc_equals_stream_probe": by_path.get("ipc") == by_stream,
            "probe_engine_vs_learner_max_abs": max(abs(a - b) for a, b in zip(by_stream, reference, strict=True)),
            "raw_broadcast_s": raw, "raw_broadcast_gb_per_s": [nbytes / s / 1e9 for s in raw],
            "raw_ipc_s": raw_ipc, "raw_ipc_gb_per_s": [nbytes / s / 1e9 for s in raw_ipc],
        }
    finally:
        rollout.shutdown()
        learner.shutdown()


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians per mode, the speed-ups, the wire's share of the raw broadcast bandwidth, the loads' shares."""
    out: dict[str, Any] = {}
    for mode in MODES:
        rows = [r for r in result["runs"] if r["mode"] == mode]
        if not rows:
            continue
        keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
        out[mode] = {k: statistics.median(r[k] for r in rows) for k in keys}
    raw = statistics.median(result["raw_broadcast_gb_per_s"]) if result["raw_broadcast_gb_per_s"] else None
    out["speedup"] = out["blob"]["sync_s"] / out["stream"]["sync_s"] if "blob" in out and "stream" in out else None
    ipc = out["ipc"]["sync_s"] if "ipc" in out else None
    out["ipc_speedup_vs_blob"] = out["blob"]["sync_s"] / ipc if ipc and "blob" in out else None
    out["ipc_speedup_vs_stream"] = out["stream"]["sync_s"] / ipc if ipc and "stream" in out else None
    out["raw_broadcast_gb_per_s"] = raw
    out["raw_ipc_gb_per_s"] = statistics.median(result["raw_ipc_gb_per_s"]) if result["raw_ipc_gb_per_s"] else None
    # the stream's transfer without the engine's load (gather + pack + wire, drained on arrival) against a plain
    # broadcast of the same bytes: what the stream's own machinery costs over the physical limit
    if "transfer" in out and raw:
        out["transfer_gb_per_s"] = out["transfer"]["gb_per_s"]
        out["transfer_share_of_raw"] = out["transfer_gb_per_s"] / raw
        out["load_share_of_stream"] = 1 - out["transfer"]["sync_s"] / out["stream"]["sync_s"]
    if "ipc_transfer" in out:
        out["ipc_load_share"] = 1 - out["ipc_transfer"]["sync_s"] / out["ipc"]["sync_s"]
    return out


MODES = ("blob", "stream", "transfer", "ipc", "ipc_transfer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "0p3b", "0p5b"])
    parser.add_argument("--stream-only", nargs="*", default=["0p5b"],
                        help="sizes measured on the stream alone (the blob path does not fit in memory)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=64.0)
    parser.add_argument("--learners", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench/weight_sync")
    parser.add_argument("--gpu", action="store_true", help="learners and engine on GPUs, NCCL stream, bf16 (a GPU "
                        "node: tools/gpu_check_weight_sync.sh); sizes may then be model directories")
    parser.add_argument("--colocate", action="store_true", help="with --gpu: an engine on every learner rank's GPU "
                        "(resources.colocate), blob against CUDA IPC")
    args = parser.parse_args()
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
    report = {"results": results, "summary": {r["size"]: summarise(r) for r in results}}
    (work / "weight_sync.json").write_text(json.dumps(report, indent=1))
    print(f"\n{'size':>6} {'path':>12} {'sync s':>8} {'GB/s':>6} {'driver +GiB':>11} {'learner0 +GiB':>13} "
          f"{'engine +GiB':>11} {'store +MiB':>10}")
    for size, summary in report["summary"].items():
        for mode in MODES:
            if mode not in summary:
                continue
            m = summary[mode]
            print(f"{size:>6} {mode:>12} {m['sync_s']:8.3f} {m['gb_per_s']:6.2f} {m['driver_peak_gib']:11.3f} "
                  f"{m['learner0_peak_gib']:13.3f} {m['engine_peak_gib']:11.3f} {m['object_store_added_mib']:9.0f}")
        ratio = " ".join(f"{k} {summary[k]:.1f}x" for k in ("speedup", "ipc_speedup_vs_blob", "ipc_speedup_vs_stream")
                         if summary.get(k))
        load = f"; engine load {summary['ipc_load_share']:.0%} of the ipc sync" if "ipc_load_share" in summary else ""
        print(f"{size:>6} speed-ups: {ratio or '-'}{load}")
        limits = [f"{name} {summary[key]:.2f} GB/s" for name, key in (("broadcast", "raw_broadcast_gb_per_s"),
                                                                      ("ipc", "raw_ipc_gb_per_s")) if summary[key]]
        print(f"{size:>6} the same bytes through each transport alone: {', '.join(limits)}")
        if "transfer_gb_per_s" in summary:
            stream = summary["stream"]
            print(f"{size:>6} stream split: join {stream['join_s']:.3f} s, gather+pack {stream['pack_s']:.3f} s, "
                  f"then waiting for wire+load {stream['wire_wait_s']:.3f} s; engine load "
                  f"{summary['load_share_of_stream']:.0%} of the sync; transfer without load "
                  f"{summary['transfer_gb_per_s']:.2f} GB/s = {summary['transfer_share_of_raw']:.0%} of a raw "
                  f"broadcast ({summary['raw_broadcast_gb_per_s']:.2f} GB/s)")
    print(f"\nwrote {work / 'weight_sync.json'}")


if __name__ == "__main__":
    main()
