"""``python -m vt_ray sft recipe=PATH [key=value ...]``: SFT on gold traces; writes the HF checkpoint GRPO uses.

Connects to the Ray cluster in ``RAY_ADDRESS`` (e.g. under ``ray job submit``), or starts a local one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict

from vt_ray.config.loader import load_from_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import ray

    from vt_ray.learner.sft import run_sft

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=True)
    start = time.perf_counter()
    try:
        result = run_sft(cfg)
    finally:
        if started_here:
            ray.shutdown()
    print(json.dumps({**asdict(result), "time_s": round(time.perf_counter() - start, 1)}, indent=2))
    return 0
