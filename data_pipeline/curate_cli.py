"""``python -m vt_ray curate recipe=recipes/curate_tiny.yaml [key=value ...] [--make-fixtures DIR]``.

Runs the Hindsight-Curation pipeline on the Ray cluster in ``RAY_ADDRESS`` (else a local one) and writes
``sft.jsonl``, ``rl.jsonl``, ``dropped.jsonl``, ``stats.json`` and ``stats.md`` to ``curate.output_dir``.
Rerunning the same command resumes: finished requests come from the request cache.
``curate.scripted_server=true`` starts the scripted test server in-process and points every HTTP endpoint at
it: a self-contained CPU demo with no model.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="recipe=PATH and key=value overrides")
    parser.add_argument("--make-fixtures", metavar="DIR", default=None,
                        help="first write the tiny fixture records and videos to DIR (for recipes/curate_tiny.yaml)")
    parser.add_argument("--fixture-faults", action="store_true",
                        help="with --make-fixtures: add scripted-server fault markers (shows regenerations/drops)")


def run(args: argparse.Namespace) -> int:
    from vt_ray.config.loader import load_from_cli

    cfg = load_from_cli(args.overrides).curate
    if args.make_fixtures:
        from data_pipeline.fixtures import make_fixtures

        paths = make_fixtures(args.make_fixtures, faults=args.fixture_faults)
        print(f"fixtures: {', '.join(str(p) for p in paths.values())}")
    server = None
    if cfg.scripted_server:
        from data_pipeline.testing.scripted_server import ScriptedServer

        server = ScriptedServer(latency_s=cfg.scripted_latency_s).start()
        eps = cfg.endpoints
        cfg = replace(cfg, endpoints=replace(eps, **{
            s: replace(getattr(eps, s), base_url=server.url, cache_id=getattr(eps, s).cache_id or "scripted-server")
            for s in ("question", "caption", "trace", "verify")
            if getattr(eps, s).kind == "openai"}))
        print(f"scripted server on {server.url}")

    import ray

    from data_pipeline.pipeline import run_curation

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        local: dict[str, Any] = {} if address else {"num_cpus": os.cpu_count() or 2}
        ray.init(address=address or None, include_dashboard=False, log_to_driver=True, **local)
    try:
        stats = run_curation(cfg)
    finally:
        if server is not None:
            server.stop()
    print(json.dumps({k: stats[k] for k in ("records", "kept", "dropped", "regenerated", "cost")}, indent=2))
    print(f"wrote {cfg.output_dir}/sft.jsonl, rl.jsonl, dropped.jsonl, stats.json, stats.md")
    return 0
