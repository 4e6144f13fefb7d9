"""Curation throughput: the Ray Data pipeline against the scripted server with a fixed per-request latency.

Each row has question, options, answer and captions, so it costs exactly two sequential requests (trace, then
verify) and the endpoint concurrency C bounds the requests in flight; the ideal rate is C / latency. Prints
requests/s measured at the server (first arrival to last reply: excludes Ray start-up and actor creation) and
end to end, against the ideal, and the ratio. A fresh cache per run, so every request is paid.
Run: ``.venv/bin/python -m benchmarks.curation_throughput [--latency 0.05 --concurrency 1 4 16 32]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _records(path: Path, n: int) -> None:
    rows = [{"uid": f"r{i:05d}", "source": "star", "video": "v.mp4", "duration": 20.0,
             "question": f"What happens first in clip {i}?", "options": ["a cat", "a dog", "a bird", "a fish"],
             "answer": "B", "answer_type": "multiple_choice",
             "segments": [{"start": 0.0, "end": 5.0, "caption": f"a dog runs in clip {i}"},
                          {"start": 6.0, "end": 9.0, "caption": "a cat sleeps"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_one(concurrency: int, latency: float, rows: int, workers: int) -> dict[str, float]:
    from data_pipeline.pipeline import run_curation
    from data_pipeline.testing.scripted_server import ScriptedServer
    from vt_ray.config.curate import CurateConfig, EndpointConfig, EndpointsConfig, SourceConfig

    tmp = Path(tempfile.mkdtemp(prefix="curate_bench_"))
    _records(tmp / "records.jsonl", rows)
    with ScriptedServer(latency_s=latency) as server:
        ep = EndpointConfig(base_url=server.url, model="scripted", max_concurrency=concurrency, timeout_s=30)
        cfg = CurateConfig(sources=[SourceConfig("records", str(tmp / "records.jsonl"))],
                           endpoints=EndpointsConfig(question=ep, caption=ep, trace=ep, verify=ep),
                           output_dir=str(tmp / "out"), workers=workers,
                           batch_size=max(1, concurrency // workers))  # a batch's rows run in parallel
        start = time.perf_counter()
        stats = run_curation(cfg)
        wall = time.perf_counter() - start
        steady = (server.last_reply or 0.0) - (server.first_arrival or 0.0)
        assert stats["kept"] == rows and server.statuses[200] == 2 * rows, stats
        return {"requests": server.requests, "steady_s": steady, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--seconds", type=float, default=4.0, help="ideal run length: sets rows per setting")
    parser.add_argument("--workers", type=int, default=1, help="Ray Data actors per stage")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"latency {args.latency * 1000:.0f} ms, 2 requests per row (trace, verify), workers {args.workers}")
    print(f"{'C':>4} {'rows':>6} {'ideal req/s':>12} {'steady req/s':>13} {'ratio':>6} {'e2e req/s':>10} "
          f"{'e2e ratio':>9}")
    for c in args.concurrency:
        ideal = c / args.latency
        rows = max(20, int(ideal * args.seconds / 2))
        r = run_one(c, args.latency, rows, min(args.workers, c))
        steady, e2e = r["requests"] / r["steady_s"], r["requests"] / r["wall_s"]
        print(f"{c:>4} {rows:>6} {ideal:>12.1f} {steady:>13.1f} {steady / ideal:>6.2f} {e2e:>10.1f} "
              f"{e2e / ideal:>9.2f}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
