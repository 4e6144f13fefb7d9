"""The curation pipeline on Ray Data: sources -> completion -> trace + verification -> SFT/RL JSONL + stats.

Two ``map_batches`` stages, each an actor pool of ``curate.workers`` actors (``concurrency``), so the streaming
executor overlaps the stages and bounds what is in flight. Inside an actor a thread pool runs the batch's
rows concurrently; each endpoint's ``max_concurrency`` is split over the workers (a semaphore per actor), so
the endpoint never sees more than that many requests at once. Rows travel as one JSON string column: the
records are nested and ragged, which Arrow would otherwise have to infer a schema for.

Resume: every request goes through the request cache, so a rerun after a crash replays finished requests
from disk (free) and only issues the rest. Outputs are written atomically at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.cache import RequestCache
from data_pipeline.client import ChatClient
from data_pipeline.stats import build_stats, render_markdown
from data_pipeline.steps import Clients, complete, curate_trace, new_row
from vt_ray.common.progress import Progress, progress_enabled
from vt_ray.config.curate import STEPS, CurateConfig, SourceConfig
from vt_ray.data.schema import VideoSample, write_samples


def read_records(src: SourceConfig) -> Iterator[dict[str, Any]]:
    """A source's records as SourceRecord dicts. ``records`` is a JSONL of such dicts (tests, pre-converted
    data); every other name goes through the source adapters (data_pipeline.sources)."""
    count = 0
    if src.name == "records":
        path = Path(src.path)
        if not path.is_file():
            raise FileNotFoundError(f"records file not found: {path}")
        lines = (json.loads(line) for line in path.open() if line.strip())
    else:
        from data_pipeline.sources import read_source  # lazy: written separately, heavy readers stay unloaded

        reader_kw: dict[str, Any] = src.options  # the reader's own keyword arguments
        lines = (r.to_dict() for r in read_source(src.name, src.path, **reader_kw))
    for rec in lines:
        if src.limit and count >= src.limit:
            return
        rec.setdefault("source", src.name)
        count += 1
        yield rec


def make_clients(cfg: CurateConfig) -> Clients:
    cache = RequestCache(cfg.resolved_cache_dir())
    per_worker = {s: max(1, math.ceil(getattr(cfg.endpoints, s).max_concurrency / cfg.workers)) for s in STEPS}
    return Clients(**{s: ChatClient(s, getattr(cfg.endpoints, s), cache, per_worker[s]) for s in STEPS})


class _Stage:
    """A Ray Data actor: the clients live as long as the actor (connection pools, semaphores)."""

    steps: tuple[str, ...] = ()

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.clients = make_clients(cfg)
        threads = max(getattr(self.clients, s).concurrency for s in self.steps)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=type(self).__name__)

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _safe(self, state: str) -> str:
        row = json.loads(state)
        try:
            row = self.process(row)
        except Exception as err:  # a bug or a bad record costs one row, never the block (Ray Data would abort)
            row.update(status="dropped", reason=f"error:{type(err).__name__}: {str(err)[:200]}",
                       dropped_at=row.get("dropped_at") or "error")
        return json.dumps(row)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states = list(self.pool.map(self._safe, [str(s) for s in batch["state"]]))
        return {"uid": batch["uid"], "state": np.array(states, dtype=object)}


class CompleteStage(_Stage):
    steps = ("question", "caption")

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        return complete(row, self.clients, self.cfg)


class TraceStage(_Stage):
    steps = ("trace", "verify")

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        return curate_trace(row, self.clients, self.cfg) if row["status"] == "ok" else row


def _atomic_write_samples(path: Path, samples: list[VideoSample]) -> int:
    tmp = path.with_name(f".{path.name}.tmp")
    count = write_samples(tmp, samples)
    os.replace(tmp, path)
    return count


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_curation(cfg: CurateConfig, num_cpus_per_worker: float = 0.25) -> dict[str, Any]:
    """Run the pipeline on the current Ray cluster (``ray.init`` first); returns the stats written."""
    import ray

    start = time.perf_counter()
    rows = []
    for src in cfg.sources:
        for rec in read_records(src):
            row = new_row(rec, src.video_root)
            rows.append({"uid": row["uid"], "state": json.dumps(row)})
    if len({r["uid"] for r in rows}) != len(rows):
        raise ValueError("duplicate record uids across sources: the uid is the resume and dedup key")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: list[dict[str, Any]] = []
    if rows:
        blocks = max(1, min(len(rows), math.ceil(len(rows) / cfg.batch_size)))
        ds: ray.data.Dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        # Two batches run at once in each actor (threads): while one waits for its slowest row, the next
        # keeps the endpoint busy. The clients are thread-safe and the semaphores still cap the requests.
        compute = ray.data.ActorPoolStrategy(size=cfg.workers, max_concurrent_calls_per_actor=2,
                                             enable_true_multi_threading=True)
        for stage in (CompleteStage, TraceStage):
            ds = ds.map_batches(stage, fn_constructor_args=(cfg,), batch_size=cfg.batch_size, compute=compute,
                                num_cpus=num_cpus_per_worker, batch_format="numpy")
        if not progress_enabled():  # --quiet or no terminal: no Ray Data operator bars either
            ray.data.DataContext.get_current().enable_progress_bars = False
        with Progress("curate", len(rows), unit="record") as bar:
            n_kept = 0
            for r in ds.iter_rows():  # streams: stages overlap
                done.append(json.loads(str(r["state"])))
                n_kept += done[-1]["status"] == "ok"
                bar.advance(kept=n_kept)
    done.sort(key=lambda r: r["uid"])
    kept = [VideoSample(**r["output"]) for r in done if r["status"] == "ok"]
    _atomic_write_samples(out / "sft.jsonl", kept)
    _atomic_write_samples(out / "rl.jsonl", [replace(s, trace=None) for s in kept])
    dropped = [{k: r[k] for k in ("uid", "source", "dropped_at", "reason", "steps")} for r in done
               if r["status"] != "ok"]
    _atomic_write_text(out / "dropped.jsonl", "".join(json.dumps(d) + "\n" for d in dropped))
    stats = build_stats(done, cfg, time.perf_counter() - start)
    _atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    _atomic_write_text(out / "stats.md", render_markdown(stats))
    return stats
