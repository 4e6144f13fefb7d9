"""The stream's wire between two plain processes (no Ray, no vLLM, no gather): a raw gloo broadcast against the
stream's ``BucketSender``/``BucketReceiver`` with the receiver's buffers fresh per bucket (the earlier receiver,
``BufferRing(0)``) and reused from a ring (the current one), alternately in one run.

What it isolates: a fresh 64 MB buffer per bucket costs its page faults (the kernel zeroes each page on first
touch) about as long as the bucket takes on the wire; ``benchmarks/weight_sync.py`` measures the same modes
(``wire`` / ``wire_old``) between the Ray actors, where the processes' allocators may keep freed memory.

Run: ``.venv/bin/python -m benchmarks.bucket_receive`` (about 30 s; ``--total-mb``, ``--bucket-mb``, ``--reps``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

MODES = ("raw", "wire_old", "wire")
"""``raw``: one reused buffer, a blocking broadcast per bucket, no checksum; ``wire_old``: the stream's sender and
receiver (checksums, receive-prefetch), a fresh receive buffer per bucket; ``wire``: the same, the process's
ring (kept across repetitions, as an engine keeps it across syncs). The sender is the same in both."""


def _plan(total: int, bucket: int) -> Any:
    from vt_ray.common.weight_stream import plan_buckets

    count = bucket // 4 // 4  # four float32 tensors per bucket
    return plan_buckets([(f"t{i}", (count,), "float32") for i in range(total // (count * 4))], bucket)


def _member(rank: int, port: int, args: argparse.Namespace, out: Any) -> None:
    import torch

    from vt_ray.common import weight_stream as ws

    torch.set_num_threads(1)
    total, bucket = int(args.total_mb * 2**20), int(args.bucket_mb * 2**20)
    plan = _plan(total, bucket)
    store = ws.host_store(port) if rank == 0 else None
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for rep in range(args.reps):
        for mode in MODES:
            group = ws.StreamGroup(ws.StreamSession("127.0.0.1", port, f"{mode}{rep}", 2, 120.0), rank, store)
            start = time.perf_counter()
            if mode == "raw":
                buf = torch.zeros(bucket, dtype=torch.uint8)
                for _ in plan.buckets:
                    group.broadcast(buf).wait()
            elif rank == 0:  # tensors are views of the send buffer itself: nothing to pack
                sender = ws.BucketSender(group, plan, "cpu")
                for index, b in enumerate(plan.buckets):
                    own = sender._buffers[index % 2]
                    sender.send(index, (own[s.offset: s.offset + s.nbytes].view(torch.float32) for s in b.tensors))
                sender.finish()
            else:
                ring = ws.BufferRing(0) if mode == "wire_old" else ws.process_ring()
                for _ in ws.BucketReceiver(group, plan, "cpu", ring).tensors():
                    pass
            times[mode].append(time.perf_counter() - start)
            del group
    out.put((rank, times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-mb", type=float, default=1024.0)
    parser.add_argument("--bucket-mb", type=float, default=64.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="outputs/bench/bucket_receive")
    args = parser.parse_args()

    import torch.multiprocessing as mp

    from vt_ray.learner.rendezvous import free_port

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(rank, port, args, queue)) for rank in (0, 1)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    nbytes = _plan(int(args.total_mb * 2**20), int(args.bucket_mb * 2**20)).total_bytes
    seconds = {m: [max(a, b) for a, b in zip(got[0][m], got[1][m], strict=True)] for m in MODES}
    gbps = {m: [nbytes / s / 1e9 for s in seconds[m]] for m in MODES}
    medians = {m: statistics.median(gbps[m]) for m in MODES}
    print(f"{'mode':>9} {'GB/s (median)':>13} {'of raw':>7}  per repetition")
    for m in MODES:
        print(f"{m:>9} {medians[m]:13.2f} {medians[m] / medians['raw']:7.0%}  "
              + " ".join(f"{x:.2f}" for x in gbps[m]))
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    report = {"bytes": nbytes, "bucket_mb": args.bucket_mb, "seconds": seconds, "gb_per_s": gbps,
              "median_gb_per_s": medians, "share_of_raw": {m: medians[m] / medians["raw"] for m in MODES}}
    (work / "bucket_receive.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {work / 'bucket_receive.json'}")


if __name__ == "__main__":
    main()
